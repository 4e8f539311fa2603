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
// 560 MB at ImageNet VID size with K = 9) and several same-sized temporaries; this kernel reads every
// cache plane once (see aggregate_planes) and keeps only per-pixel accumulators. The window is passed as separate inputs, so the caller does not concatenate
// it either. Sampling is the one of flow_warp (bilinear.h). No backward: training uses the
// composite graph (its gradients go to the flows and embeddings).
#include <algorithm>
#include <cmath>
#include <limits>
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

// Corner offsets and weights of one output pixel (weight 0 for corners outside the map).
template <typename T>
struct Taps {
  int off[4];
  T w[4];
};

template <typename T>
inline T tap(const T* plane, const Taps<T>& c) {
  return plane[c.off[0]] * c.w[0] + plane[c.off[1]] * c.w[1] + plane[c.off[2]] * c.w[2] +
         plane[c.off[3]] * c.w[3];
}

// Output channels accumulated together in phase 3: their planes stay in L2 across the T frames.
constexpr int kChannelChunk = 16;

// The window is read plane by plane (each h*w channel plane of a cache is contiguous), never pixel
// by pixel across channels: a pixel's channels lie h*w*4 bytes apart, and gathering them is what
// made the first version of this kernel memory-latency bound. Per key image:
//   phase 1, in parallel over frames t: the dot product with the key embedding and the squared norm
//            of frame t's warped embedding, accumulated over the E embedding planes;
//   phase 2: cosine similarities -> softmax over t (the weights output);
//   phase 3, in parallel over chunks of output channels: sum over t of weight * warped feature.
// x86-64 builds also get an AVX2 clone (gathers for the 4-tap sampling), picked at load time by the
// CPU; -ffp-contract=off still keeps every multiply and add separately rounded.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DETOPS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DETOPS_CLONES
#endif

template <typename T>
DETOPS_CLONES void aggregate_planes(const T* key, const std::vector<const T*>& caches, const std::vector<const T*>& flows,
                      T* out, T* weights, int N, int C, int E, int H, int W) {
  const int Tn = static_cast<int>(caches.size());
  const int HW = H * W;
  const size_t cache_stride = static_cast<size_t>(C + E) * HW;  // one image of a cache
  const T half_w = half_extent<T>(W);
  const T half_h = half_extent<T>(H);
  const int threads = std::max(1, worth_threads(static_cast<double>(Tn) * (C + E) * HW / 4));
  std::vector<Taps<T>> taps(static_cast<size_t>(Tn) * HW);
  std::vector<T> dot(static_cast<size_t>(Tn) * HW), norm(static_cast<size_t>(Tn) * HW), key_norm(HW);
  for (int n = 0; n < N; ++n) {
    const T* key_emb = key + static_cast<size_t>(n) * cache_stride + static_cast<size_t>(C) * HW;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int idx = 0; idx < Tn * HW; ++idx) {
      const int t = idx / HW, p = idx % HW;
      const T* fl = flows[t] + static_cast<size_t>(n) * 2 * HW;
      Corner4<T> c;
      make_corner<T>(fl[p], fl[HW + p], p % W, p / W, W, H, half_w, half_h, &c);
      for (int k = 0; k < 4; ++k) {
        taps[idx].off[k] = c.off[k];
        taps[idx].w[k] = c.w[k];
      }
    }
    std::fill(key_norm.begin(), key_norm.end(), static_cast<T>(0));
    for (int e = 0; e < E; ++e) {
      const T* k = key_emb + static_cast<size_t>(e) * HW;
      for (int p = 0; p < HW; ++p) key_norm[p] += k[p] * k[p];
    }
    // phase 1
#pragma omp parallel for num_threads(std::min(threads, Tn)) schedule(dynamic, 1)
    for (int t = 0; t < Tn; ++t) {
      const T* emb = caches[t] + static_cast<size_t>(n) * cache_stride + static_cast<size_t>(C) * HW;
      const Taps<T>* tab = &taps[static_cast<size_t>(t) * HW];
      T* d = &dot[static_cast<size_t>(t) * HW];
      T* q = &norm[static_cast<size_t>(t) * HW];
      std::fill(d, d + HW, static_cast<T>(0));
      std::fill(q, q + HW, static_cast<T>(0));
      for (int e = 0; e < E; ++e) {
        const T* plane = emb + static_cast<size_t>(e) * HW;
        const T* k = key_emb + static_cast<size_t>(e) * HW;
        for (int p = 0; p < HW; ++p) {
          const T v = tap(plane, tab[p]);
          d[p] += v * k[p];
          q[p] += v * v;
        }
      }
    }
    // phase 2
    T* w_out = weights + static_cast<size_t>(n) * Tn * HW;
    for (int p = 0; p < HW; ++p) {
      const T key_inv = static_cast<T>(1.0 / std::sqrt(key_norm[p] + kEps));
      T top = -std::numeric_limits<T>::infinity();
      for (int t = 0; t < Tn; ++t) {
        const size_t i = static_cast<size_t>(t) * HW + p;
        const T cosine = static_cast<T>(dot[i] * key_inv / std::sqrt(norm[i] + kEps));
        w_out[i] = cosine;
        top = std::max(top, cosine);
      }
      T sum = 0;
      for (int t = 0; t < Tn; ++t) {
        const size_t i = static_cast<size_t>(t) * HW + p;
        w_out[i] = std::exp(w_out[i] - top);
        sum += w_out[i];
      }
      for (int t = 0; t < Tn; ++t) w_out[static_cast<size_t>(t) * HW + p] /= sum;
    }
    // phase 3
    T* dst = out + static_cast<size_t>(n) * C * HW;
    const int chunks = (C + kChannelChunk - 1) / kChannelChunk;
#pragma omp parallel for num_threads(std::min(threads, chunks)) schedule(static)
    for (int chunk = 0; chunk < chunks; ++chunk) {
      const int c0 = chunk * kChannelChunk, c1 = std::min(C, c0 + kChannelChunk);
      std::fill(dst + static_cast<size_t>(c0) * HW, dst + static_cast<size_t>(c1) * HW, static_cast<T>(0));
      for (int t = 0; t < Tn; ++t) {
        const T* feat = caches[t] + static_cast<size_t>(n) * cache_stride;
        const Taps<T>* tab = &taps[static_cast<size_t>(t) * HW];
        const T* wt = w_out + static_cast<size_t>(t) * HW;
        for (int c = c0; c < c1; ++c) {
          const T* plane = feat + static_cast<size_t>(c) * HW;
          T* o = dst + static_cast<size_t>(c) * HW;
          for (int p = 0; p < HW; ++p) o[p] += wt[p] * tap(plane, tab[p]);
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
  aggregate_planes<T>(key.data<T>(), caches, flows, (*outputs)[0].data<T>(), (*outputs)[1].data<T>(), N,
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

DETOPS_REGISTER_CPU_OP(detops_flow_aggregate);
