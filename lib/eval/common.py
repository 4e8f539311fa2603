"""Helpers shared by the metrics: detection validation, IoU, precision/recall integration.

Boxes follow the project convention (docs/DESIGN.md): continuous pixels, x2/y2 exclusive, so
width = x2 - x1 and IoU carries no ``+1``. On boxes read from VOC / ImageNet VID XML
(x1 = xmin - 1, x2 = xmax) this equals the devkits' ``+1`` formulas on the raw integers.
"""
import copy

import numpy as np


def iou_matrix(a, b):
    """IoU of every box in ``a`` (N,4) with every box in ``b`` (M,4) -> (N,M) float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    # the devkits only count an overlap when both intersection sides are positive
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def box_areas(boxes):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _to_numpy(x):
    if hasattr(x, "asnumpy"):  # mx.nd.NDArray straight from a detector
        x = x.asnumpy()
    return np.asarray(x)


def check_detections(gt_records, detections, num_classes):
    """Validate and normalise detections: one (boxes (K,4), scores (K,), labels (K,)) per record.

    Arrays may be numpy or mx.nd, with gluoncv-style shapes ((K,1) ids / scores); rows with label -1
    (detector padding) are dropped. Returns a list of (float64 boxes, float64 scores, int64 labels).
    Errors name the record index and its image so a misaligned list is found quickly.
    """
    gt_records = list(gt_records)
    detections = list(detections)
    if len(detections) != len(gt_records):
        raise ValueError(f"detections: got {len(detections)} entries for {len(gt_records)} ground-truth "
                         "records; pass one (boxes, scores, labels) tuple per record, in the same order")
    out = []
    for idx, (rec, det) in enumerate(zip(gt_records, detections)):
        where = f"detections[{idx}] (image {rec.image})"
        if det is None:
            out.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)))
            continue
        if len(det) != 3:
            raise ValueError(f"{where}: expected a (boxes, scores, labels) tuple, got {len(det)} items")
        boxes, scores, labels_raw = (_to_numpy(x) for x in det)
        boxes = boxes.astype(np.float64)
        scores = scores.astype(np.float64).reshape(-1)
        labels_raw = labels_raw.reshape(-1)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}: boxes must have shape (K,4), got {boxes.shape}")
        if not (len(boxes) == len(scores) == len(labels_raw)):
            raise ValueError(f"{where}: {len(boxes)} boxes, {len(scores)} scores and {len(labels_raw)} labels "
                             "must have the same length")
        if not np.all(np.isfinite(boxes)) or not np.all(np.isfinite(scores)):
            raise ValueError(f"{where}: boxes and scores must be finite numbers")
        if labels_raw.size and not np.all(np.equal(np.mod(labels_raw.astype(np.float64), 1), 0)):
            raise ValueError(f"{where}: labels must be integer class indices, got {labels_raw[:5]}")
        labels = labels_raw.astype(np.int64)
        # detector outputs are padded with label -1 (docs/DESIGN.md): padding is dropped
        keep = labels >= 0
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        bad = labels >= num_classes
        if np.any(bad):
            raise ValueError(f"{where}: label {labels[bad][0]} is outside the {num_classes} classes "
                             f"(0..{num_classes - 1})")
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if np.any(inverted):
            raise ValueError(f"{where}: box {boxes[inverted][0].tolist()} has x2 < x1 or y2 < y1 "
                             "(boxes are [x1, y1, x2, y2])")
        out.append((boxes, scores, labels))
    return out


def precision_recall(tp, fp, npos):
    """Cumulative precision and recall from per-detection tp/fp weights already sorted by score."""
    tp_cum = np.cumsum(np.asarray(tp, np.float64))
    fp_cum = np.cumsum(np.asarray(fp, np.float64))
    recall = tp_cum / float(npos)
    # eps guards the case where the first detections hit ignored ground truth (tp + fp = 0)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return precision, recall


def ap_area(recall, precision):
    """VOC2010+ AP: area under the monotone (non-increasing) precision envelope."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def ap_11point(recall, precision):
    """VOC2007 AP: mean over recall thresholds 0, 0.1, ..., 1 of the max precision at recall >= t."""
    ap = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        mask = recall >= t
        ap += (float(np.max(precision[mask])) if np.any(mask) else 0.0) / 11.0
    return ap


def mean_ignoring_none(values):
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def small_objects_only(records, max_height):
    """Copies of the ground-truth records where boxes at least ``max_height`` px high are marked
    difficult: VOC-style metrics then ignore them (a detection on one is neither right nor wrong), so
    the AP is that of the small objects."""
    out = []
    for rec in records:
        rec = copy.copy(rec)
        tall = (rec.boxes[:, 3] - rec.boxes[:, 1]) >= max_height
        rec.difficult = rec.difficult | tall
        out.append(rec)
    return out

