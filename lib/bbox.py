"""Box utilities in the project convention: corner boxes ``[x1, y1, x2, y2]``, x2/y2 exclusive,
width = x2 - x1, IoU without ``+1`` (see docs/DESIGN.md, "Box convention").

- ``box_iou`` (compiled, float32/float64) and its numpy reference ``box_iou_np``;
- one box coder for R-CNN deltas, SSD centre-size offsets with variances and TF-OD scales:
  ``encode_boxes`` / ``decode_boxes`` (numpy) and ``decode_boxes_F`` / ``encode_boxes_F`` for
  mx.nd / mx.sym graphs. ``offset=1`` selects MXNet's +1 width convention (MultiProposal);
- ``clip_boxes`` and ``filter_small``.
"""
import math

import numpy as np

from lib import _cbbox

DEFAULT_CLIP_LOG = math.log(1000.0 / 16)


def _as_boxes(boxes, name):
    arr = np.asarray(boxes)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError("%s must have shape (N, 4), got %s" % (name, arr.shape))
    return arr


def box_iou(boxes_a, boxes_b):
    """IoU matrix (N, M) of two sets of corner boxes, computed by the compiled kernel.

    float32 inputs give float32 IoU; anything else is computed in float64. A pair whose union is
    empty (zero-area boxes) has IoU 0.
    """
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
    dtype = np.float32 if a.dtype == np.float32 and b.dtype == np.float32 else np.float64
    return _cbbox.box_iou(np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype))


def box_iou_np(boxes_a, boxes_b):
    """Plain numpy reference of :func:`box_iou` (same dtype rules, same arithmetic order)."""
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
    dtype = np.float32 if a.dtype == np.float32 and b.dtype == np.float32 else np.float64
    a = a.astype(dtype, copy=False)
    b = b.astype(dtype, copy=False)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, dtype(0))
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(overlap & (union > 0), inter / union, dtype(0))
    return iou.astype(dtype, copy=False)


def _corner_to_centre(boxes, offset):
    widths = boxes[..., 2] - boxes[..., 0] + offset
    heights = boxes[..., 3] - boxes[..., 1] + offset
    # (x1 + x2) / 2 is the centre in both conventions: x1 + 0.5 * (w - offset).
    cx = boxes[..., 0] + 0.5 * (widths - offset)
    cy = boxes[..., 1] + 0.5 * (heights - offset)
    return cx, cy, widths, heights


def _check_coder_args(stds, means):
    stds = np.asarray(stds, dtype=np.float64).reshape(-1)
    if stds.shape == (2,):  # SSD-style variances (centre, size)
        stds = stds[[0, 0, 1, 1]]
    means = np.asarray(means, dtype=np.float64).reshape(-1)
    if stds.shape != (4,) or means.shape != (4,):
        raise ValueError("stds must have 4 values (or 2 SSD variances) and means 4, got %s and %s"
                         % (stds.tolist(), means.tolist()))
    if np.any(stds == 0):
        raise ValueError("stds must be non-zero, got %s" % stds.tolist())
    return stds, means


def encode_boxes(gt, anchors, stds=(1.0, 1.0, 1.0, 1.0), means=(0.0, 0.0, 0.0, 0.0), offset=0):
    """Regression targets of ``gt`` relative to ``anchors`` (both (N,4) corners, row-aligned).

    t = ((gcx - acx) / aw, (gcy - acy) / ah, log(gw / aw), log(gh / ah)), returned as
    (t - means) / stds. R-CNN stds (0.1, 0.1, 0.2, 0.2) equal SSD variances (0.1, 0.1, 0.2, 0.2);
    TF-OD scales (10, 10, 5, 5) are 1 / stds; two values (v_centre, v_size) mean
    (v_centre, v_centre, v_size, v_size). ``offset=1``: widths are x2 - x1 + 1 (MXNet).
    The result has the dtype of ``gt`` if floating, else float32.
    """
    gt = _as_boxes(gt, "gt")
    anchors = _as_boxes(anchors, "anchors")
    if gt.shape[0] != anchors.shape[0]:
        raise ValueError("gt and anchors must be row-aligned, got %d and %d rows"
                         % (gt.shape[0], anchors.shape[0]))
    stds, means = _check_coder_args(stds, means)
    out_dtype = gt.dtype if np.issubdtype(gt.dtype, np.floating) else np.float32
    g = gt.astype(np.float64)
    a = anchors.astype(np.float64)
    gcx, gcy, gw, gh = _corner_to_centre(g, offset)
    acx, acy, aw, ah = _corner_to_centre(a, offset)
    if np.any(aw <= 0) or np.any(ah <= 0) or np.any(gw <= 0) or np.any(gh <= 0):
        raise ValueError("encode_boxes needs boxes with positive width and height (offset=%d)" % offset)
    targets = np.stack([(gcx - acx) / aw, (gcy - acy) / ah, np.log(gw / aw), np.log(gh / ah)], axis=1)
    return ((targets - means) / stds).astype(out_dtype)


def decode_boxes(deltas, anchors, stds=(1.0, 1.0, 1.0, 1.0), means=(0.0, 0.0, 0.0, 0.0), offset=0,
                 clip_log=DEFAULT_CLIP_LOG):
    """Inverse of :func:`encode_boxes`: boxes (N,4) from deltas (N,4) and anchors (N,4).

    dw, dh are clipped at ``clip_log`` (None: no clipping) so exp() cannot overflow. With
    ``offset=1`` the result follows MXNet's convention (x2 = cx + 0.5 * (w - 1)), exactly as
    MultiProposal decodes.
    """
    deltas = _as_boxes(deltas, "deltas")
    anchors = _as_boxes(anchors, "anchors")
    if deltas.shape[0] != anchors.shape[0]:
        raise ValueError("deltas and anchors must be row-aligned, got %d and %d rows"
                         % (deltas.shape[0], anchors.shape[0]))
    stds, means = _check_coder_args(stds, means)
    out_dtype = deltas.dtype if np.issubdtype(deltas.dtype, np.floating) else np.float32
    d = deltas.astype(np.float64) * stds + means
    acx, acy, aw, ah = _corner_to_centre(anchors.astype(np.float64), offset)
    dw, dh = d[:, 2], d[:, 3]
    if clip_log is not None:
        dw = np.minimum(dw, clip_log)
        dh = np.minimum(dh, clip_log)
    cx = d[:, 0] * aw + acx
    cy = d[:, 1] * ah + acy
    half_w = 0.5 * (np.exp(dw) * aw - offset)
    half_h = 0.5 * (np.exp(dh) * ah - offset)
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(out_dtype)


def decode_boxes_F(F, deltas, anchors, stds=(1.0, 1.0, 1.0, 1.0), means=(0.0, 0.0, 0.0, 0.0),
                   offset=0, clip_log=DEFAULT_CLIP_LOG):
    """Graph version of :func:`decode_boxes` for ``F`` = mx.nd or mx.sym.

    deltas (B,P,4), anchors (1,P,4) (broadcast over the batch) -> boxes (B,P,4).
    """
    stds, means = _check_coder_args(stds, means)
    parts = F.split(deltas, num_outputs=4, axis=-1)
    dx, dy, dw, dh = [parts[k] * float(stds[k]) + float(means[k]) for k in range(4)]
    ax1, ay1, ax2, ay2 = F.split(anchors, num_outputs=4, axis=-1)
    aw = ax2 - ax1 + offset
    ah = ay2 - ay1 + offset
    acx = ax1 + 0.5 * (aw - offset)
    acy = ay1 + 0.5 * (ah - offset)
    if clip_log is not None:
        dw = F.minimum(dw, float(clip_log))
        dh = F.minimum(dh, float(clip_log))
    cx = F.broadcast_add(F.broadcast_mul(dx, aw), acx)
    cy = F.broadcast_add(F.broadcast_mul(dy, ah), acy)
    half_w = 0.5 * (F.broadcast_mul(F.exp(dw), aw) - offset)
    half_h = 0.5 * (F.broadcast_mul(F.exp(dh), ah) - offset)
    return F.concat(cx - half_w, cy - half_h, cx + half_w, cy + half_h, dim=-1)


def encode_boxes_F(F, gt, anchors, stds=(1.0, 1.0, 1.0, 1.0), means=(0.0, 0.0, 0.0, 0.0), offset=0):
    """Graph version of :func:`encode_boxes`: gt (B,P,4), anchors (1,P,4) or (B,P,4) -> (B,P,4)."""
    stds, means = _check_coder_args(stds, means)
    gx1, gy1, gx2, gy2 = F.split(gt, num_outputs=4, axis=-1)
    ax1, ay1, ax2, ay2 = F.split(anchors, num_outputs=4, axis=-1)
    gw = gx2 - gx1 + offset
    gh = gy2 - gy1 + offset
    aw = ax2 - ax1 + offset
    ah = ay2 - ay1 + offset
    gcx = gx1 + 0.5 * (gw - offset)
    gcy = gy1 + 0.5 * (gh - offset)
    acx = ax1 + 0.5 * (aw - offset)
    acy = ay1 + 0.5 * (ah - offset)
    tx = F.broadcast_div(F.broadcast_sub(gcx, acx), aw)
    ty = F.broadcast_div(F.broadcast_sub(gcy, acy), ah)
    tw = F.log(F.broadcast_div(gw, aw))
    th = F.log(F.broadcast_div(gh, ah))
    return F.concat(*[(t - float(means[k])) / float(stds[k]) for k, t in enumerate((tx, ty, tw, th))],
                    dim=-1)


def clip_boxes(boxes, width, height):
    """Clip corner boxes (..., 4) to the image ``[0, width] x [0, height]`` (returns a new array)."""
    boxes = np.asarray(boxes)
    if boxes.shape[-1] != 4:
        raise ValueError("clip_boxes expects (..., 4) boxes, got %s" % (boxes.shape,))
    out = boxes.copy()
    out[..., 0::2] = np.clip(out[..., 0::2], 0, width)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, height)
    return out


def filter_small(boxes, min_size):
    """Indices (int64) of boxes whose width and height are both >= ``min_size``."""
    boxes = _as_boxes(boxes, "boxes")
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return np.flatnonzero((widths >= min_size) & (heights >= min_size)).astype(np.int64)
