"""ImageNet VID detection AP with the motion-speed and object-area breakdowns.

This follows the evaluation released with FGFA (``imagenet_vid_eval.py`` / ``imagenet_vid_eval_motion.py``
of the reference repository, itself a port of the ImageNet VID devkit), on our box convention (IoU
without ``+1``, which equals the devkit's ``+1`` formulas on raw XML integers):

Matching, per frame
  Each gt box has its own IoU threshold ``min(0.5, w*h / ((w+10)*(h+10)))`` (w, h in pixels; the 10 is
  ``pixel_tolerance``). The frame's detections are visited by decreasing confidence; each takes, among the
  not yet matched gts of its class whose IoU reaches their own threshold, the one with the highest IoU
  (first in annotation order on ties). The matching does not depend on the motion / area ranges.

Scoring within a (motion range, area range) pair
  A gt is *ignored* when its motion IoU or its area (w*h) is outside the range (bounds inclusive).
  - a detection matched to a gt: TP when that gt is not ignored, otherwise neither TP nor FP;
  - an unmatched detection whose own area is outside the area range: neither TP nor FP;
  - any other unmatched detection compares its best IoU with motion-ignored gts (any class) and with
    the other gts (any class): FP = 1 when the non-ignored overlap is larger, 0 when the ignored one is,
    and on a tie (e.g. overlapping nothing) the fraction of the frame's gts that are motion-ignored, or,
    in a frame without gts, the "empty weight": the fraction of the motion IoUs in the range, counted
    over every gt of the dataset plus ONE pseudo motion IoU of 0 per frame without gts. (The official
    ``.mat`` holds an empty (1,0) cell for such a frame, which the official loader reads as a single
    0; the pseudo values enter nothing but this fraction. So a gt-less frame raises the weight of a
    false positive on gt-less frames in the "fast" range, whose lower bound is 0, and lowers it in
    "slow" and "medium".)
  Ignored gts do not count in the number of positives. With the full ranges nothing is ignored and this
  is the plain ImageNet VID AP (every unmatched detection is a FP).
AP per class
  All detections of the class sorted by confidence, precision/recall from the (fractional) TP/FP sums,
  area under the monotone precision envelope (VOC2010 style). A class without positives in a range gets
  AP None (the reference reports -1) and is left out of that range's mean, as the reference does.

Motion IoU (``motion_ious``)
  The reference ships the per-gt motion IoU of the val set as a precomputed MATLAB file
  (``vid_groundtruth_motion_iou.mat``); the code that produced it is not public. The paper (FGFA, Sec. 5)
  defines it as "the averaged IoU scores with its corresponding instances in the nearby frames
  (+-10 frames)". We compute, for a gt of track ``k`` at frame ``t`` of a snippet, the mean IoU between
  its box and the box of track ``k`` at every frame ``t+d``, ``1 <= |d| <= 10``, where that track is
  annotated (the reading used by the public re-implementations that regenerate the file).
  ``endpoints_only=True`` uses only the frames t-10 and t+10. A gt with no such neighbour (single-frame
  track, still image, track id -1) gets motion IoU 0.0, as the reference loader does for empty entries:
  it then counts as "fast". Precomputed values can be passed instead: ``read_motion_iou_mat`` reads
  the official ``imagenet_vid_groundtruth_motion_iou.mat`` (one cell per frame of VID_val_frames.txt,
  one value per gt in XML object order), which gives the paper's exact breakdown.
  When no gt of the dataset has a track id (e.g. VOC frames), the motion breakdown is skipped and the
  result says so under "motion_skipped".
Breakdowns reported: each motion range with the full area range, each area range with the full motion
range (the reference loops over the grid of both; FGFA's table uses these rows). Equal confidences
keep record / detection order (stable sorts; the reference's quicksort leaves ties unspecified).
The ``difficult`` flag is not used (ImageNet VID has none).
"""
from collections import defaultdict

import numpy as np

from .common import ap_area, box_areas, check_detections, iou_matrix, mean_ignoring_none, precision_recall

FULL_RANGE = (0.0, 1e10)
MOTION_ALL = (0.0, 1.0)
MOTION_RANGES = {"slow": (0.9, 1.0), "medium": (0.7, 0.9), "fast": (0.0, 0.7)}
AREA_RANGES = {"small": (0.0, 50.0 ** 2), "medium": (50.0 ** 2, 150.0 ** 2), "large": (150.0 ** 2, 1e10)}


def motion_ious(gt_records, window=10, endpoints_only=False):
    """Motion IoU of every gt box, one float64 array per record (definition in the module docstring)."""
    gt_records = list(gt_records)
    out = [np.zeros(r.num_boxes) for r in gt_records]
    seen = {}
    tracks = defaultdict(list)  # (video, track id) -> [(frame, record index, box index)]
    for idx, rec in enumerate(gt_records):
        if rec.video is None:
            continue
        key = (rec.video, rec.frame)
        if key in seen:
            raise ValueError(f"motion IoU: video {rec.video!r} has frame {rec.frame} twice "
                             f"({gt_records[seen[key]].image} and {rec.image})")
        seen[key] = idx
        for k in np.where(rec.track_ids >= 0)[0]:
            tracks[(rec.video, int(rec.track_ids[k]))].append((rec.frame, idx, int(k)))
    offsets = [-window, window] if endpoints_only else [d for d in range(-window, window + 1) if d != 0]
    for (video, track), items in tracks.items():
        items.sort()
        frames = np.array([f for f, _, _ in items])
        if len(np.unique(frames)) != len(frames):
            dup = frames[np.where(np.diff(frames) == 0)[0][0]]
            raise ValueError(f"motion IoU: track {track} of video {video!r} appears twice in frame {dup}")
        boxes = np.stack([gt_records[i].boxes[k] for _, i, k in items]).astype(np.float64)
        iou_sum = np.zeros(len(items))
        count = np.zeros(len(items))
        for d in offsets:
            pos = np.searchsorted(frames, frames + d)
            found = (pos < len(frames)) & (frames[np.minimum(pos, len(frames) - 1)] == frames + d)
            if not np.any(found):
                continue
            iou_sum[found] += _pairwise_iou(boxes[found], boxes[pos[found]])
            count[found] += 1
        mean = np.where(count > 0, iou_sum / np.maximum(count, 1), 0.0)
        for (_, i, k), value in zip(items, mean):
            out[i][k] = value
    return out


def read_motion_iou_mat(path, gt_records):
    """Per-gt motion IoUs from the official ``imagenet_vid_groundtruth_motion_iou.mat`` (FGFA release).

    The file holds a cell array ``motion_iou`` with one cell per frame of the evaluated image set
    (VID_val_frames.txt order), each a column of one value per gt box in the XML's object order, or
    an empty (1,0) cell for a frame without gts. ``gt_records`` must be those frames in that order
    (load_vid with that IMAGE_SET). Returns one float64 array per record for
    ``vid_ap(precomputed_motion_ious=...)``. Errors name the file and the first frame that does not fit."""
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: motion IoU file not found") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError... on bad files
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({exc})") from None
    if "motion_iou" not in mat:
        raise ValueError(f"{path}: no 'motion_iou' variable (has {sorted(k for k in mat if not k.startswith('__'))})")
    cells = np.asarray(mat["motion_iou"])
    if cells.dtype != object:
        raise ValueError(f"{path}: 'motion_iou' must be a cell array (one cell per frame), got a "
                         f"{cells.dtype} array of shape {cells.shape}")
    cells = cells.reshape(-1)
    gt_records = list(gt_records)
    if len(cells) != len(gt_records):
        raise ValueError(f"{path}: {len(cells)} frames, but the ground truth has {len(gt_records)}: the file "
                         f"belongs to another image set (the official one to VID_val_frames.txt, 176126 frames)")
    out = []
    for k, (cell, rec) in enumerate(zip(cells, gt_records)):
        values = np.asarray(cell, np.float64).reshape(-1)  # uint8 cells (value 1) exist in the official file
        if len(values) != rec.num_boxes:
            raise ValueError(f"{path}: frame {k} ({rec.image_id}) has {len(values)} motion IoU value(s) for "
                             f"{rec.num_boxes} gt box(es): boxes dropped while loading, or another image set")
        if len(values) and (not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1):
            raise ValueError(f"{path}: frame {k} ({rec.image_id}) has motion IoUs outside [0, 1]: {values}")
        out.append(values)
    return out


def _pairwise_iou(a, b):
    """IoU of a[i] with b[i] (same convention as common.iou_matrix)."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = box_areas(a) + box_areas(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _iou_thresholds(boxes, iou, pixel_tolerance):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.minimum(iou, (w * h) / ((w + pixel_tolerance) * (h + pixel_tolerance)))


class _Matched:
    """Every frame's detections (each frame's sorted by confidence) and gts, flattened, with the greedy
    per-frame matching done once (it does not depend on the ranges) and the positive overlaps kept."""

    def __init__(self, gt_records, dets, iou, pixel_tolerance):
        parts = {k: [] for k in ("scores", "labels", "det_areas", "det_frame", "matched", "gt_labels",
                                 "gt_areas", "gt_frame", "pair_det", "pair_gt", "pair_ov")}
        det_off = gt_off = 0
        for f, (rec, (boxes, scores, labels)) in enumerate(zip(gt_records, dets)):
            order = np.argsort(-scores, kind="stable")
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            overlaps = iou_matrix(boxes, rec.boxes)
            thresholds = _iou_thresholds(rec.boxes.astype(np.float64), iou, pixel_tolerance)
            matched = np.full(len(boxes), -1, np.int64)
            candidates = (overlaps >= thresholds[None]) & (labels[:, None] == rec.labels[None])
            taken = np.zeros(rec.num_boxes, bool)
            for j in np.where(candidates.any(axis=1))[0]:  # only these can match; in confidence order
                ok = candidates[j] & ~taken
                if np.any(ok):
                    k = int(np.argmax(np.where(ok, overlaps[j], -1.0)))
                    matched[j] = k
                    taken[k] = True
            rows, cols = np.nonzero(overlaps > 0)
            parts["scores"].append(scores)
            parts["labels"].append(labels)
            parts["det_areas"].append(box_areas(boxes))
            parts["det_frame"].append(np.full(len(boxes), f, np.int64))
            parts["matched"].append(np.where(matched >= 0, matched + gt_off, -1))
            parts["gt_labels"].append(rec.labels)
            parts["gt_areas"].append(box_areas(rec.boxes))
            parts["gt_frame"].append(np.full(rec.num_boxes, f, np.int64))
            parts["pair_det"].append(rows + det_off)
            parts["pair_gt"].append(cols + gt_off)
            parts["pair_ov"].append(overlaps[rows, cols])
            det_off += len(boxes)
            gt_off += rec.num_boxes
        dtypes = {"labels": np.int64, "det_frame": np.int64, "matched": np.int64, "gt_labels": np.int64,
                  "gt_frame": np.int64, "pair_det": np.int64, "pair_gt": np.int64}
        for key, arrays in parts.items():
            setattr(self, key, np.concatenate(arrays).astype(dtypes.get(key, np.float64)) if arrays
                    else np.zeros(0, dtypes.get(key, np.float64)))
        self.num_frames = len(gt_records)
        self.gts_per_frame = np.bincount(self.gt_frame, minlength=self.num_frames).astype(np.float64)
        # the class AP walks every detection of the dataset by confidence (stable: frame order on ties)
        self.order = np.argsort(-self.scores, kind="stable")

    def score_range(self, gt_motion, motion_range, area_range, empty_weight):
        """TP / FP weight per detection and the 'counted' mask per gt for one (motion, area) range."""
        ig_motion = (gt_motion < motion_range[0]) | (gt_motion > motion_range[1])
        ig_area = (self.gt_areas < area_range[0]) | (self.gt_areas > area_range[1])
        ignored = ig_motion | ig_area
        has_match = self.matched >= 0
        tp = np.zeros(len(self.scores))
        tp[has_match] = ~ignored[self.matched[has_match]]
        # best overlap with motion-ignored / other gts of the frame (any class): 0 when the frame has such
        # gts but the detection misses them all, -1 when it has none
        ig_per_frame = np.bincount(self.gt_frame, weights=ig_motion, minlength=self.num_frames)
        nig_per_frame = self.gts_per_frame - ig_per_frame
        ov_ig = np.where(ig_per_frame[self.det_frame] > 0, 0.0, -1.0)
        ov_nig = np.where(nig_per_frame[self.det_frame] > 0, 0.0, -1.0)
        pair_ig = ig_motion[self.pair_gt]
        np.maximum.at(ov_ig, self.pair_det[pair_ig], self.pair_ov[pair_ig])
        np.maximum.at(ov_nig, self.pair_det[~pair_ig], self.pair_ov[~pair_ig])
        gts_here = self.gts_per_frame[self.det_frame]
        tie = np.where(gts_here > 0, ig_per_frame[self.det_frame] / np.maximum(gts_here, 1), empty_weight)
        weight = np.where(ov_nig > ov_ig, 1.0, np.where(ov_ig > ov_nig, 0.0, tie))
        det_in_area = (self.det_areas >= area_range[0]) & (self.det_areas <= area_range[1])
        fp = np.where(~has_match & det_in_area, weight, 0.0)
        return tp, fp, ~ignored

    def class_aps(self, tp, fp, counted, num_classes, with_curves=False):
        scores, labels = self.scores[self.order], self.labels[self.order]
        tp, fp = tp[self.order], fp[self.order]
        aps, npos_all, ndet, curves = [], [], [], []
        for c in range(num_classes):
            npos = int(np.sum(counted & (self.gt_labels == c)))
            sel = labels == c
            npos_all.append(npos)
            ndet.append(int(sel.sum()))
            if npos <= 0:
                aps.append(None)
                curves.append({"recall": [], "precision": [], "scores": []})
                continue
            precision, recall = precision_recall(tp[sel], fp[sel], npos)
            aps.append(ap_area(recall, precision))
            if with_curves:
                curves.append({"recall": recall.tolist(), "precision": precision.tolist(),
                               "scores": scores[sel].tolist()})
        return aps, npos_all, ndet, curves


def vid_ap(gt_records, detections, classes, motion=True, area=True, iou=0.5, pixel_tolerance=10,
           motion_window=10, motion_endpoints_only=False, precomputed_motion_ious=None):
    """ImageNet VID AP, per class and mean, plus slow/medium/fast and small/medium/large breakdowns.

    gt_records: list of ``lib.dataset.Record`` (frames carry ``video``, ``frame`` and ``track_ids`` for the
    motion IoU); detections: one ``(boxes, scores, labels)`` per record.
    Returns {"metric": "vid", "mAP", "per_class": {name: {"ap", "num_gt", "num_det"}}, "curves",
    "motion": {"slow"|"medium"|"fast": {"range", "mAP", "num_gt", "per_class": {name: ap}}},
    "area": {"small"|"medium"|"large": {...}}, "motion_iou": {"window", "endpoints_only", "precomputed",
    "mean"}} ("motion_skipped" with the reason instead of "motion" when the gt has no track ids).
    ``iou`` caps the per-gt threshold; ``precomputed_motion_ious``: one array per record, one value per gt.
    """
    gt_records = list(gt_records)
    classes = list(classes)
    dets = check_detections(gt_records, detections, len(classes))
    motion_skipped = None
    matched = _Matched(gt_records, dets, iou, pixel_tolerance)
    if precomputed_motion_ious is not None:
        mious = [np.asarray(m, np.float64).reshape(-1) for m in precomputed_motion_ious]
        if len(mious) != len(gt_records) or any(len(m) != r.num_boxes for m, r in zip(mious, gt_records)):
            raise ValueError("precomputed_motion_ious: need one array per record with one value per gt box")
    elif motion and not any(np.any(r.track_ids >= 0) for r in gt_records):
        # without any track the motion IoU is undefined: a breakdown would call every object "fast"
        motion_skipped = "the ground truth has no track ids (motion IoU needs tracks)"
        motion = False
        mious = [np.ones(r.num_boxes) for r in gt_records]
    elif motion:
        mious = motion_ious(gt_records, motion_window, motion_endpoints_only)
    else:
        mious = [np.ones(r.num_boxes) for r in gt_records]  # unused: every range below is MOTION_ALL
    all_motion = np.concatenate(mious) if mious else np.zeros(0)
    # the empty weight's population: every gt, plus one pseudo motion IoU of 0 per frame without gts
    weight_population = np.concatenate([all_motion, np.zeros(sum(r.num_boxes == 0 for r in gt_records))])

    def evaluate_range(motion_range, area_range, with_curves=False):
        in_range = (weight_population >= motion_range[0]) & (weight_population <= motion_range[1])
        empty_weight = float(np.mean(in_range)) if len(weight_population) else 1.0
        tp, fp, counted = matched.score_range(all_motion, motion_range, area_range, empty_weight)
        return matched.class_aps(tp, fp, counted, len(classes), with_curves)

    aps, npos, ndet, curves = evaluate_range(MOTION_ALL, FULL_RANGE, with_curves=True)
    result = {
        "metric": "vid", "iou": float(iou), "pixel_tolerance": pixel_tolerance,
        "mAP": mean_ignoring_none(aps),
        "per_class": {name: {"ap": ap, "num_gt": n, "num_det": d}
                      for name, ap, n, d in zip(classes, aps, npos, ndet)},
        "curves": dict(zip(classes, curves)),
    }
    if motion:
        result["motion"] = {}
        for name, rng in MOTION_RANGES.items():
            r_aps, r_npos, _, _ = evaluate_range(rng, FULL_RANGE)
            result["motion"][name] = {"range": list(rng), "mAP": mean_ignoring_none(r_aps),
                                      "num_gt": int(sum(r_npos)), "per_class": dict(zip(classes, r_aps))}
        result["motion_iou"] = {"window": motion_window, "endpoints_only": motion_endpoints_only,
                                "precomputed": precomputed_motion_ious is not None,
                                "mean": float(all_motion.mean()) if len(all_motion) else None}
    if motion_skipped:
        result["motion_skipped"] = motion_skipped
    if area:
        result["area"] = {}
        for name, rng in AREA_RANGES.items():
            r_aps, r_npos, _, _ = evaluate_range(MOTION_ALL, rng)
            result["area"][name] = {"range": [rng[0], rng[1]], "mAP": mean_ignoring_none(r_aps),
                                    "num_gt": int(sum(r_npos)), "per_class": dict(zip(classes, r_aps))}
    return result
