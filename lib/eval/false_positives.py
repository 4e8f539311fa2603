"""False positives per image at a score threshold, on background images and overall.

A user who deploys a detector on a dashcam video cares less about AP than about how often a box pops
up where there is nothing: "how many false boxes per frame at threshold 0.5?". Background images (no
ground-truth box) make that visible, and adding them to training is the usual cure, so the recipe
reports the numbers on all images, on the images with objects only ("without background images") and
on the background images alone.

Matching is the VOC rule (lib.eval.voc): per class, detections in score order take the unmatched
ground-truth box of that class with the highest IoU >= ``iou``; a detection on a difficult box is
ignored (neither true nor false positive); any other detection is a false positive. Detections below
the score threshold are dropped first.
"""
import numpy as np

from .common import check_detections, iou_matrix


def match_image(gt_boxes, gt_labels, gt_difficult, boxes, scores, labels, iou=0.5):
    """VOC matching inside one image -> per detection 1 (true), 0 (false positive) or -1 (ignored)."""
    status = np.zeros(len(scores), np.int64)
    for cls in np.unique(labels):
        det_idx = np.flatnonzero(labels == cls)
        det_idx = det_idx[np.argsort(-scores[det_idx], kind="stable")]
        gmask = gt_labels == cls
        gboxes, gdiff = gt_boxes[gmask], gt_difficult[gmask]
        if len(gboxes) == 0:
            continue  # every detection of this class is a false positive (status stays 0)
        overlaps = iou_matrix(boxes[det_idx], gboxes)
        taken = np.zeros(len(gboxes), bool)
        for row, d in enumerate(det_idx):
            j = int(np.argmax(overlaps[row]))
            if overlaps[row, j] < iou:
                continue
            if gdiff[j]:
                status[d] = -1
            elif not taken[j]:
                taken[j] = True
                status[d] = 1
    return status


def _summary(fp, tp, images):
    return {"images": int(images), "false_positives": int(fp), "true_positives": int(tp),
            "fp_per_image": float(fp / images) if images else None}


def false_positives(gt_records, detections, classes, threshold=0.5, iou=0.5):
    """False positives per image at ``threshold``.

    gt_records: list of ``lib.dataset.Record``; detections: one ``(boxes, scores, labels)`` per record
    (numpy or mx.nd, -1 padding allowed). Returns
    {"threshold", "iou", "all": S, "with_objects": S, "background": S + "images_with_fp",
     "per_class": {name: false positives}, "per_image": [false positives per record]}
    where S = {"images", "false_positives", "true_positives", "fp_per_image" (None without images)}.
    "with_objects" is the set without background images; "background" are the records with no box.
    """
    gt_records = list(gt_records)
    classes = list(classes)
    dets = check_detections(gt_records, detections, len(classes))
    per_image, per_tp = [], []
    per_class = np.zeros(len(classes), np.int64)
    for rec, (boxes, scores, labels) in zip(gt_records, dets):
        keep = scores >= threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        status = match_image(rec.boxes.astype(np.float64), rec.labels, rec.difficult, boxes, scores, labels, iou)
        false = status == 0
        per_image.append(int(false.sum()))
        per_tp.append(int((status == 1).sum()))
        np.add.at(per_class, labels[false], 1)
    per_image = np.asarray(per_image, np.int64)
    per_tp = np.asarray(per_tp, np.int64)
    background = np.array([rec.num_boxes == 0 for rec in gt_records], bool)
    result = {"threshold": float(threshold), "iou": float(iou),
              "all": _summary(per_image.sum(), per_tp.sum(), len(gt_records)),
              "with_objects": _summary(per_image[~background].sum(), per_tp[~background].sum(),
                                       int((~background).sum())),
              "background": _summary(per_image[background].sum(), 0, int(background.sum())),
              "per_class": {name: int(n) for name, n in zip(classes, per_class)},
              "per_image": per_image.tolist()}
    result["background"]["images_with_fp"] = int((per_image[background] > 0).sum())
    return result


def false_positive_table(gt_records, detections, classes, thresholds=(0.2, 0.5, 0.8), iou=0.5):
    """``false_positives`` at several thresholds -> (list of results, markdown table)."""
    results = [false_positives(gt_records, detections, classes, t, iou) for t in thresholds]

    def cell(summary):
        value = summary["fp_per_image"]
        return "n/a" if value is None else f"{value:.3f}"

    lines = ["| threshold | FP/image (all) | FP/image (images with objects) | FP/image (background) "
             "| background images with a FP |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        bg = r["background"]
        lines.append(f"| {r['threshold']:.2f} | {cell(r['all'])} | {cell(r['with_objects'])} | {cell(bg)} "
                     f"| {bg['images_with_fp']}/{bg['images']} |")
    return results, "\n".join(lines) + "\n"
