// detops_psroi_pooling(data, rois): position-sensitive RoI average pooling (R-FCN).
//
// Same attributes and arithmetic as mx.nd.contrib.PSROIPooling: rois are
// [batch_index, x1, y1, x2, y2] in image pixels; coordinates are rounded, the end gets +1, both
// are scaled by spatial_scale; roi sizes are floored at 0.1; bin (ph, pw) covers
// [floor(start + ph * bin), ceil(start + (ph + 1) * bin)) clipped to the map; output
// (r, ctop, ph, pw) is the mean of channel (ctop * G + gh) * G + gw over its bin, 0 for an empty
// bin. Gradient flows to data only (rois get 0).
//
// Differences from MXNet: data must have exactly output_dim * group_size^2 channels, and a roi
// whose batch index is not an image of the batch is an error (MXNet reads out of bounds).
//
// Kernels: bin boundaries are tabulated per roi. Forward runs OpenMP over output channels, backward
// over input channels, the rois inside, so the planes in use stay in cache while every roi visits
// them; in backward each thread owns whole gradient planes, so no atomics and the accumulation
// order is the roi order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "detops_common.h"

namespace detops {
namespace {

const char* kOp = "psroi_pooling";

struct Params {
  float spatial_scale;
  int output_dim;
  int pooled_size;
  int group_size;
};

bool parse_params(const Attrs& attrs, Params* p) {
  if (!check_attr_names(attrs, kOp, {"spatial_scale", "output_dim", "pooled_size", "group_size"}))
    return false;
  if (!attr_required_float(attrs, kOp, "spatial_scale", &p->spatial_scale) ||
      !attr_required_int(attrs, kOp, "output_dim", &p->output_dim) ||
      !attr_required_int(attrs, kOp, "pooled_size", &p->pooled_size) ||
      !attr_int(attrs, kOp, "group_size", 0, &p->group_size))
    return false;
  if (!(p->spatial_scale > 0.f && p->spatial_scale <= 1.f)) {
    DETOPS_ERROR << kOp << ": spatial_scale=" << p->spatial_scale
                 << " must be in (0, 1] (feature map size / image size, e.g. 0.0625)";
    return false;
  }
  if (p->output_dim <= 0) {
    DETOPS_ERROR << kOp << ": output_dim=" << p->output_dim << " must be positive";
    return false;
  }
  if (p->pooled_size <= 0) {
    DETOPS_ERROR << kOp << ": pooled_size=" << p->pooled_size << " must be positive";
    return false;
  }
  if (p->group_size < 0) {
    DETOPS_ERROR << kOp << ": group_size=" << p->group_size
                 << " must be positive (or 0 for pooled_size)";
    return false;
  }
  if (p->group_size == 0) p->group_size = p->pooled_size;
  return true;
}

// Bin boundaries of every roi, as MXNet's kernel computes them (in the data type T).
struct RoiBins {
  std::vector<int> batch;             // (R,)
  std::vector<int> hstart, hend;      // (R, P)
  std::vector<int> wstart, wend;      // (R, P)
  std::vector<int> gh_of, gw_of;      // (P,) group row / column of each bin row / column
};

// min(max(v, 0), size) for an integral-valued v, without overflowing the int conversion.
template <typename T>
inline int clip_index(T v, int size) {
  if (v <= 0) return 0;
  if (v >= static_cast<T>(size)) return size;
  return static_cast<int>(v);
}

template <typename T>
bool tabulate_bins(const T* rois, int R, int N, int H, int W, const Params& p, RoiBins* bins) {
  const int P = p.pooled_size, G = p.group_size;
  bins->batch.resize(R);
  bins->hstart.resize(static_cast<size_t>(R) * P);
  bins->hend.resize(static_cast<size_t>(R) * P);
  bins->wstart.resize(static_cast<size_t>(R) * P);
  bins->wend.resize(static_cast<size_t>(R) * P);
  for (int r = 0; r < R; ++r) {
    const T* roi = rois + static_cast<size_t>(r) * 5;
    const T b = roi[0];
    if (!(b >= 0 && b < static_cast<T>(N))) {
      DETOPS_ERROR << kOp << ": roi " << r << " has batch index " << b
                   << " but data has " << N << " image(s) (rois rows are [batch_index, x1, y1, x2, y2])";
      return false;
    }
    for (int j = 1; j < 5; ++j) {
      if (!std::isfinite(roi[j])) {
        DETOPS_ERROR << kOp << ": roi " << r << " has a non-finite coordinate (" << roi[j] << ")";
        return false;
      }
    }
    bins->batch[r] = static_cast<int>(b);
    const T scale = static_cast<T>(p.spatial_scale);
    const T start_w = static_cast<T>(std::round(roi[1])) * scale;
    const T start_h = static_cast<T>(std::round(roi[2])) * scale;
    const T end_w = static_cast<T>(std::round(roi[3]) + 1.) * scale;
    const T end_h = static_cast<T>(std::round(roi[4]) + 1.) * scale;
    const T roi_w = static_cast<T>(std::max<double>(end_w - start_w, 0.1));
    const T roi_h = static_cast<T>(std::max<double>(end_h - start_h, 0.1));
    const T bin_h = roi_h / static_cast<T>(P);
    const T bin_w = roi_w / static_cast<T>(P);
    for (int i = 0; i < P; ++i) {
      const size_t k = static_cast<size_t>(r) * P + i;
      bins->hstart[k] = clip_index<T>(std::floor(static_cast<T>(i) * bin_h + start_h), H);
      bins->hend[k] = clip_index<T>(std::ceil(static_cast<T>(i + 1) * bin_h + start_h), H);
      bins->wstart[k] = clip_index<T>(std::floor(static_cast<T>(i) * bin_w + start_w), W);
      bins->wend[k] = clip_index<T>(std::ceil(static_cast<T>(i + 1) * bin_w + start_w), W);
    }
  }
  bins->gh_of.resize(P);
  bins->gw_of.resize(P);
  for (int i = 0; i < P; ++i) {
    int g = static_cast<int>(std::floor(static_cast<T>(i) * G / P));
    g = std::min(std::max(g, 0), G - 1);
    bins->gh_of[i] = g;
    bins->gw_of[i] = g;
  }
  return true;
}

// Bin rows (or columns) i whose group row (column) is g, for every g < G.
std::vector<std::vector<int>> bins_of_group(const RoiBins& bins, int G) {
  std::vector<std::vector<int>> out(G);
  for (size_t i = 0; i < bins.gh_of.size(); ++i) out[bins.gh_of[i]].push_back(static_cast<int>(i));
  return out;
}

// Loop order: a thread takes one output channel ctop and visits every roi; the G * G input planes
// of ctop (a few hundred KB) stay in cache across rois and each roi's output is one contiguous
// P * P block.
template <typename T>
bool forward_kernel(const T* data, const T* rois, T* out, int N, int C, int H, int W, int R,
                    const Params& p) {
  RoiBins bins;
  if (!tabulate_bins(rois, R, N, H, W, p, &bins)) return false;
  const int P = p.pooled_size, G = p.group_size, D = p.output_dim;
  const int HW = H * W;
#pragma omp parallel for num_threads(worth_threads(static_cast<double>(R) * D * P * P)) \
    schedule(dynamic, 1)
  for (int ctop = 0; ctop < D; ++ctop) {
    for (int r = 0; r < R; ++r) {
      const T* image = data + static_cast<size_t>(bins.batch[r]) * C * HW;
      T* dst = out + (static_cast<size_t>(r) * D + ctop) * P * P;
      const int* hstart = &bins.hstart[static_cast<size_t>(r) * P];
      const int* hend = &bins.hend[static_cast<size_t>(r) * P];
      const int* wstart = &bins.wstart[static_cast<size_t>(r) * P];
      const int* wend = &bins.wend[static_cast<size_t>(r) * P];
      for (int ph = 0; ph < P; ++ph) {
        const int hs = hstart[ph], he = hend[ph];
        for (int pw = 0; pw < P; ++pw) {
          const int ws = wstart[pw], we = wend[pw];
          if (he <= hs || we <= ws) {
            dst[ph * P + pw] = 0;
            continue;
          }
          const int c = (ctop * G + bins.gh_of[ph]) * G + bins.gw_of[pw];
          const T* plane = image + static_cast<size_t>(c) * HW;
          T sum = 0;
          for (int h = hs; h < he; ++h) {
            const T* row = plane + h * W;
            for (int w = ws; w < we; ++w) sum += row[w];
          }
          dst[ph * P + pw] = sum / static_cast<T>((he - hs) * (we - ws));
        }
      }
    }
  }
  return true;
}

template <typename T>
bool backward_kernel(const T* grad_out, const T* rois, T* grad_data, int N, int C, int H, int W,
                     int R, const Params& p) {
  RoiBins bins;
  if (!tabulate_bins(rois, R, N, H, W, p, &bins)) return false;
  const int P = p.pooled_size, G = p.group_size, D = p.output_dim;
  const int HW = H * W;
  const std::vector<std::vector<int>> groups = bins_of_group(bins, G);
#pragma omp parallel for num_threads(worth_threads(static_cast<double>(R) * C + \
                                                   static_cast<double>(N) * C * HW / 16)) \
    schedule(dynamic, 4)
  for (int c = 0; c < C; ++c) {
    for (int n = 0; n < N; ++n)
      std::memset(grad_data + (static_cast<size_t>(n) * C + c) * HW, 0, sizeof(T) * HW);
    const int ctop = c / (G * G), gh = (c / G) % G, gw = c % G;
    if (ctop >= D) continue;
    const std::vector<int>& phs = groups[gh];
    const std::vector<int>& pws = groups[gw];
    for (int r = 0; r < R; ++r) {
      T* plane = grad_data + (static_cast<size_t>(bins.batch[r]) * C + c) * HW;
      const T* g = grad_out + (static_cast<size_t>(r) * D + ctop) * P * P;
      const int* hstart = &bins.hstart[static_cast<size_t>(r) * P];
      const int* hend = &bins.hend[static_cast<size_t>(r) * P];
      const int* wstart = &bins.wstart[static_cast<size_t>(r) * P];
      const int* wend = &bins.wend[static_cast<size_t>(r) * P];
      for (int ph : phs) {
        const int hs = hstart[ph], he = hend[ph];
        if (he <= hs) continue;
        for (int pw : pws) {
          const int ws = wstart[pw], we = wend[pw];
          if (we <= ws) continue;
          const T diff = g[ph * P + pw] / static_cast<T>((he - hs) * (we - ws));
          for (int h = hs; h < he; ++h) {
            T* row = plane + h * W;
            for (int w = ws; w < we; ++w) row[w] += diff;
          }
        }
      }
    }
  }
  return true;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return infer_same_float_type(kOp, {"data", "rois"}, true, in_types, out_types) ? MX_SUCCESS
                                                                                  : MX_FAIL;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const auto& d = (*in_shapes)[0];
  const auto& r = (*in_shapes)[1];
  if (d.size() != 4) {
    DETOPS_ERROR << kOp << ": data must be 4-D (N, C, H, W), got shape " << shape_str(d);
    return MX_FAIL;
  }
  if (r.size() != 2 || r[1] != 5) {
    DETOPS_ERROR << kOp << ": rois must be 2-D (R, 5) with rows [batch_index, x1, y1, x2, y2], "
                 << "got shape " << shape_str(r);
    return MX_FAIL;
  }
  const long long needed = static_cast<long long>(p.output_dim) * p.group_size * p.group_size;
  if (static_cast<long long>(d[1]) != needed) {
    DETOPS_ERROR << kOp << ": data has " << d[1] << " channels but output_dim * group_size^2 = "
                 << p.output_dim << " * " << p.group_size << "^2 = " << needed
                 << " are needed (data shape " << shape_str(d) << ")";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {r[0], static_cast<unsigned int>(p.output_dim),
                      static_cast<unsigned int>(p.pooled_size),
                      static_cast<unsigned int>(p.pooled_size)};
  return MX_SUCCESS;
}

template <typename T>
bool run_forward(const Params& p, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs) {
  MXTensor& data = (*inputs)[0];
  MXTensor& rois = (*inputs)[1];
  const int N = data.shape[0], C = data.shape[1], H = data.shape[2], W = data.shape[3];
  const int R = rois.shape[0];
  if (R == 0) return true;
  return forward_kernel<T>(data.data<T>(), rois.data<T>(), (*outputs)[0].data<T>(), N, C, H, W,
                           R, p);
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  bool ok = (*inputs)[0].dtype == mxnet::ext::kFloat64 ? run_forward<double>(p, inputs, outputs)
                                                       : run_forward<float>(p, inputs, outputs);
  return ok ? MX_SUCCESS : MX_FAIL;
}

// Backward inputs: [grad_out, data, rois, out]; outputs: [grad_data, grad_rois].
template <typename T>
bool run_backward(const Params& p, std::vector<MXTensor>* inputs,
                  std::vector<MXTensor>* outputs) {
  MXTensor& data = (*inputs)[1];
  MXTensor& rois = (*inputs)[2];
  const int N = data.shape[0], C = data.shape[1], H = data.shape[2], W = data.shape[3];
  const int R = rois.shape[0];
  MXTensor& grad_rois = (*outputs)[1];
  if (grad_rois.size() > 0) std::memset(grad_rois.data_ptr, 0, sizeof(T) * grad_rois.size());
  return backward_kernel<T>((*inputs)[0].data<T>(), rois.data<T>(), (*outputs)[0].data<T>(), N,
                            C, H, W, R, p);
}

MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  bool ok = (*inputs)[1].dtype == mxnet::ext::kFloat64 ? run_backward<double>(p, inputs, outputs)
                                                       : run_backward<float>(p, inputs, outputs);
  return ok ? MX_SUCCESS : MX_FAIL;
}

}  // namespace
}  // namespace detops

DETOPS_REGISTER_CPU_OP(detops_psroi_pooling);
