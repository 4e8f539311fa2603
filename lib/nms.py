"""Non-maximum suppression in the project box convention (x2/y2 exclusive, IoU without +1).

- ``nms``: greedy hard NMS (compiled, ``lib/_cnms.pyx``); ``nms_np`` is its numpy reference.
  A box is suppressed when its IoU with a kept, higher-scored box is strictly greater than the
  threshold (as ``mx.nd.contrib.box_nms`` and torchvision). Ties in score keep the lower index first.
- ``batched_nms``: class-aware NMS (boxes of different labels never suppress each other).
- ``soft_nms`` (linear / gaussian, compiled; ``soft_nms_np`` reference) and ``multiclass_nms``.
- ``seq_nms``: Seq-NMS over the frames of one video (Han et al. 2016, as used by FGFA), path loop
  compiled (``seq_nms_np`` is the numpy reference); ``seq_nms_videos`` groups frames of many
  videos given in any order.
"""
import numpy as np

from lib import _cnms
from lib.bbox import box_iou, box_iou_np


def _as_dets(dets, name="dets"):
    arr = np.asarray(dets)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 5)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError("%s must have shape (N, 5) [x1, y1, x2, y2, score], got %s" % (name, arr.shape))
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if np.isnan(arr).any():
        raise ValueError("%s contains NaN (rows %s)" % (name, np.flatnonzero(np.isnan(arr).any(axis=1))[:10].tolist()))
    return arr


def _score_order(scores):
    """Indices by decreasing score; equal scores keep increasing index (stable sort)."""
    return np.argsort(-scores, kind="stable").astype(np.int64)


_ALGORITHMS = {"auto": -1, "plain": 0, "grid": 1}


def nms(dets, iou_threshold, max_output=None, algorithm="auto"):
    """Greedy hard NMS of (N,5) ``[x1, y1, x2, y2, score]``.

    Returns the kept row indices (int64), highest score first. ``max_output`` stops early after
    that many kept boxes (None: no limit). ``algorithm``: 'plain' tests each kept box against all
    remaining ones; 'grid' tests each box only against kept boxes whose centres lie close enough
    to matter (registered in a grid of cells; threshold must be > 0); 'auto' picks the grid for
    64+ boxes and thresholds >= 0.1. All give identical results.
    """
    if algorithm not in _ALGORITHMS:
        raise ValueError("nms algorithm must be one of %s, got %r" % (sorted(_ALGORITHMS), algorithm))
    dets = _as_dets(dets)
    order = _score_order(dets[:, 4])
    boxes = np.ascontiguousarray(dets[:, :4])
    return _cnms.nms_sorted(boxes, order, float(iou_threshold), -1 if max_output is None else int(max_output),
                            _ALGORITHMS[algorithm])


def nms_np(dets, iou_threshold, max_output=None):
    """Numpy reference of :func:`nms` (same arithmetic, same tie rule)."""
    dets = _as_dets(dets)
    order = _score_order(dets[:, 4])
    dtype = dets.dtype.type
    thr = dtype(iou_threshold)
    x1, y1, x2, y2 = (dets[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        if max_output is not None and len(keep) >= max_output:
            break
        rest = np.arange(i + 1, len(order))[alive[i + 1:]]
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        overlap = (iw > 0) & (ih > 0)
        inter = np.where(overlap, iw * ih, dtype(0))
        union = areas[i] + areas[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            suppressed = overlap & (union > 0) & (inter / union > thr)
        alive[rest[suppressed]] = False
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes, scores, labels, iou_threshold, max_output=None):
    """Class-aware hard NMS: only boxes with equal labels suppress each other.

    boxes (N,4), scores (N,), labels (N,) ints. Returns kept indices (int64) sorted by decreasing
    score (ties: lower index first); ``max_output`` keeps at most that many per label.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    labels = np.asarray(labels).reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],) \
            or labels.shape != (boxes.shape[0],):
        raise ValueError("batched_nms expects boxes (N,4), scores (N,), labels (N,); got %s, %s, %s"
                         % (boxes.shape, scores.shape, labels.shape))
    dtype = np.float32 if boxes.dtype == np.float32 and scores.dtype == np.float32 else np.float64
    dets = np.concatenate([boxes, scores[:, None]], axis=1).astype(dtype)
    kept = [idx[nms(dets[idx], iou_threshold, max_output)] for idx in
            (np.flatnonzero(labels == label) for label in np.unique(labels))]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    kept = np.sort(np.concatenate(kept))  # ascending index, so the stable sort breaks ties by index
    return kept[np.argsort(-dets[kept, 4], kind="stable")].astype(np.int64)


def vote_merge(boxes, scores, labels, pass_ids, num_passes, iou_threshold, max_output=None):
    """Merges the detections of several passes over one image (test-time augmentation) by voting.

    Class-aware hard NMS picks the clusters; a kept box's score becomes the mean over the
    ``num_passes`` passes of each pass's best score among the same-label detections at IoU >=
    ``iou_threshold`` with it (0 for a pass without one), and its box the score-weighted mean of those
    detections. So an object every pass finds keeps its score, while a false positive of one pass is
    divided by the number of passes (plain NMS of the union keeps every pass's false positives at
    full score). ``pass_ids`` (N,) ints in [0, num_passes). Returns (boxes, scores, labels) sorted by
    decreasing fused score; ``max_output``: at most that many per label (before fusion).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    pass_ids = np.asarray(pass_ids).reshape(-1)
    keep = batched_nms(boxes, scores, labels, iou_threshold, max_output)
    member = (box_iou_np(boxes[keep], boxes) >= iou_threshold) & (labels[keep][:, None] == labels[None, :])
    member[np.arange(len(keep)), keep] = True       # a zero-area box still votes for itself
    weighted = np.where(member, scores[None, :], 0.0)
    fused_scores = sum(weighted[:, pass_ids == p].max(axis=1, initial=0.0) for p in range(num_passes)) / num_passes
    total = weighted.sum(axis=1, keepdims=True)
    fused_boxes = np.where(total > 0, weighted @ boxes / np.where(total > 0, total, 1.0), boxes[keep])
    order = np.argsort(-fused_scores, kind="stable")
    return fused_boxes[order], fused_scores[order], labels[keep][order]


def _check_soft_args(method, sigma, iou_threshold):
    if method not in ("linear", "gaussian"):
        raise ValueError("soft_nms method must be 'linear' or 'gaussian', got %r" % (method,))
    if method == "gaussian" and not sigma > 0:
        raise ValueError("soft_nms sigma must be > 0, got %r" % (sigma,))
    if not 0 <= iou_threshold <= 1:
        raise ValueError("soft_nms iou_threshold must be in [0, 1], got %r" % (iou_threshold,))


def soft_nms(dets, method="linear", sigma=0.5, iou_threshold=0.3, score_threshold=0.001):
    """Soft-NMS (Bodla et al. 2017). Boxes scoring below ``score_threshold`` from the start are dropped.

    linear: a box overlapping the selected one with IoU > iou_threshold has its score multiplied by
    (1 - IoU); gaussian: every box is multiplied by exp(-IoU^2 / sigma). Boxes falling below
    score_threshold are removed. Returns ``(dets (K,5) with decayed scores, kept (K,) int64 row
    indices)`` in selection order (ties: lower index first).
    """
    _check_soft_args(method, sigma, iou_threshold)
    dets = _as_dets(dets)
    candidates = np.flatnonzero(dets[:, 4] >= score_threshold)
    kept, new_scores = _cnms.soft_nms(np.ascontiguousarray(dets[candidates], dtype=np.float64),
                                      int(method == "gaussian"), float(sigma), float(iou_threshold),
                                      float(score_threshold))
    kept = candidates[kept].astype(np.int64)
    out = dets[kept].copy()
    out[:, 4] = new_scores
    return out, kept


def soft_nms_np(dets, method="linear", sigma=0.5, iou_threshold=0.3, score_threshold=0.001):
    """Numpy reference of :func:`soft_nms`."""
    _check_soft_args(method, sigma, iou_threshold)
    dets = _as_dets(dets)
    boxes = dets[:, :4].astype(np.float64)
    scores = dets[:, 4].astype(np.float64).copy()
    active = list(np.flatnonzero(scores >= score_threshold))
    kept, kept_scores = [], []
    while active:
        best = max(active, key=lambda i: (scores[i], -i))
        kept.append(best)
        kept_scores.append(scores[best])
        active.remove(best)
        if not active:
            break
        rest = np.asarray(active)
        iou = box_iou_np(boxes[best:best + 1], boxes[rest])[0]
        if method == "gaussian":
            weight = np.exp(-(iou * iou) / sigma)
        else:
            weight = np.where(iou > iou_threshold, 1.0 - iou, 1.0)
        scores[rest] = scores[rest] * weight
        active = [i for i in active if scores[i] >= score_threshold]
    kept = np.asarray(kept, dtype=np.int64)
    out = dets[kept].copy()
    out[:, 4] = kept_scores
    return out, kept


def multiclass_nms(boxes, scores, score_threshold=0.05, iou_threshold=0.5, max_per_class=None,
                   max_total=None, method="hard", sigma=0.5, pre_nms_top_k=None):
    """Per-class NMS of a detector's output for one image.

    boxes: (P,4) shared by all classes or (P,C,4) per class; scores: (P,C) foreground classes only
    (drop a softmax background column first). score_threshold: scalar or (C,) per class.
    method: 'hard' or soft-NMS 'linear' / 'gaussian' (soft-NMS decays with iou_threshold / sigma and
    drops boxes below score_threshold). At most ``max_per_class`` per class and ``max_total`` overall
    (None or <= 0: no limit). ``pre_nms_top_k``: per class, only that many best-scoring candidates
    above the threshold enter NMS (None or <= 0: all; gluoncv's SSD uses 400), which bounds the cost
    when a weak model scores every prior above the threshold. Returns boxes (K,4), scores (K,), labels
    (K,) int64 0-based, by decreasing score (ties: lower class, then lower prior index).
    """
    if method not in ("hard", "linear", "gaussian"):
        raise ValueError("multiclass_nms method must be 'hard', 'linear' or 'gaussian', got %r" % (method,))
    scores = np.asarray(scores)
    boxes = np.asarray(boxes)
    if scores.ndim != 2:
        raise ValueError("multiclass_nms scores must be (P, C), got %s" % (scores.shape,))
    num_priors, num_classes = scores.shape
    if boxes.shape not in ((num_priors, 4), (num_priors, num_classes, 4)):
        raise ValueError("multiclass_nms boxes must be (P,4) or (P,C,4) with P=%d C=%d, got %s"
                         % (num_priors, num_classes, boxes.shape))
    thresholds = np.broadcast_to(np.asarray(score_threshold, dtype=np.float64), (num_classes,))
    dtype = np.float32 if boxes.dtype == np.float32 and scores.dtype == np.float32 else np.float64
    limit = max_per_class if max_per_class is not None and max_per_class > 0 else None
    out_boxes, out_scores, out_labels = [], [], []
    for cls in range(num_classes):
        candidates = np.flatnonzero(scores[:, cls] > thresholds[cls])
        if candidates.size == 0:
            continue
        if pre_nms_top_k is not None and 0 < pre_nms_top_k < candidates.size:
            best = np.argsort(-scores[candidates, cls], kind="stable")[:int(pre_nms_top_k)]
            candidates = np.sort(candidates[best])
        cls_boxes = boxes[candidates] if boxes.ndim == 2 else boxes[candidates, cls]
        dets = np.concatenate([cls_boxes, scores[candidates, cls][:, None]], axis=1).astype(dtype)
        if method == "hard":
            kept = nms(dets, iou_threshold, max_output=limit)
            dets = dets[kept]
        else:
            dets, _ = soft_nms(dets, method, sigma, iou_threshold, score_threshold=thresholds[cls])
            dets = dets[:limit]
        out_boxes.append(dets[:, :4])
        out_scores.append(dets[:, 4])
        out_labels.append(np.full(len(dets), cls, dtype=np.int64))
    if not out_boxes:
        return np.zeros((0, 4), dtype), np.zeros(0, dtype), np.zeros(0, np.int64)
    out_boxes = np.concatenate(out_boxes).astype(dtype)
    out_scores = np.concatenate(out_scores).astype(dtype)
    out_labels = np.concatenate(out_labels)
    order = np.argsort(-out_scores, kind="stable")
    if max_total is not None and max_total > 0:
        order = order[:max_total]
    return out_boxes[order], out_scores[order], out_labels[order]


# --------------------------------------------------------------------------------------------
# Seq-NMS


def _check_frames(frames):
    checked = []
    for t, frame in enumerate(frames):
        try:
            boxes, scores, labels = frame
        except (TypeError, ValueError):
            raise ValueError("seq_nms frame %d must be a (boxes, scores, labels) tuple" % t) from None
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) == 0 else np.asarray(boxes)
        scores = np.asarray(scores).reshape(-1)
        labels = np.asarray(labels).reshape(-1)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape[0] != boxes.shape[0] \
                or labels.shape[0] != boxes.shape[0]:
            raise ValueError("seq_nms frame %d: expected boxes (N,4), scores (N,), labels (N,), got %s, %s, %s"
                             % (t, boxes.shape, scores.shape, labels.shape))
        checked.append((boxes, scores, labels))
    return checked


def _seq_nms_one_class(boxes, scores, link_iou, suppress_iou, rescore):
    """Seq-NMS of one class. boxes[t] (n_t,4) float64, scores[t] (n_t,) float64.

    Returns (keep[t] bool masks, new_scores[t]): boxes on a selected path are rescored; boxes
    suppressed by a path are dropped; boxes never reached by any path keep their score.
    """
    num_frames = len(boxes)
    alive = [np.ones(len(b), dtype=bool) for b in boxes]
    keep = [np.zeros(len(b), dtype=bool) for b in boxes]
    new_scores = [s.copy() for s in scores]
    # links[t] (n_t, n_{t+1}): IoU >= link_iou between consecutive frames (fixed; alive masks prune).
    links = [box_iou(boxes[t], boxes[t + 1]) >= link_iou for t in range(num_frames - 1)]
    # IoU within each frame, for suppression along a path.
    self_iou = [box_iou(b, b) for b in boxes]
    while True:
        live_links = [links[t] & alive[t][:, None] & alive[t + 1][None, :] for t in range(num_frames - 1)]
        if not any(l.any() for l in live_links):
            break
        # Dynamic programming, forward: best[t][i] = score + max(0, best path ending in t-1 linked to i).
        best = [np.where(alive[0], scores[0], -np.inf)]
        back = [np.full(len(boxes[0]), -1, dtype=np.int64)]
        for t in range(1, num_frames):
            prev_best = best[t - 1]
            n_t = len(boxes[t])
            pointer = np.full(n_t, -1, dtype=np.int64)
            gain = np.zeros(n_t)
            if n_t and len(prev_best):
                candidate = np.where(live_links[t - 1], prev_best[:, None], -np.inf)
                arg = np.argmax(candidate, axis=0)  # first maximum: lower index wins ties
                value = candidate[arg, np.arange(n_t)]
                linked = np.isfinite(value) & (value > 0)
                pointer[linked] = arg[linked]
                gain[linked] = value[linked]
            best.append(np.where(alive[t], scores[t] + gain, -np.inf))
            back.append(pointer)
        # Global maximum (earliest frame, then lower index on ties), then backtrack.
        end_t, end_i, end_value = -1, -1, -np.inf
        for t in range(num_frames):
            if len(best[t]):
                i = int(np.argmax(best[t]))
                if best[t][i] > end_value:
                    end_t, end_i, end_value = t, i, best[t][i]
        path = []
        t, i = end_t, end_i
        while i >= 0:
            path.append((t, i))
            i = int(back[t][i])
            t -= 1
        path.reverse()
        path_scores = np.array([scores[t][i] for t, i in path])
        value = path_scores.mean() if rescore == "avg" else path_scores.max()
        for t, i in path:
            new_scores[t][i] = value
            keep[t][i] = True
            # Suppress the path box's overlaps in its frame (the path box itself is final).
            alive[t] &= ~(self_iou[t][i] >= suppress_iou)
            alive[t][i] = False
    for t in range(num_frames):
        keep[t] |= alive[t]  # never on a path and never suppressed: unchanged
    return keep, new_scores


def _seq_nms_one_class_compiled(boxes, scores, link_iou, suppress_iou, rescore):
    """Same contract as :func:`_seq_nms_one_class`, with the path loop in ``lib/_cnms.pyx``."""
    sizes = [len(b) for b in boxes]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(starts[-1])
    # Predecessor lists (CSR by box, ascending predecessor index) and same-frame suppression lists:
    # np.nonzero walks a boolean matrix row-major, which is exactly CSR order.
    pred_counts, pred_parts, supp_counts, supp_parts = [], [], [], []
    for t in range(len(boxes)):
        if t > 0:
            linked = (box_iou(boxes[t - 1], boxes[t]) >= link_iou).T  # (n_t, n_{t-1})
            pred_counts.append(linked.sum(axis=1))
            pred_parts.append(np.nonzero(linked)[1] + starts[t - 1])
        else:
            pred_counts.append(np.zeros(sizes[0], dtype=np.int64))
        suppress = box_iou(boxes[t], boxes[t]) >= suppress_iou
        supp_counts.append(suppress.sum(axis=1))
        supp_parts.append(np.nonzero(suppress)[1] + starts[t])

    def to_csr(counts, parts):
        ptr = np.zeros(total + 1, dtype=np.int64)
        if total:
            ptr[1:] = np.cumsum(np.concatenate(counts))
        idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        return ptr, idx

    pred_ptr, pred_idx = to_csr(pred_counts, pred_parts)
    supp_ptr, supp_idx = to_csr(supp_counts, supp_parts)
    flat_scores = np.concatenate(scores).astype(np.float64) if total else np.zeros(0)
    keep, new_scores = _cnms.seq_nms_paths(flat_scores, pred_ptr, pred_idx, supp_ptr,
                                           supp_idx, int(rescore == "max"))
    keep = keep.astype(bool)
    return ([keep[starts[t]:starts[t + 1]] for t in range(len(boxes))],
            [new_scores[starts[t]:starts[t + 1]] for t in range(len(boxes))])


def seq_nms(frames, link_iou=0.5, suppress_iou=0.3, rescore="avg", nms_iou=0.3):
    """Seq-NMS over the frames of ONE video, per class.

    frames: list over the video's frames (in order) of ``(boxes (N,4), scores (N,), labels (N,))``;
    empty frames are allowed (they break links). Boxes of the same class in consecutive frames are
    linked when IoU >= link_iou; the path with the maximum score sum is found by dynamic programming,
    its boxes are rescored to the path's average (``rescore='avg'``) or maximum (``'max'``), and the
    boxes with IoU >= suppress_iou to the path box in each of its frames are removed; this repeats
    until no links remain. Finally hard NMS (``nms_iou``) per frame and class.
    Returns a list with one ``(boxes, scores, labels)`` per input frame (every frame, including the
    last), each sorted by decreasing score.
    """
    return _seq_nms(frames, link_iou, suppress_iou, rescore, nms_iou, _seq_nms_one_class_compiled)


def seq_nms_np(frames, link_iou=0.5, suppress_iou=0.3, rescore="avg", nms_iou=0.3):
    """Numpy reference of :func:`seq_nms`."""
    return _seq_nms(frames, link_iou, suppress_iou, rescore, nms_iou, _seq_nms_one_class)


def _seq_nms(frames, link_iou, suppress_iou, rescore, nms_iou, one_class):
    if rescore not in ("avg", "max"):
        raise ValueError("seq_nms rescore must be 'avg' or 'max', got %r" % (rescore,))
    frames = _check_frames(frames)
    num_frames = len(frames)
    keep_masks = [np.zeros(len(f[0]), dtype=bool) for f in frames]
    final_scores = [np.asarray(f[1], dtype=np.float64).copy() for f in frames]
    all_labels = np.unique(np.concatenate([f[2] for f in frames])) if num_frames else []
    for label in all_labels:
        members = [np.flatnonzero(f[2] == label) for f in frames]
        keep, new_scores = one_class(
            [np.asarray(f[0], dtype=np.float64)[m] for f, m in zip(frames, members)],
            [np.asarray(f[1], dtype=np.float64)[m] for f, m in zip(frames, members)],
            link_iou, suppress_iou, rescore)
        for t in range(num_frames):
            keep_masks[t][members[t]] = keep[t]
            final_scores[t][members[t]] = new_scores[t]
    results = []
    for t, (boxes, scores, labels) in enumerate(frames):
        idx = np.flatnonzero(keep_masks[t])
        score_dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float32
        out_scores = final_scores[t][idx].astype(score_dtype)
        kept = idx[batched_nms(boxes[idx], out_scores, labels[idx], nms_iou)]
        results.append((boxes[kept], final_scores[t][kept].astype(score_dtype), labels[kept]))
    return results


def seq_nms_videos(video_ids, frame_indices, detections, link_iou=0.5, suppress_iou=0.3, rescore="avg",
                   nms_iou=0.3):
    """Seq-NMS over a whole set of frames from several videos, in any order.

    video_ids[k], frame_indices[k] and detections[k] = (boxes, scores, labels) describe frame k
    (e.g. from ``Record.video`` / ``Record.frame``). Frames are grouped by video and sorted by frame
    index, every group (including the last video and its last frame) goes through :func:`seq_nms`,
    and the result is returned aligned with the input. Frames whose video id is None (still images)
    are returned unchanged. A repeated (video, frame) pair is an error.
    """
    if not (len(video_ids) == len(frame_indices) == len(detections)):
        raise ValueError("seq_nms_videos: video_ids, frame_indices and detections differ in length (%d, %d, %d)"
                         % (len(video_ids), len(frame_indices), len(detections)))
    groups = {}
    for k, (video, frame) in enumerate(zip(video_ids, frame_indices)):
        if video is not None:
            groups.setdefault(video, []).append((int(frame), k))
    results = list(detections)
    for video, members in groups.items():
        members.sort()
        frames = [m[0] for m in members]
        repeated = [f for f, g in zip(frames[1:], frames[:-1]) if f == g]
        if repeated:
            raise ValueError("seq_nms_videos: video %r has frame %d more than once" % (video, repeated[0]))
        processed = seq_nms([detections[k] for _, k in members], link_iou, suppress_iou, rescore, nms_iou)
        for (_, k), out in zip(members, processed):
            results[k] = out
    return results
