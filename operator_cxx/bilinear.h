// Bilinear sampling at (x + dx, y + dy) exactly as MXNet's GridGenerator('warp') + BilinearSampler
// compute it: the sample position goes through the same [-1, 1] normalisation round trip (so the
// floor/ceil decisions match theirs), corners outside the map count as 0. Shared by flow_warp and
// flow_aggregate so both sample identically.
#ifndef DETOPS_BILINEAR_H_
#define DETOPS_BILINEAR_H_

#include <cmath>

namespace detops {

template <typename T>
struct Corner4 {
  int off[4];  // offsets inside the plane: top-left, top-right, bottom-left, bottom-right
  T w[4];      // bilinear weights, 0 for corners outside the map
  T m[4];      // 1 for corners inside the map, else 0 (value taken as 0)
  T wx, wy;    // MXNet's top_left_x_w / top_left_y_w (1 - fractional part)
};

// Sample coordinate of output position `pos` along an axis of `size` pixels. For a map of size 1
// (where MXNet's normalisation divides by zero) the position is pos + flow itself.
template <typename T>
inline T sample_coord(T flow, int pos, int size, T half) {
  if (size <= 1) return flow + static_cast<T>(pos);
  T grid = (flow + static_cast<T>(pos)) / half - static_cast<T>(1);
  return (grid + 1) * (size - 1) / 2;
}

// (size - 1) / 2 rounded as MXNet rounds it in type T.
template <typename T>
inline T half_extent(int size) {
  return static_cast<T>((static_cast<double>(static_cast<T>(size)) - 1.0) / 2.0);
}

// Corners and weights of output pixel (x, y) of a W x H map displaced by (dx, dy).
template <typename T>
inline void make_corner(T dx, T dy, int x, int y, int W, int H, T half_w, T half_h, Corner4<T>* c) {
  const T x_real = sample_coord<T>(dx, x, W, half_w);
  const T y_real = sample_coord<T>(dy, y, H, half_h);
  // Far outside (or NaN): every corner invalid. Guards the int conversion below.
  if (!(x_real > static_cast<T>(-2) && x_real < static_cast<T>(W + 1) &&
        y_real > static_cast<T>(-2) && y_real < static_cast<T>(H + 1))) {
    for (int k = 0; k < 4; ++k) {
      c->off[k] = 0;
      c->w[k] = 0;
      c->m[k] = 0;
    }
    c->wx = c->wy = 0;
    return;
  }
  const int x0 = static_cast<int>(std::floor(x_real));
  const int y0 = static_cast<int>(std::floor(y_real));
  const T wx = static_cast<T>(1.0 - (x_real - x0));
  const T wy = static_cast<T>(1.0 - (y_real - y0));
  c->wx = wx;
  c->wy = wy;
  const int xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const T weights[4] = {wy * wx, wy * (1 - wx), (1 - wy) * wx, (1 - wy) * (1 - wx)};
  for (int k = 0; k < 4; ++k) {
    const bool inside = xs[k] >= 0 && xs[k] <= W - 1 && ys[k] >= 0 && ys[k] <= H - 1;
    c->off[k] = inside ? ys[k] * W + xs[k] : 0;
    c->w[k] = inside ? weights[k] : static_cast<T>(0);
    c->m[k] = inside ? static_cast<T>(1) : static_cast<T>(0);
  }
}

template <typename T>
inline T sample(const T* plane, const Corner4<T>& c) {
  return plane[c.off[0]] * c.w[0] + plane[c.off[1]] * c.w[1] + plane[c.off[2]] * c.w[2] +
         plane[c.off[3]] * c.w[3];
}

}  // namespace detops

#endif  // DETOPS_BILINEAR_H_
