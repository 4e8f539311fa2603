// detops_flow_aggregate(key_cache, cache_0..cache_{T-1}, flow_0..flow_{T-1}): FGFA's flow-guided
// aggregation with cosine adaptive weights in one pass, for inference.
//
// Each cache is concat(feature (C channels), embedding (E channels)) of one frame, (N, C+E, h, w);
// flow_t (N, 2, h, w) maps the key frame onto frame t. The result equals the composite graph
// (fgfa.aggregation.FlowAggregator):
//   warped_t = flow_warp(cache_t, flow_t)
//   cos_t    = <L2Normalization(warped_t[C:]), L2Normalization(key_cache[C:])>   (over channels)
//   w_t      = softmax_t(cos_t)                                                    (per pixel)
//   out      = sum_t w_t * warped_t[:C]
// Outputs: out (N, C, h, w) and the weights (N, T, h, w).
//
// Why a fused kernel: the composite graph materialises the warped window (T x (C+E) channels, about
// 560 MB at ImageNet VID size with K = 9) and several same-sized temporaries; this kernel streams
// every cache through the cache hierarchy once, one output row at a time, with no temporaries
// beyond a few rows. The window is passed as separate inputs, so the caller does not concatenate
// it either. Sampling is the one of flow_warp (bilinear.h). No backward: training uses the
// composite graph (its gradients go to the flows and embeddings).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "bilinear.h"
#include "detops_common.h"

namespace detops {
namespace {

const char* kOp = "flow_aggregate";
// MXNet's L2Normalization eps (x / sqrt(sum x^2 + eps)).
constexpr double kEps = 1e-10;

struct Params {
  int feat_channels;
  int num_frames;
};

bool parse_params(const Attrs& attrs, Params* p) {
  if (!check_attr_names(attrs, kOp, {"feat_channels", "num_frames"})) return false;
  if (!attr_required_int(attrs, kOp, "feat_channels", &p->feat_channels)) return false;
  if (!attr_required_int(attrs, kOp, "num_frames", &p->num_frames)) return false;
  if (p->feat_channels < 1) {
    DETOPS_ERROR << kOp << ": feat_channels must be >= 1, got " << p->feat_channels;
    return false;
  }
  if (p->num_frames < 1) {
    DETOPS_ERROR << kOp << ": num_frames must be >= 1, got " << p->num_frames;
    return false;
  }
  return true;
}

template <typename T>
void aggregate_rows(const T* key, const std::vector<const T*>& caches,
                    const std::vector<const T*>& flows, T* out, T* weights, int N, int C, int E,
                    int H, int W) {
  const int Tn = static_cast<int>(caches.size());
  const int HW = H * W;
  const size_t cache_stride = static_cast<size_t>(C + E) * HW;  // one image of a cache
  const T half_w = half_extent<T>(W);
  const T half_h = half_extent<T>(H);
  const int rows = N * H;
  const double work = static_cast<double>(rows) * W * Tn * (C + E);
#pragma omp parallel num_threads(std::max(1, std::min(worth_threads(work / 4), rows)))
  {
    std::vector<Corner4<T>> table(static_cast<size_t>(Tn) * W);
    std::vector<T> cosine(static_cast<size_t>(Tn) * W), dot(W), norm(W), key_inv(W);
#pragma omp for schedule(static)
    for (int row = 0; row < rows; ++row) {
      const int n = row / H, y = row % H;
      for (int t = 0; t < Tn; ++t) {
        const T* fl = flows[t] + static_cast<size_t>(n) * 2 * HW + static_cast<size_t>(y) * W;
        for (int x = 0; x < W; ++x)
          make_corner<T>(fl[x], fl[HW + x], x, y, W, H, half_w, half_h, &table[t * W + x]);
      }
      // 1 / |key embedding| per pixel
      const T* key_emb = key + static_cast<size_t>(n) * cache_stride + static_cast<size_t>(C) * HW +
                         static_cast<size_t>(y) * W;
      std::fill(norm.begin(), norm.end(), static_cast<T>(0));
      for (int e = 0; e < E; ++e) {
        const T* k = key_emb + static_cast<size_t>(e) * HW;
        for (int x = 0; x < W; ++x) norm[x] += k[x] * k[x];
      }
      for (int x = 0; x < W; ++x) key_inv[x] = static_cast<T>(1.0 / std::sqrt(norm[x] + kEps));
      // cosine similarity of each warped embedding with the key embedding
      for (int t = 0; t < Tn; ++t) {
        const T* emb = caches[t] + static_cast<size_t>(n) * cache_stride + static_cast<size_t>(C) * HW;
        const Corner4<T>* tab = &table[t * W];
        std::fill(dot.begin(), dot.end(), static_cast<T>(0));
        std::fill(norm.begin(), norm.end(), static_cast<T>(0));
        for (int e = 0; e < E; ++e) {
          const T* plane = emb + static_cast<size_t>(e) * HW;
          const T* k = key_emb + static_cast<size_t>(e) * HW;
          for (int x = 0; x < W; ++x) {
            const T v = sample(plane, tab[x]);
            dot[x] += v * k[x];
            norm[x] += v * v;
          }
        }
        for (int x = 0; x < W; ++x)
          cosine[t * W + x] = static_cast<T>(dot[x] * key_inv[x] / std::sqrt(norm[x] + kEps));
      }
      // softmax over the frames, per pixel
      for (int x = 0; x < W; ++x) {
        T top = cosine[x];
        for (int t = 1; t < Tn; ++t) top = std::max(top, cosine[t * W + x]);
        T sum = 0;
        for (int t = 0; t < Tn; ++t) {
          const T v = std::exp(cosine[t * W + x] - top);
          cosine[t * W + x] = v;
          sum += v;
        }
        for (int t = 0; t < Tn; ++t) cosine[t * W + x] /= sum;
      }
      T* w_out = weights + static_cast<size_t>(n) * Tn * HW + static_cast<size_t>(y) * W;
      for (int t = 0; t < Tn; ++t)
        std::copy(&cosine[t * W], &cosine[t * W] + W, w_out + static_cast<size_t>(t) * HW);
      // weighted sum of the warped features
      T* dst = out + static_cast<size_t>(n) * C * HW + static_cast<size_t>(y) * W;
      for (int c = 0; c < C; ++c) {
        T* o = dst + static_cast<size_t>(c) * HW;
        std::fill(o, o + W, static_cast<T>(0));
        for (int t = 0; t < Tn; ++t) {
          const T* plane = caches[t] + static_cast<size_t>(n) * cache_stride + static_cast<size_t>(c) * HW;
          const Corner4<T>* tab = &table[t * W];
          const T* w = &cosine[t * W];
          for (int x = 0; x < W; ++x) o[x] += w[x] * sample(plane, tab[x]);
        }
      }
    }
  }
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  *num_in = 1 + 2 * p.num_frames;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  std::vector<std::string> names = {"key_cache"};
  for (int t = 0; t < p.num_frames; ++t) names.push_back("cache_" + std::to_string(t));
  for (int t = 0; t < p.num_frames; ++t) names.push_back("flow_" + std::to_string(t));
  return infer_same_float_type(kOp, names, true, in_types, out_types) ? MX_SUCCESS : MX_FAIL;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const auto& key = (*in_shapes)[0];
  if (key.size() != 4) {
    DETOPS_ERROR << kOp << ": key_cache must be 4-D (N, C+E, h, w), got shape " << shape_str(key);
    return MX_FAIL;
  }
  if (static_cast<int>(key[1]) <= p.feat_channels) {
    DETOPS_ERROR << kOp << ": key_cache has " << key[1] << " channels, needs feat_channels ("
                 << p.feat_channels << ") + at least one embedding channel";
    return MX_FAIL;
  }
  for (int t = 0; t < p.num_frames; ++t) {
    const auto& cache = (*in_shapes)[1 + t];
    if (cache != key) {
      DETOPS_ERROR << kOp << ": cache_" << t << " has shape " << shape_str(cache)
                   << ", every cache must have the key_cache shape " << shape_str(key);
      return MX_FAIL;
    }
    const auto& flow = (*in_shapes)[1 + p.num_frames + t];
    if (flow.size() != 4 || flow[0] != key[0] || flow[1] != 2 || flow[2] != key[2] ||
        flow[3] != key[3]) {
      DETOPS_ERROR << kOp << ": flow_" << t << " has shape " << shape_str(flow) << ", needs (N, 2, h, w) = ("
                   << key[0] << ", 2, " << key[2] << ", " << key[3] << ")";
      return MX_FAIL;
    }
  }
  (*out_shapes)[0] = {key[0], static_cast<unsigned int>(p.feat_channels), key[2], key[3]};
  (*out_shapes)[1] = {key[0], static_cast<unsigned int>(p.num_frames), key[2], key[3]};
  return MX_SUCCESS;
}

template <typename T>
void run_forward(const Params& p, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs) {
  MXTensor& key = (*inputs)[0];
  const int N = key.shape[0], CE = key.shape[1], H = key.shape[2], W = key.shape[3];
  if (static_cast<long long>(N) * H * W == 0) return;
  std::vector<const T*> caches, flows;
  for (int t = 0; t < p.num_frames; ++t) {
    caches.push_back((*inputs)[1 + t].data<T>());
    flows.push_back((*inputs)[1 + p.num_frames + t].data<T>());
  }
  aggregate_rows<T>(key.data<T>(), caches, flows, (*outputs)[0].data<T>(), (*outputs)[1].data<T>(), N,
                    p.feat_channels, CE - p.feat_channels, H, W);
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  if ((*inputs)[0].dtype == mxnet::ext::kFloat64)
    run_forward<double>(p, inputs, outputs);
  else
    run_forward<float>(p, inputs, outputs);
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  DETOPS_ERROR << kOp << " is an inference kernel and has no gradient: train with the composite "
               << "graph (fgfa.aggregation.FlowAggregator)";
  return MX_FAIL;
}

}  // namespace
}  // namespace detops

REGISTER_OP(detops_flow_aggregate)
    .setParseAttrs(detops::parse_attrs)
    .setInferType(detops::infer_type)
    .setInferShape(detops::infer_shape)
    .setForward(detops::forward, "cpu")
    .setBackward(detops::backward, "cpu");
