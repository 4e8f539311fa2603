// detops_flow_warp(data, flow): bilinear warp of a feature map by an optical flow.
//
// Equal to BilinearSampler(data, GridGenerator(flow, transform_type='warp')): output pixel (x, y)
// samples data at (x + flow[0, y, x], y + flow[1, y, x]) bilinearly, zeros outside the map.
// The sample position is computed through the same [-1, 1] normalisation round trip as MXNet's
// pair of operators (so the floor/ceil decisions match theirs exactly); gradients go to data and
// flow. For a map of width or height 1 (where MXNet's normalisation divides by zero) the sample
// position is x + dx itself.
//
// Kernels: a per-pixel table (corner offsets, weights, validity) is computed once per call and
// shared by all channels; OpenMP runs over (image, block of 8 channels), each table entry serving
// the whole block. The data gradient of a plane is written only by the thread that owns it (no
// atomics); the flow gradient is a sum over channels, reduced through per-thread partial buffers
// added in a fixed order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "bilinear.h"
#include "detops_common.h"

namespace detops {
namespace {

const char* kOp = "flow_warp";

template <typename T>
void build_table(const T* flow, int N, int H, int W, std::vector<Corner4<T>>* table) {
  const int HW = H * W;
  table->resize(static_cast<size_t>(N) * HW);
  const T half_w = half_extent<T>(W);
  const T half_h = half_extent<T>(H);
  Corner4<T>* out = table->data();
  const int total = N * HW;
  // A few flops per pixel: threads only pay off on big maps (each parallel region is a barrier,
  // costly when the machine is busy).
  const int threads = worth_threads(total / 4.0);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int idx = 0; idx < total; ++idx) {
    const int n = idx / HW, p = idx % HW, y = p / W, x = p % W;
    const T* fl = flow + static_cast<size_t>(n) * 2 * HW;
    make_corner<T>(fl[p], fl[HW + p], x, y, W, H, half_w, half_h, &out[idx]);
  }
}

// Channels processed together: each table entry is read once per block instead of per channel.
constexpr int kBlock = 8;

template <typename T>
void forward_kernel(const T* data, const T* flow, T* out, int N, int C, int H, int W) {
  std::vector<Corner4<T>> table;
  build_table(flow, N, H, W, &table);
  const int HW = H * W;
  const int blocks_per_image = (C + kBlock - 1) / kBlock;
  const int tasks = N * blocks_per_image;
#pragma omp parallel for num_threads(worth_threads(static_cast<double>(N) * C * HW / 4)) \
    schedule(static)
  for (int task = 0; task < tasks; ++task) {
    const int n = task / blocks_per_image;
    const int c0 = (task % blocks_per_image) * kBlock;
    const int nc = std::min(kBlock, C - c0);
    const T* src = data + (static_cast<size_t>(n) * C + c0) * HW;
    T* dst = out + (static_cast<size_t>(n) * C + c0) * HW;
    const Corner4<T>* tab = table.data() + static_cast<size_t>(n) * HW;
    for (int p = 0; p < HW; ++p) {
      const Corner4<T>& c = tab[p];
      const int o0 = c.off[0], o1 = c.off[1], o2 = c.off[2], o3 = c.off[3];
      const T w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
      for (int k = 0; k < nc; ++k) {
        const T* s = src + static_cast<size_t>(k) * HW;
        dst[static_cast<size_t>(k) * HW + p] = s[o0] * w0 + s[o1] * w1 + s[o2] * w2 + s[o3] * w3;
      }
    }
  }
}

template <typename T>
void backward_kernel(const T* grad_out, const T* data, const T* flow, T* grad_data, T* grad_flow,
                     int N, int C, int H, int W) {
  std::vector<Corner4<T>> table;
  build_table(flow, N, H, W, &table);
  const int HW = H * W;
  const int blocks_per_image = (C + kBlock - 1) / kBlock;
  const int tasks = N * blocks_per_image;
  const int threads =
      std::max(1, std::min(worth_threads(static_cast<double>(N) * C * HW / 2), tasks));
  // Per-thread partial flow gradients (N, 2, H, W), summed in thread order afterwards.
  std::vector<T> partial(static_cast<size_t>(threads) * N * 2 * HW, static_cast<T>(0));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    T* mine = partial.data() + static_cast<size_t>(t) * N * 2 * HW;
    // Contiguous range of channel blocks per thread: a fixed split, so a fixed summation order.
    const int begin = static_cast<int>(static_cast<long long>(tasks) * t / nt);
    const int end = static_cast<int>(static_cast<long long>(tasks) * (t + 1) / nt);
    for (int task = begin; task < end; ++task) {
      const int n = task / blocks_per_image;
      const int c0 = (task % blocks_per_image) * kBlock;
      const int nc = std::min(kBlock, C - c0);
      const size_t base = (static_cast<size_t>(n) * C + c0) * HW;
      const T* g = grad_out + base;
      const T* src = data + base;
      T* gd = grad_data + base;
      std::memset(gd, 0, sizeof(T) * HW * nc);
      const Corner4<T>* tab = table.data() + static_cast<size_t>(n) * HW;
      T* gx = mine + static_cast<size_t>(n) * 2 * HW;
      T* gy = gx + HW;
      for (int p = 0; p < HW; ++p) {
        const Corner4<T>& c = tab[p];
        const int o0 = c.off[0], o1 = c.off[1], o2 = c.off[2], o3 = c.off[3];
        const T w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
        const T m0 = c.m[0], m1 = c.m[1], m2 = c.m[2], m3 = c.m[3];
        T sum_x = 0, sum_y = 0;
        for (int k = 0; k < nc; ++k) {
          const size_t off = static_cast<size_t>(k) * HW;
          const T go = g[off + p];
          const T* s = src + off;
          T* d = gd + off;
          d[o0] += go * w0;
          d[o1] += go * w1;
          d[o2] += go * w2;
          d[o3] += go * w3;
          const T tl = s[o0] * m0, tr = s[o1] * m1, bl = s[o2] * m2, br = s[o3] * m3;
          const T cross = tl - tr - bl + br;
          // d out / d y_real and d x_real (the normalisation round trip has derivative 1).
          sum_y -= go * (tr - br + cross * c.wx);
          sum_x -= go * (bl - br + cross * c.wy);
        }
        gx[p] += sum_x;
        gy[p] += sum_y;
      }
    }
  }
  const size_t flow_size = static_cast<size_t>(N) * 2 * HW;
  const int chunks = static_cast<int>((flow_size + 4095) / 4096);
#pragma omp parallel for num_threads(flow_size >= (1 << 16) ? threads : 1) schedule(static)
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const size_t lo = static_cast<size_t>(chunk) * 4096;
    const size_t hi = std::min(flow_size, lo + 4096);
    for (size_t i = lo; i < hi; ++i) {
      T sum = partial[i];
      for (int t = 1; t < threads; ++t) sum += partial[static_cast<size_t>(t) * flow_size + i];
      grad_flow[i] = sum;
    }
  }
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  if (!check_attr_names(attrs, kOp, {})) return MX_FAIL;
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return infer_same_float_type(kOp, {"data", "flow"}, true, in_types, out_types) ? MX_SUCCESS
                                                                                  : MX_FAIL;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const auto& d = (*in_shapes)[0];
  const auto& f = (*in_shapes)[1];
  if (d.size() != 4) {
    DETOPS_ERROR << kOp << ": data must be 4-D (N, C, H, W), got shape " << shape_str(d);
    return MX_FAIL;
  }
  if (f.size() != 4 || f[1] != 2) {
    DETOPS_ERROR << kOp << ": flow must be 4-D (N, 2, H, W), got shape " << shape_str(f);
    return MX_FAIL;
  }
  if (f[0] != d[0] || f[2] != d[2] || f[3] != d[3]) {
    DETOPS_ERROR << kOp << ": flow shape " << shape_str(f) << " does not match data shape "
                 << shape_str(d) << " (needs (N, 2, H, W) with the same N, H, W)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = d;
  return MX_SUCCESS;
}

template <typename T>
void run_forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs) {
  MXTensor& data = (*inputs)[0];
  const int N = data.shape[0], C = data.shape[1], H = data.shape[2], W = data.shape[3];
  if (static_cast<long long>(N) * C * H * W == 0) return;
  forward_kernel<T>(data.data<T>(), (*inputs)[1].data<T>(), (*outputs)[0].data<T>(), N, C, H, W);
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  if ((*inputs)[0].dtype == mxnet::ext::kFloat64)
    run_forward<double>(inputs, outputs);
  else
    run_forward<float>(inputs, outputs);
  return MX_SUCCESS;
}

// Backward inputs: [grad_out, data, flow, out]; outputs: [grad_data, grad_flow].
template <typename T>
void run_backward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs) {
  MXTensor& data = (*inputs)[1];
  const int N = data.shape[0], C = data.shape[1], H = data.shape[2], W = data.shape[3];
  if (static_cast<long long>(N) * C * H * W == 0) {
    zero_outputs(outputs);
    return;
  }
  backward_kernel<T>((*inputs)[0].data<T>(), data.data<T>(), (*inputs)[2].data<T>(),
                     (*outputs)[0].data<T>(), (*outputs)[1].data<T>(), N, C, H, W);
}

MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  if ((*inputs)[1].dtype == mxnet::ext::kFloat64)
    run_backward<double>(inputs, outputs);
  else
    run_backward<float>(inputs, outputs);
  return MX_SUCCESS;
}

}  // namespace
}  // namespace detops

DETOPS_REGISTER_CPU_OP(detops_flow_warp);
