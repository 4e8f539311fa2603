// detops_multi_proposal(cls_prob, bbox_pred, im_info): RPN proposals for a batch of images.
//
// Same attributes, defaults and arithmetic as mx.nd.contrib.MultiProposal (MXNet's +1 pixel
// convention): anchors from feature_stride, ratios and scales (ratio-major), shifted over the map
// in (h, w, anchor) order; deltas decoded (or added, iou_loss=True) and clipped to the image;
// anchors outside the un-padded region (im_info height / stride) and boxes smaller than
// rpn_min_size * im_info[2] get score -1 (small boxes are also grown by min_size / 2 per side,
// as MXNet does); scores ranked as MXNet ranks them (descending, ties by anchor index); the best rpn_pre_nms_top_n go through greedy NMS (IoU > threshold suppresses)
// until rpn_post_nms_top_n are kept; when fewer survive, the kept ones repeat cyclically.
// Outputs: rois (N * post, 5) = [batch_index, x1, y1, x2, y2] and, with output_score=True,
// scores (N * post, 1). The gradient to every input is zero.
//
// Kernels: with several images OpenMP runs over images; for one image over anchors in the decode
// step. NMS uses structure-of-arrays boxes and a branch-free inner loop the compiler vectorises.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "detops_common.h"

namespace detops {
namespace {

const char* kOp = "multi_proposal";

struct Params {
  int pre_nms_top_n;
  int post_nms_top_n;
  float threshold;
  int min_size;
  std::vector<float> scales;
  std::vector<float> ratios;
  int feature_stride;
  bool output_score;
  bool iou_loss;
};

bool parse_params(const Attrs& attrs, Params* p) {
  if (!check_attr_names(attrs, kOp,
                        {"rpn_pre_nms_top_n", "rpn_post_nms_top_n", "threshold", "rpn_min_size",
                         "scales", "ratios", "feature_stride", "output_score", "iou_loss"}))
    return false;
  if (!attr_int(attrs, kOp, "rpn_pre_nms_top_n", 6000, &p->pre_nms_top_n) ||
      !attr_int(attrs, kOp, "rpn_post_nms_top_n", 300, &p->post_nms_top_n) ||
      !attr_float(attrs, kOp, "threshold", 0.7f, &p->threshold) ||
      !attr_int(attrs, kOp, "rpn_min_size", 16, &p->min_size) ||
      !attr_float_tuple(attrs, kOp, "scales", {4.f, 8.f, 16.f, 32.f}, &p->scales) ||
      !attr_float_tuple(attrs, kOp, "ratios", {0.5f, 1.f, 2.f}, &p->ratios) ||
      !attr_int(attrs, kOp, "feature_stride", 16, &p->feature_stride) ||
      !attr_bool(attrs, kOp, "output_score", false, &p->output_score) ||
      !attr_bool(attrs, kOp, "iou_loss", false, &p->iou_loss))
    return false;
  if (p->post_nms_top_n <= 0) {
    DETOPS_ERROR << kOp << ": rpn_post_nms_top_n=" << p->post_nms_top_n << " must be positive";
    return false;
  }
  if (p->feature_stride <= 0) {
    DETOPS_ERROR << kOp << ": feature_stride=" << p->feature_stride << " must be positive";
    return false;
  }
  if (p->min_size < 0) {
    DETOPS_ERROR << kOp << ": rpn_min_size=" << p->min_size << " must not be negative";
    return false;
  }
  for (float s : p->scales) {
    if (!(s > 0)) {
      DETOPS_ERROR << kOp << ": scales must be positive, got " << s;
      return false;
    }
  }
  for (float r : p->ratios) {
    if (!(r > 0)) {
      DETOPS_ERROR << kOp << ": ratios must be positive, got " << r;
      return false;
    }
  }
  return true;
}

// MXNet's GenerateAnchors (ratio-major, scale-minor), same float/double arithmetic.
std::vector<float> base_anchors(const Params& p) {
  const float base[4] = {0.f, 0.f, p.feature_stride - 1.0f, p.feature_stride - 1.0f};
  std::vector<float> out;
  for (float ratio : p.ratios) {
    for (float scale : p.scales) {
      float w = base[2] - base[1] + 1.0f;
      float h = base[3] - base[1] + 1.0f;
      float x_ctr = base[0] + 0.5 * (w - 1.0f);
      float y_ctr = base[1] + 0.5 * (h - 1.0f);
      float size = w * h;
      float size_ratios = std::floor(size / ratio);
      float new_w = std::floor(std::sqrt(size_ratios) + 0.5f) * scale;
      float new_h = std::floor((new_w / scale * ratio) + 0.5f) * scale;
      out.push_back(x_ctr - 0.5f * (new_w - 1.0f));
      out.push_back(y_ctr - 0.5f * (new_h - 1.0f));
      out.push_back(x_ctr + 0.5f * (new_w - 1.0f));
      out.push_back(y_ctr + 0.5f * (new_h - 1.0f));
    }
  }
  return out;
}

// Ranking key: higher score first, then lower anchor index (MXNet's stable order).
struct ScoreIndex {
  float score;
  int index;
  bool operator<(const ScoreIndex& o) const {
    return score > o.score || (score == o.score && index < o.index);
  }
};

// Proposals of one image: decode, clip, filter, sort, NMS, write `post` rows.
void propose_image(const Params& p, const std::vector<float>& anchors, const float* cls,
                   const float* deltas, const float* info, int b, int A, int H, int W,
                   int pre_n, int post_n, int decode_threads, float* out_rois, float* out_scores) {
  const int count = A * H * W;
  const int HW = H * W;
  const int stride = p.feature_stride;
  const float im_h = info[0], im_w = info[1];
  const int real_h = static_cast<int>(im_h / stride);
  const int real_w = static_cast<int>(im_w / stride);
  const float min_size = p.min_size * info[2];
  // proposals (count, 5): x1, y1, x2, y2, score; index = (h * W + w) * A + a
  std::vector<float> props(static_cast<size_t>(count) * 5);
#pragma omp parallel for num_threads(decode_threads) schedule(static)
  for (int index = 0; index < count; ++index) {
    const int a = index % A;
    const int w = (index / A) % W;
    const int h = index / (W * A);
    float x1 = anchors[a * 4 + 0] + w * stride;
    float y1 = anchors[a * 4 + 1] + h * stride;
    float x2 = anchors[a * 4 + 2] + w * stride;
    float y2 = anchors[a * 4 + 3] + h * stride;
    float score = cls[static_cast<size_t>(A + a) * HW + h * W + w];
    const float d0 = deltas[static_cast<size_t>(a * 4 + 0) * HW + h * W + w];
    const float d1 = deltas[static_cast<size_t>(a * 4 + 1) * HW + h * W + w];
    const float d2 = deltas[static_cast<size_t>(a * 4 + 2) * HW + h * W + w];
    const float d3 = deltas[static_cast<size_t>(a * 4 + 3) * HW + h * W + w];
    float px1, py1, px2, py2;
    if (p.iou_loss) {
      px1 = x1 + d0;
      py1 = y1 + d1;
      px2 = x2 + d2;
      py2 = y2 + d3;
    } else {
      float width = x2 - x1 + 1.0;
      float height = y2 - y1 + 1.0;
      float ctr_x = x1 + 0.5 * (width - 1.0);
      float ctr_y = y1 + 0.5 * (height - 1.0);
      float pred_ctr_x = d0 * width + ctr_x;
      float pred_ctr_y = d1 * height + ctr_y;
      float pred_w = std::exp(d2) * width;
      float pred_h = std::exp(d3) * height;
      px1 = pred_ctr_x - 0.5 * (pred_w - 1.0);
      py1 = pred_ctr_y - 0.5 * (pred_h - 1.0);
      px2 = pred_ctr_x + 0.5 * (pred_w - 1.0);
      py2 = pred_ctr_y + 0.5 * (pred_h - 1.0);
    }
    px1 = std::max(std::min(px1, im_w - 1.0f), 0.0f);
    py1 = std::max(std::min(py1, im_h - 1.0f), 0.0f);
    px2 = std::max(std::min(px2, im_w - 1.0f), 0.0f);
    py2 = std::max(std::min(py2, im_h - 1.0f), 0.0f);
    if (h >= real_h || w >= real_w) score = -1.0f;
    // MXNet's FilterBox: too small -> grown by min_size / 2 per side and scored -1
    float iw = px2 - px1 + 1.0f;
    float ih = py2 - py1 + 1.0f;
    if (iw < min_size || ih < min_size) {
      px1 -= min_size / 2;
      py1 -= min_size / 2;
      px2 += min_size / 2;
      py2 += min_size / 2;
      score = -1.0f;
    }
    float* o = &props[static_cast<size_t>(index) * 5];
    o[0] = px1;
    o[1] = py1;
    o[2] = px2;
    o[3] = py2;
    o[4] = score;
  }

  // MXNet 1.9.1 orders by score descending, ties by anchor index (a stable sort). That is a
  // strict total order, so selecting the best pre_n first and sorting only those gives the same
  // sequence. NaN scores are ranked last (MXNet's order for them is undefined).
  std::vector<ScoreIndex> order(count);
  for (int i = 0; i < count; ++i) {
    const float s = props[static_cast<size_t>(i) * 5 + 4];
    order[i] = {std::isnan(s) ? -std::numeric_limits<float>::infinity() : s, i};
  }
  if (pre_n < count) std::nth_element(order.begin(), order.begin() + pre_n, order.end());
  std::sort(order.begin(), order.begin() + pre_n);

  // Top pre_n boxes, structure of arrays for the vectorised NMS loop.
  std::vector<float> x1(pre_n), y1(pre_n), x2(pre_n), y2(pre_n), sc(pre_n), area(pre_n);
  for (int i = 0; i < pre_n; ++i) {
    const float* o = &props[static_cast<size_t>(order[i].index) * 5];
    x1[i] = o[0];
    y1[i] = o[1];
    x2[i] = o[2];
    y2[i] = o[3];
    sc[i] = o[4];
    area[i] = (o[2] - o[0] + 1) * (o[3] - o[1] + 1);
  }
  std::vector<uint8_t> suppressed(pre_n, 0);
  std::vector<int> keep;
  keep.reserve(post_n);
  const float thresh = p.threshold;
  for (int i = 0; i < pre_n && static_cast<int>(keep.size()) < post_n; ++i) {
    if (suppressed[i]) continue;
    keep.push_back(i);
    const float ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
    uint8_t* sup = suppressed.data();
    const float* X1 = x1.data();
    const float* Y1 = y1.data();
    const float* X2 = x2.data();
    const float* Y2 = y2.data();
    const float* AR = area.data();
    for (int j = i + 1; j < pre_n; ++j) {
      const float xx1 = std::max(ix1, X1[j]);
      const float yy1 = std::max(iy1, Y1[j]);
      const float xx2 = std::min(ix2, X2[j]);
      const float yy2 = std::min(iy2, Y2[j]);
      const float w = std::max(0.0f, xx2 - xx1 + 1.0f);
      const float h = std::max(0.0f, yy2 - yy1 + 1.0f);
      const float inter = w * h;
      const float ovr = inter / (iarea + AR[j] - inter);
      sup[j] |= static_cast<uint8_t>(ovr > thresh);
    }
  }

  const int kept = static_cast<int>(keep.size());
  for (int i = 0; i < p.post_nms_top_n; ++i) {
    const int k = keep[i < kept ? i : i % kept];
    float* o = out_rois + (static_cast<size_t>(b) * p.post_nms_top_n + i) * 5;
    o[0] = static_cast<float>(b);
    o[1] = x1[k];
    o[2] = y1[k];
    o[3] = x2[k];
    o[4] = y2[k];
    if (out_scores) out_scores[static_cast<size_t>(b) * p.post_nms_top_n + i] = sc[k];
  }
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  *num_in = 3;
  *num_out = p.output_score ? 2 : 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return infer_same_float_type(kOp, {"cls_prob", "bbox_pred", "im_info"}, false, in_types,
                               out_types)
             ? MX_SUCCESS
             : MX_FAIL;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const auto& cls = (*in_shapes)[0];
  const auto& box = (*in_shapes)[1];
  const auto& info = (*in_shapes)[2];
  const unsigned A = static_cast<unsigned>(p.scales.size() * p.ratios.size());
  if (cls.size() != 4 || cls[1] != 2 * A) {
    DETOPS_ERROR << kOp << ": cls_prob must be 4-D (N, 2 * A, H, W) with A = len(scales) * "
                 << "len(ratios) = " << A << " anchors, got shape " << shape_str(cls);
    return MX_FAIL;
  }
  if (box.size() != 4 || box[0] != cls[0] || box[1] != 4 * A || box[2] != cls[2] ||
      box[3] != cls[3]) {
    DETOPS_ERROR << kOp << ": bbox_pred must be (N, 4 * A, H, W) = "
                 << shape_str({cls[0], 4 * A, cls[2], cls[3]}) << ", got shape " << shape_str(box);
    return MX_FAIL;
  }
  if (info.size() != 2 || info[0] != cls[0] || info[1] != 3) {
    DETOPS_ERROR << kOp << ": im_info must be (N, 3) = " << shape_str({cls[0], 3u})
                 << " rows of [height, width, scale], got shape " << shape_str(info);
    return MX_FAIL;
  }
  if (cls[0] == 0 || cls[2] == 0 || cls[3] == 0) {
    DETOPS_ERROR << kOp << ": cls_prob " << shape_str(cls) << " is empty";
    return MX_FAIL;
  }
  const unsigned rows = cls[0] * static_cast<unsigned>(p.post_nms_top_n);
  (*out_shapes)[0] = {rows, 5u};
  if (p.output_score) (*out_shapes)[1] = {rows, 1u};
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  MXTensor& cls = (*inputs)[0];
  MXTensor& box = (*inputs)[1];
  MXTensor& info = (*inputs)[2];
  const int N = cls.shape[0], A = cls.shape[1] / 2, H = cls.shape[2], W = cls.shape[3];
  const int count = A * H * W;
  int pre_n = p.pre_nms_top_n > 0 ? p.pre_nms_top_n : count;
  pre_n = std::min(pre_n, count);
  const int post_n = std::min(p.post_nms_top_n, pre_n);
  const float* info_ptr = info.data<float>();
  for (int b = 0; b < N; ++b) {
    const float* row = info_ptr + b * 3;
    if (!(std::isfinite(row[0]) && std::isfinite(row[1]) && std::isfinite(row[2]) &&
          row[0] > 0 && row[1] > 0 && row[2] > 0)) {
      DETOPS_ERROR << kOp << ": im_info[" << b << "] = [" << row[0] << ", " << row[1] << ", "
                   << row[2] << "] must be positive [height, width, scale]";
      return MX_FAIL;
    }
    const int real_h = static_cast<int>(row[0] / p.feature_stride);
    const int real_w = static_cast<int>(row[1] / p.feature_stride);
    if (real_h > H || real_w > W) {
      DETOPS_ERROR << kOp << ": im_info[" << b << "] image " << row[0] << "x" << row[1]
                   << " / feature_stride " << p.feature_stride << " = " << real_h << "x"
                   << real_w << " cells exceeds the score map " << H << "x" << W;
      return MX_FAIL;
    }
  }
  const std::vector<float> anchors = base_anchors(p);
  const float* cls_ptr = cls.data<float>();
  const float* box_ptr = box.data<float>();
  float* rois = (*outputs)[0].data<float>();
  float* scores = p.output_score ? (*outputs)[1].data<float>() : nullptr;
  const size_t cls_step = static_cast<size_t>(2) * count;
  const size_t box_step = static_cast<size_t>(4) * count;
  const int threads = num_threads();
  if (N == 1 || threads == 1) {
    // Decoding is ~20 flops per anchor: threads only pay off for very large maps.
    const int decode_threads = count >= (1 << 17) ? threads : 1;
    for (int b = 0; b < N; ++b)
      propose_image(p, anchors, cls_ptr + b * cls_step, box_ptr + b * box_step, info_ptr + b * 3,
                    b, A, H, W, pre_n, post_n, decode_threads, rois, scores);
  } else {
#pragma omp parallel for num_threads(std::min(threads, N)) schedule(dynamic, 1)
    for (int b = 0; b < N; ++b)
      propose_image(p, anchors, cls_ptr + b * cls_step, box_ptr + b * box_step, info_ptr + b * 3,
                    b, A, H, W, pre_n, post_n, 1, rois, scores);
  }
  return MX_SUCCESS;
}

// Proposals are not differentiable: every input gradient is zero (as in MXNet).
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  zero_outputs(outputs);
  return MX_SUCCESS;
}

}  // namespace
}  // namespace detops

DETOPS_REGISTER_CPU_OP(detops_multi_proposal);
