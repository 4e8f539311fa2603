// detops_channels_last(x_0, ..., x_{k-1}; num_args=k): concat on channels and NCHW -> NHWC in one
// pass: inputs (N, C_i, H, W) with the same N, H, W; output (N, H, W, sum C_i), equal to
// transpose(concat(x_0, ..., dim=1), axes=(0, 2, 3, 1)). FGFA's streaming inference stores each
// frame's cache (feature + embedding) this way once, for flow_aggregate's channels_last kernel.
// MXNet's concat + transpose of a (1, 1536, 38, 63) cache take ~4x as long (two passes, and its
// transpose kernel is generic). The gradient splits and transposes back.
#include <algorithm>
#include <vector>

#include "detops_common.h"

namespace detops {
namespace {

const char* kOp = "channels_last";
// Pixels moved together: per input channel a run of kTile contiguous floats is read and scattered
// to kTile output rows, which stay in L1 while all channels are written.
constexpr int kTile = 16;

bool parse_count(const Attrs& attrs, int* count) {
  if (!check_attr_names(attrs, kOp, {"num_args"})) return false;
  if (!attr_required_int(attrs, kOp, "num_args", count)) return false;
  if (*count < 1) {
    DETOPS_ERROR << kOp << ": num_args must be >= 1, got " << *count;
    return false;
  }
  return true;
}

// kForward: planar inputs -> pixel-major output; else pixel-major gradient -> planar gradients.
template <typename T, bool kForward>
void move(const std::vector<T*>& planar, const std::vector<int>& channels, T* pixels, int N, int HW) {
  int total = 0;
  for (int c : channels) total += c;
  const int tiles = (HW + kTile - 1) / kTile;
#pragma omp parallel for num_threads(worth_threads(static_cast<double>(N) * HW * total)) schedule(static)
  for (int job = 0; job < N * tiles; ++job) {
    const int n = job / tiles, p0 = (job % tiles) * kTile, p1 = std::min(HW, p0 + kTile);
    T* rows = pixels + (static_cast<size_t>(n) * HW + p0) * total;
    int offset = 0;
    for (size_t i = 0; i < planar.size(); ++i) {
      for (int c = 0; c < channels[i]; ++c) {
        T* plane = planar[i] + (static_cast<size_t>(n) * channels[i] + c) * HW;
        T* column = rows + offset + c;
        for (int p = p0; p < p1; ++p) {
          if (kForward)
            column[static_cast<size_t>(p - p0) * total] = plane[p];
          else
            plane[p] = column[static_cast<size_t>(p - p0) * total];
        }
      }
      offset += channels[i];
    }
  }
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  int count;
  if (!parse_count(attrs, &count)) return MX_FAIL;
  *num_in = count;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  std::vector<std::string> names;
  for (size_t i = 0; i < in_types->size(); ++i) names.push_back("x_" + std::to_string(i));
  return infer_same_float_type(kOp, names, true, in_types, out_types) ? MX_SUCCESS : MX_FAIL;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const auto& first = (*in_shapes)[0];
  unsigned int total = 0;
  for (size_t i = 0; i < in_shapes->size(); ++i) {
    const auto& s = (*in_shapes)[i];
    if (s.size() != 4 || s[0] != first[0] || s[2] != first[2] || s[3] != first[3]) {
      DETOPS_ERROR << kOp << ": x_" << i << " has shape " << shape_str(s) << ", every input must be "
                   << "(N, C_i, H, W) with the N, H, W of x_0 " << shape_str(first);
      return MX_FAIL;
    }
    total += s[1];
  }
  (*out_shapes)[0] = {first[0], first[2], first[3], total};
  return MX_SUCCESS;
}

// planar: the (N, C_i, H, W) tensors, pixels: the (N, H, W, sum C_i) one.
template <typename T>
void run(std::vector<MXTensor*> planar, MXTensor& pixels, bool forward) {
  const int N = planar[0]->shape[0], HW = planar[0]->shape[2] * planar[0]->shape[3];
  std::vector<T*> data;
  std::vector<int> channels;
  for (MXTensor* x : planar) {
    data.push_back(x->data<T>());
    channels.push_back(static_cast<int>(x->shape[1]));
  }
  if (static_cast<long long>(N) * HW == 0) return;
  if (forward)
    move<T, true>(data, channels, pixels.data<T>(), N, HW);
  else
    move<T, false>(data, channels, pixels.data<T>(), N, HW);
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  std::vector<MXTensor*> planar;
  for (auto& x : *inputs) planar.push_back(&x);
  if ((*inputs)[0].dtype == mxnet::ext::kFloat64)
    run<double>(planar, (*outputs)[0], true);
  else
    run<float>(planar, (*outputs)[0], true);
  return MX_SUCCESS;
}

// Backward inputs: [grad_out, x_0..x_{k-1}, out]; outputs: [grad_x_0..grad_x_{k-1}].
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  std::vector<MXTensor*> planar;
  for (auto& g : *outputs) planar.push_back(&g);
  if ((*inputs)[0].dtype == mxnet::ext::kFloat64)
    run<double>(planar, (*inputs)[0], false);
  else
    run<float>(planar, (*inputs)[0], false);
  return MX_SUCCESS;
}

}  // namespace
}  // namespace detops

DETOPS_REGISTER_CPU_OP(detops_channels_last);
