// detops_flow_aggregate(key_cache, cache_0..cache_{T-1}, flow_0..flow_{T-1}): FGFA's flow-guided
// aggregation with cosine adaptive weights in one pass, for inference.
//
// Each cache is concat(feature (C channels), embedding (E channels)) of one frame, (N, C+E, h, w);
// flow_t (N, 2, h, w) maps the key frame onto frame t. The result equals the composite graph
// (fgfa.aggregation.FlowAggregator):
//   warped_t = flow_warp(cache_t, flow_t)
//   cos_t    = <L2Normalization(warped_t[C:]), L2Normalization(key_cache[C:])>   (over channels)
//   w_t      = softmax_t(scale * cos_t)                                            (per pixel)
//   out      = sum_t w_t * warped_t[:C]
// Outputs: out (N, C, h, w) and the weights (N, T, h, w). scale (default 1, the reference) sharpens
// (> 1) or flattens (< 1) the weights: FGFA's NETWORK.AGGREGATE_SCALE, learned or fixed. With quality=1
// the cache's last channel is a per-pixel logit of the frame's own (FGFA's NETWORK.AGGREGATE_QUALITY),
// warped like the rest and added: w_t = softmax_t(scale * cos_t + warped_t[C+E]); the cosine then runs
// over the E channels between.
// With channels_last=1 the key and the window caches are (N, h, w, C+E) (lib.ops.channels_last builds
// them once per frame): the kernel then reads each corner's channels as one contiguous vector instead
// of gathering them plane by plane (aggregate_pixels); out stays (N, C, h, w).
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
  bool channels_last;
  float scale;  // cosine multiplier before the softmax (1: the reference's plain cosine)
  bool quality;  // the last channel is a logit added to the frame's weight
};

bool parse_params(const Attrs& attrs, Params* p) {
  if (!check_attr_names(attrs, kOp, {"feat_channels", "num_frames", "channels_last", "scale", "quality"}))
    return false;
  if (!attr_bool(attrs, kOp, "channels_last", false, &p->channels_last)) return false;
  if (!attr_float(attrs, kOp, "scale", 1.0f, &p->scale)) return false;
  if (!attr_bool(attrs, kOp, "quality", false, &p->quality)) return false;
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
  if (!(p->scale > 0.0f) || !std::isfinite(p->scale)) {
    DETOPS_ERROR << kOp << ": scale must be a finite number > 0, got " << p->scale;
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
                      T* out, T* weights, int N, int C, int E, int Q, int H, int W, T scale) {
  const int Tn = static_cast<int>(caches.size());
  const int HW = H * W;
  const size_t cache_stride = static_cast<size_t>(C + E + Q) * HW;  // one image of a cache
  const T half_w = half_extent<T>(W);
  const T half_h = half_extent<T>(H);
  const int threads = std::max(1, worth_threads(static_cast<double>(Tn) * (C + E) * HW / 4));
  std::vector<Taps<T>> taps(static_cast<size_t>(Tn) * HW);
  std::vector<T> dot(static_cast<size_t>(Tn) * HW), norm(static_cast<size_t>(Tn) * HW), key_norm(HW);
  std::vector<T> logit(Q ? static_cast<size_t>(Tn) * HW : 0);  // the frames' warped quality logits
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
      if (Q) {
        const T* plane = emb + static_cast<size_t>(E) * HW;
        T* l = &logit[static_cast<size_t>(t) * HW];
        for (int p = 0; p < HW; ++p) l[p] = tap(plane, tab[p]);
      }
    }
    // phase 2
    T* w_out = weights + static_cast<size_t>(n) * Tn * HW;
    for (int p = 0; p < HW; ++p) {
      const T key_inv = static_cast<T>(1.0 / std::sqrt(key_norm[p] + kEps));
      T top = -std::numeric_limits<T>::infinity();
      for (int t = 0; t < Tn; ++t) {
        const size_t i = static_cast<size_t>(t) * HW + p;
        const T cosine = static_cast<T>(scale * dot[i] * key_inv / std::sqrt(norm[i] + kEps)) +
                         (Q ? logit[i] : static_cast<T>(0));
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

// Channels-last caches (N, H, W, C+E): one pass over the output pixels, in parallel. Per pixel, the
// cosine of each frame t from its 4 corner embeddings (contiguous E-vectors), the softmax, then the
// weighted sum of the 4 corner feature vectors of every frame into a C-vector, written to the
// (N, C, H, W) output. Each element of out is summed in the order of aggregate_planes (frames in
// order, corners in order); the dot products' sums over E run in SIMD lanes (a different order).
template <typename T>
DETOPS_CLONES void aggregate_pixels(const T* key, const std::vector<const T*>& caches,
                                    const std::vector<const T*>& flows, T* out, T* weights, int N, int C,
                                    int E, int Q, int H, int W, T scale) {
  const int Tn = static_cast<int>(caches.size());
  const int HW = H * W;
  const int CE = C + E + Q;  // a pixel's channels
  const T half_w = half_extent<T>(W);
  const T half_h = half_extent<T>(H);
  const int threads = std::max(1, std::min(worth_threads(static_cast<double>(Tn) * CE * HW / 4), N * HW));
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> acc(C), cosine(Tn);
    std::vector<Taps<T>> taps(Tn);
#pragma omp for schedule(static)
    for (int idx = 0; idx < N * HW; ++idx) {
      const int n = idx / HW, p = idx % HW;
      const T* key_emb = key + static_cast<size_t>(idx) * CE + C;
      T key_norm = 0;
#pragma omp simd reduction(+ : key_norm)
      for (int e = 0; e < E; ++e) key_norm += key_emb[e] * key_emb[e];
      const T key_inv = static_cast<T>(1.0 / std::sqrt(key_norm + kEps));
      T top = -std::numeric_limits<T>::infinity();
      for (int t = 0; t < Tn; ++t) {
        const T* fl = flows[t] + static_cast<size_t>(n) * 2 * HW;
        Corner4<T> c;
        make_corner<T>(fl[p], fl[HW + p], p % W, p / W, W, H, half_w, half_h, &c);
        for (int k = 0; k < 4; ++k) {
          taps[t].off[k] = c.off[k];
          taps[t].w[k] = c.w[k];
        }
        const T* image = caches[t] + static_cast<size_t>(n) * HW * CE + C;
        const T* e0 = image + static_cast<size_t>(c.off[0]) * CE;
        const T* e1 = image + static_cast<size_t>(c.off[1]) * CE;
        const T* e2 = image + static_cast<size_t>(c.off[2]) * CE;
        const T* e3 = image + static_cast<size_t>(c.off[3]) * CE;
        const T w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
        T dot = 0, norm = 0;
#pragma omp simd reduction(+ : dot, norm)
        for (int e = 0; e < E; ++e) {
          const T v = e0[e] * w0 + e1[e] * w1 + e2[e] * w2 + e3[e] * w3;
          dot += v * key_emb[e];
          norm += v * v;
        }
        cosine[t] = static_cast<T>(scale * dot * key_inv / std::sqrt(norm + kEps));
        if (Q) cosine[t] += e0[E] * w0 + e1[E] * w1 + e2[E] * w2 + e3[E] * w3;
        top = std::max(top, cosine[t]);
      }
      T sum = 0;
      for (int t = 0; t < Tn; ++t) {
        cosine[t] = std::exp(cosine[t] - top);
        sum += cosine[t];
      }
      T* w_out = weights + static_cast<size_t>(n) * Tn * HW + p;
      std::fill(acc.begin(), acc.end(), static_cast<T>(0));
      T* a = acc.data();
      for (int t = 0; t < Tn; ++t) {
        const T wt = cosine[t] / sum;
        w_out[static_cast<size_t>(t) * HW] = wt;
        const T* image = caches[t] + static_cast<size_t>(n) * HW * CE;
        const T* f0 = image + static_cast<size_t>(taps[t].off[0]) * CE;
        const T* f1 = image + static_cast<size_t>(taps[t].off[1]) * CE;
        const T* f2 = image + static_cast<size_t>(taps[t].off[2]) * CE;
        const T* f3 = image + static_cast<size_t>(taps[t].off[3]) * CE;
        const T w0 = taps[t].w[0], w1 = taps[t].w[1], w2 = taps[t].w[2], w3 = taps[t].w[3];
#pragma omp simd
        for (int c = 0; c < C; ++c) a[c] += wt * (f0[c] * w0 + f1[c] * w1 + f2[c] * w2 + f3[c] * w3);
      }
      T* dst = out + static_cast<size_t>(n) * C * HW + p;
      for (int c = 0; c < C; ++c) dst[static_cast<size_t>(c) * HW] = a[c];
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

// (channels, h, w) of a cache shape in the layout the attributes name.
struct Dims {
  unsigned int channels, h, w;
};

template <typename Shape>
Dims cache_dims(const Params& p, const Shape& shape) {
  const auto dim = [&shape](int i) { return static_cast<unsigned int>(shape[i]); };
  return p.channels_last ? Dims{dim(3), dim(1), dim(2)} : Dims{dim(1), dim(2), dim(3)};
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const auto& key = (*in_shapes)[0];
  const char* layout = p.channels_last ? "(N, h, w, C+E) (channels_last)" : "(N, C+E, h, w)";
  if (key.size() != 4) {
    DETOPS_ERROR << kOp << ": key_cache must be 4-D " << layout << ", got shape " << shape_str(key);
    return MX_FAIL;
  }
  const Dims dims = cache_dims(p, key);
  if (static_cast<int>(dims.channels) <= p.feat_channels + (p.quality ? 1 : 0)) {
    DETOPS_ERROR << kOp << ": key_cache " << shape_str(key) << " has " << dims.channels << " channels "
                 << layout << ", needs feat_channels (" << p.feat_channels
                 << ") + at least one embedding channel" << (p.quality ? " + the quality channel" : "");
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
    if (flow.size() != 4 || flow[0] != key[0] || flow[1] != 2 || flow[2] != dims.h || flow[3] != dims.w) {
      DETOPS_ERROR << kOp << ": flow_" << t << " has shape " << shape_str(flow) << ", needs (N, 2, h, w) = ("
                   << key[0] << ", 2, " << dims.h << ", " << dims.w << ")";
      return MX_FAIL;
    }
  }
  (*out_shapes)[0] = {key[0], static_cast<unsigned int>(p.feat_channels), dims.h, dims.w};
  (*out_shapes)[1] = {key[0], static_cast<unsigned int>(p.num_frames), dims.h, dims.w};
  return MX_SUCCESS;
}

template <typename T>
void run_forward(const Params& p, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs) {
  MXTensor& key = (*inputs)[0];
  const Dims dims = cache_dims(p, key.shape);
  const int N = key.shape[0], CE = dims.channels, H = dims.h, W = dims.w;
  const int Q = p.quality ? 1 : 0;
  if (static_cast<long long>(N) * H * W == 0) return;
  std::vector<const T*> caches, flows;
  for (int t = 0; t < p.num_frames; ++t) {
    caches.push_back((*inputs)[1 + t].data<T>());
    flows.push_back((*inputs)[1 + p.num_frames + t].data<T>());
  }
  auto kernel = p.channels_last ? aggregate_pixels<T> : aggregate_planes<T>;
  kernel(key.data<T>(), caches, flows, (*outputs)[0].data<T>(), (*outputs)[1].data<T>(), N,
         p.feat_channels, CE - p.feat_channels - Q, Q, H, W, static_cast<T>(p.scale));
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
