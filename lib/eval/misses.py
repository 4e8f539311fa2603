"""Why are objects missed: never found, found loosely, or found but outscored by background boxes.

A low AP alone does not tell a user what to change. Per ground-truth box (of the selected sizes) this
looks at every detection of its class, at any score:
- ``localised``: one overlaps it with IoU >= ``iou``: the detector can place the box; if the AP is
  still low, its score loses against detections on background (more / harder negative examples,
  more examples of the object as it looks there);
- ``loose``: the best overlap is in [``loose_iou``, ``iou``): found in the right place with a wrong
  box (anchor shapes, input scale);
- ``missed``: nothing overlaps it by ``loose_iou`` (anchors/priors too large, the object too small at
  the input scale, or no proposal there).
For the localised boxes it reports the median of their best matching score and the median number of
background detections per image scoring above it. A background detection is one whose IoU with every
ground-truth box of its class (any size, difficult ones included) is below ``loose_iou``.
"""
import numpy as np

from .common import check_detections, iou_matrix


def miss_analysis(gt_records, detections, classes, max_height=None, iou=0.5, loose_iou=0.1):
    """-> {"boxes", "localised", "loose", "missed", "median_best_score", "median_background_above_per_image",
    "background_detections"} over the non-difficult boxes lower than ``max_height`` px (all boxes when None).

    gt_records: ``lib.dataset.Record`` list; detections: one ``(boxes, scores, labels)`` per record."""
    gt_records = list(gt_records)
    dets = check_detections(gt_records, detections, len(list(classes)))
    best_scores, best_ious, background = [], [], []
    for rec, (boxes, scores, labels) in zip(gt_records, dets):   # float64 (K,4), (K,), int64 (K,)
        gt_boxes = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        gt_labels = np.asarray(rec.labels).ravel()
        near_object = np.zeros(len(scores), bool)
        for cls in np.unique(gt_labels):
            mine = labels == cls
            if mine.any():
                near_object[mine] = iou_matrix(boxes[mine], gt_boxes[gt_labels == cls]).max(axis=1) >= loose_iou
        background.append(scores[~near_object])
        heights = gt_boxes[:, 3] - gt_boxes[:, 1]
        selected = ~np.asarray(rec.difficult, bool).ravel()
        if max_height is not None:
            selected &= heights < max_height
        for j in np.flatnonzero(selected):
            mine = labels == gt_labels[j]
            if not mine.any():
                best_ious.append(0.0)
                best_scores.append(None)
                continue
            overlaps = iou_matrix(gt_boxes[j:j + 1], boxes[mine])[0]
            best_ious.append(float(overlaps.max()))
            good = overlaps >= iou
            best_scores.append(float(scores[mine][good].max()) if good.any() else None)
    best_ious = np.asarray(best_ious)
    localised = [s for s in best_scores if s is not None]
    all_background = np.sort(np.concatenate(background)) if background else np.zeros(0)
    images = max(len(gt_records), 1)
    above = [(all_background.size - np.searchsorted(all_background, s, side="right")) / images for s in localised]
    return {"boxes": int(best_ious.size),
            "localised": len(localised),
            "loose": int(((best_ious >= loose_iou) & (best_ious < iou)).sum()),
            "missed": int((best_ious < loose_iou).sum()),
            "median_best_score": float(np.median(localised)) if localised else None,
            "median_background_above_per_image": float(np.median(above)) if above else None,
            "background_detections": int(all_background.size), "iou": iou, "loose_iou": loose_iou}


def format_misses(result, what="boxes"):
    """One line for a results file."""
    if not result["boxes"]:
        return f"no {what}"
    line = (f"{result['boxes']} {what}: {result['localised']} localised (a detection with IoU >= {result['iou']:g} "
            f"at any score), {result['loose']} loose (best IoU {result['loose_iou']:g}-{result['iou']:g}), "
            f"{result['missed']} missed")
    if result["localised"]:
        line += (f"; localised ones score {result['median_best_score']:.3f} (median), below "
                 f"{result['median_background_above_per_image']:.2f} background detections per image")
    return line
