"""Training-target assignment: SSD anchor matching, RPN anchor targets, R-CNN RoI sampling.

All boxes are corner boxes in one coordinate system per call (pixels or normalised). Sampling takes an
``rng`` (np.random.RandomState); None uses a fresh unseeded one.
"""
import numpy as np

from lib.bbox import box_iou, encode_boxes

BACKGROUND = -1
IGNORED = -2


def _boxes(arr, name):
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError("%s must have shape (N, 4), got %s" % (name, arr.shape))
    return arr


def _rng(rng):
    return rng if rng is not None else np.random.RandomState()


def match_anchors(gt, anchors, pos_iou=0.5, neg_iou=None):
    """Assign each anchor to a gt box (SSD / TF-OD argmax matcher with forced matches).

    Returns (P,) int64: the matched gt index, -1 background (IoU < neg_iou, or < pos_iou when
    neg_iou is None), -2 ignored (neg_iou <= IoU < pos_iou). Then every gt is forced onto its
    best-IoU anchor (lowest anchor index on ties; a later gt wins an anchor claimed by two), unless
    its best IoU is 0 (a degenerate box cannot be matched meaningfully). No gt: all background.
    """
    gt = _boxes(gt, "gt")
    anchors = _boxes(anchors, "anchors")
    matches = np.full(len(anchors), BACKGROUND, dtype=np.int64)
    if len(gt) == 0 or len(anchors) == 0:
        return matches
    iou = box_iou(anchors, gt)  # (P, G)
    best_gt = iou.argmax(axis=1)
    best_iou = iou[np.arange(len(anchors)), best_gt]
    positive = best_iou >= pos_iou
    matches[positive] = best_gt[positive]
    if neg_iou is not None:
        matches[(best_iou >= neg_iou) & ~positive] = IGNORED
    best_anchor = iou.argmax(axis=0)
    for g, a in enumerate(best_anchor):
        if iou[a, g] > 0:
            matches[a] = g
    return matches


def ssd_targets(gt, labels, anchors, pos_iou=0.5, stds=(0.1, 0.1, 0.2, 0.2), neg_iou=None):
    """SSD classification and box targets for one image.

    gt (G,4), labels (G,) 0-based foreground classes, anchors (P,4) in the same coordinates.
    Returns cls (P,) int64 with 0 = background, k + 1 = class k, -1 = ignored (only when neg_iou
    is given), and box (P,4) float32 encoded with ``stds`` (zeros where not positive).
    """
    gt = _boxes(gt, "gt")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != gt.shape[0]:
        raise ValueError("ssd_targets: %d gt boxes but %d labels" % (gt.shape[0], labels.shape[0]))
    if np.any(labels < 0):
        raise ValueError("ssd_targets: labels must be 0-based foreground classes, got %s" % labels[labels < 0])
    anchors = _boxes(anchors, "anchors")
    matches = match_anchors(gt, anchors, pos_iou, neg_iou)
    cls = np.zeros(len(anchors), dtype=np.int64)
    positive = matches >= 0
    cls[positive] = labels[matches[positive]] + 1
    cls[matches == IGNORED] = -1
    box = np.zeros((len(anchors), 4), dtype=np.float32)
    if positive.any():
        box[positive] = encode_boxes(gt[matches[positive]], anchors[positive], stds=stds)
    return cls, box


def _subsample(indices, keep, rng):
    """Randomly choose ``keep`` of ``indices`` (all if fewer), returned sorted."""
    if len(indices) <= keep:
        return indices
    return np.sort(rng.choice(indices, size=keep, replace=False))


def rpn_targets(anchors, gt, im_hw, pos_iou=0.7, neg_iou=0.3, batch_size=256, fg_fraction=0.5,
                allowed_border=0, stds=(1.0, 1.0, 1.0, 1.0), rng=None, offset=1):
    """Faster R-CNN RPN targets for one image (as the reference ``assign_anchor``).

    anchors (P,4) from ``lib.anchors.shift_anchors`` (MXNet +1 convention when ``offset=1``: x2/y2
    inclusive); gt (G,4) in the project convention (x2/y2 exclusive); im_hw = (height, width).
    Only anchors inside the image are labelled: x1, y1 >= -allowed_border and x2 < width +
    allowed_border, y2 < height + allowed_border (``<=`` for exclusive anchors, offset=0).
    Positive: IoU >= pos_iou, or the best anchor of a gt (all anchors tying that best IoU; a gt
    overlapping no inside anchor marks nothing, where the reference would mark every IoU-0
    anchor); negative: max IoU < neg_iou; then at most fg_fraction * batch_size positives and
    batch_size - #positives negatives are sampled.
    Returns labels (P,) int64 {1, 0, -1 ignore}, targets (P,4) float32 (encoded with ``stds``,
    in the +1 convention when offset=1, zeros where not positive), weights (P,4) float32 (1 on
    positives).
    """
    anchors = _boxes(anchors, "anchors")
    gt = _boxes(gt, "gt")
    rng = _rng(rng)
    height, width = float(im_hw[0]), float(im_hw[1])
    # The project convention (exclusive corners) for IoU and encoding: with +1 anchors that is x2 + 1;
    # encoding exclusive boxes without +1 equals encoding inclusive ones with +1.
    anchors_excl = anchors.copy()
    anchors_excl[:, 2:] += offset
    num = len(anchors)
    labels = np.full(num, -1, dtype=np.int64)
    targets = np.zeros((num, 4), dtype=np.float32)
    weights = np.zeros((num, 4), dtype=np.float32)
    if offset:  # inclusive corners: the last pixel must be < width (the reference test)
        right_ok = (anchors[:, 2] < width + allowed_border) & (anchors[:, 3] < height + allowed_border)
    else:
        right_ok = (anchors[:, 2] <= width + allowed_border) & (anchors[:, 3] <= height + allowed_border)
    inside = np.flatnonzero((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border) & right_ok)
    if len(inside) == 0:
        return labels, targets, weights
    inside_labels = np.full(len(inside), -1, dtype=np.int64)
    if len(gt):
        iou = box_iou(anchors_excl[inside], gt)  # (I, G)
        argmax = iou.argmax(axis=1)
        max_iou = iou[np.arange(len(inside)), argmax]
        inside_labels[max_iou < neg_iou] = 0
        gt_best = iou.max(axis=0)
        # Every anchor tying a gt's best IoU is positive (gts overlapping no inside anchor are skipped).
        best_for_gt = np.flatnonzero(((iou == gt_best[None, :]) & (gt_best[None, :] > 0)).any(axis=1))
        inside_labels[best_for_gt] = 1
        inside_labels[max_iou >= pos_iou] = 1
    else:
        argmax = np.zeros(len(inside), dtype=np.int64)
        inside_labels[:] = 0
    fg = np.flatnonzero(inside_labels == 1)
    num_fg = int(fg_fraction * batch_size)
    if len(fg) > num_fg:
        inside_labels[np.setdiff1d(fg, _subsample(fg, num_fg, rng))] = -1
    bg = np.flatnonzero(inside_labels == 0)
    num_bg = batch_size - int(np.sum(inside_labels == 1))
    if len(bg) > num_bg:
        inside_labels[np.setdiff1d(bg, _subsample(bg, num_bg, rng))] = -1
    labels[inside] = inside_labels
    positive = inside[inside_labels == 1]
    if len(positive):
        targets[positive] = encode_boxes(gt[argmax[inside_labels == 1]], anchors_excl[positive], stds=stds)
        weights[positive] = 1.0
    return labels, targets, weights


def sample_rois(rois, gt, gt_labels, batch_size=-1, fg_fraction=0.25, fg_iou=0.5, bg_iou=(0.0, 0.5),
                stds=(0.1, 0.1, 0.2, 0.2), rng=None):
    """R-CNN proposal sampling for one image (as the reference ``sample_rois``).

    The gt boxes are appended to the proposals. Foreground: max IoU >= fg_iou; background:
    bg_iou[0] <= max IoU < bg_iou[1]. ``batch_size=-1`` keeps every foreground and background RoI;
    otherwise round(fg_fraction * batch_size) foregrounds at most, background fills the rest, and if
    still short the batch is padded (with replacement) from the remaining low-IoU RoIs, else from
    the foregrounds. Returns rois (K,4) float32, labels (K,) int64 (0 = background, k + 1 = class
    k), targets (K,4) float32 (class-agnostic, encoded with ``stds``), weights (K,4) float32
    (1 on foregrounds), foregrounds first.
    """
    rois = _boxes(rois, "rois")
    gt = _boxes(gt, "gt")
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    if gt_labels.shape[0] != gt.shape[0]:
        raise ValueError("sample_rois: %d gt boxes but %d labels" % (gt.shape[0], gt_labels.shape[0]))
    rng = _rng(rng)
    all_rois = np.concatenate([rois, gt])
    if len(gt):
        iou = box_iou(all_rois, gt)
        assignment = iou.argmax(axis=1)
        max_iou = iou[np.arange(len(all_rois)), assignment]
    else:
        assignment = np.zeros(len(all_rois), dtype=np.int64)
        max_iou = np.zeros(len(all_rois))
    fg = np.flatnonzero(max_iou >= fg_iou) if len(gt) else np.zeros(0, dtype=np.int64)
    bg = np.flatnonzero((max_iou < bg_iou[1]) & (max_iou >= bg_iou[0]))
    if batch_size is None or batch_size < 0:
        fg_keep, bg_keep = fg, bg
    else:
        fg_keep = _subsample(fg, min(int(round(fg_fraction * batch_size)), len(fg)), rng)
        bg_keep = _subsample(bg, min(batch_size - len(fg_keep), len(bg)), rng)
        missing = batch_size - len(fg_keep) - len(bg_keep)
        if missing > 0:
            low = np.flatnonzero(max_iou < fg_iou)
            pool, pad_is_fg = (low, False) if len(low) else (fg, True)
            pad = rng.choice(pool, size=missing, replace=True) if len(pool) else np.zeros(0, dtype=np.int64)
            if pad_is_fg:
                fg_keep = np.concatenate([fg_keep, pad])
            else:
                bg_keep = np.concatenate([bg_keep, pad])
    keep = np.concatenate([fg_keep, bg_keep]).astype(np.int64)
    labels = np.zeros(len(keep), dtype=np.int64)
    labels[:len(fg_keep)] = gt_labels[assignment[fg_keep]] + 1
    targets = np.zeros((len(keep), 4), dtype=np.float32)
    weights = np.zeros((len(keep), 4), dtype=np.float32)
    if len(fg_keep):
        targets[:len(fg_keep)] = encode_boxes(gt[assignment[fg_keep]], all_rois[fg_keep], stds=stds)
        weights[:len(fg_keep)] = 1.0
    return all_rois[keep].astype(np.float32), labels, targets, weights
