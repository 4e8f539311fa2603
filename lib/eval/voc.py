"""Pascal VOC detection AP, as the VOC devkit computes it.

Per class, all detections of the dataset are sorted by score; each is matched to the ground truth box
of that class in its image with the highest IoU. IoU >= threshold: a difficult gt makes the detection
ignored (neither TP nor FP); an unmatched non-difficult gt makes it a TP; a gt already taken makes it
a FP. IoU below threshold: FP. Difficult gts do not count in the number of positives.
AP is the VOC2007 11-point interpolation (``use_07=True``) or the VOC2010+ area under the monotone
precision envelope. Classes without any non-difficult gt get AP None and stay out of the mean.

Boxes are in the project convention (x2 exclusive, IoU without +1), which equals the devkit on the
raw 1-based XML integers since the readers convert x1 = xmin - 1, x2 = xmax.
"""
import numpy as np

from .common import ap_11point, ap_area, check_detections, iou_matrix, mean_ignoring_none, precision_recall


def voc_ap(gt_records, detections, classes, iou=0.5, use_07=False):
    """VOC AP per class and mean.

    gt_records: list of ``lib.dataset.Record``; detections: one ``(boxes, scores, labels)`` per record.
    Returns {"metric", "mAP", "iou", "per_class": {name: {"ap", "num_gt", "num_det", "tp", "fp"}},
    "curves": {name: {"recall": [...], "precision": [...]}}}.
    """
    gt_records = list(gt_records)
    classes = list(classes)
    dets = check_detections(gt_records, detections, len(classes))
    per_class, curves = {}, {}
    for c, name in enumerate(classes):
        ap, info, curve = _class_ap(gt_records, dets, c, iou, use_07)
        per_class[name] = dict(ap=ap, **info)
        curves[name] = curve
    return {"metric": "voc07" if use_07 else "voc", "iou": float(iou),
            "mAP": mean_ignoring_none(v["ap"] for v in per_class.values()),
            "per_class": per_class, "curves": curves}


def _class_ap(gt_records, dets, cls, iou_threshold, use_07):
    npos = 0
    scores, image_idx, det_boxes = [], [], []
    gt_boxes, gt_difficult = [], []
    for i, (rec, (boxes, sc, labels)) in enumerate(zip(gt_records, dets)):
        gmask = rec.labels == cls
        gt_boxes.append(rec.boxes[gmask].astype(np.float64))
        gt_difficult.append(rec.difficult[gmask])
        npos += int(np.sum(~rec.difficult[gmask]))
        dmask = labels == cls
        scores.append(sc[dmask])
        det_boxes.append(boxes[dmask])
        image_idx.append(np.full(int(dmask.sum()), i))
    scores = np.concatenate(scores)
    image_idx = np.concatenate(image_idx).astype(np.int64)
    det_boxes = np.concatenate(det_boxes).reshape(-1, 4)
    order = np.argsort(-scores, kind="stable")
    scores, image_idx, det_boxes = scores[order], image_idx[order], det_boxes[order]

    # overlaps per image once, then the greedy pass in global score order
    overlaps = {}
    for i in np.unique(image_idx):
        sel = np.where(image_idx == i)[0]
        overlaps[int(i)] = (sel, iou_matrix(det_boxes[sel], gt_boxes[i]))
    row_of = np.zeros(len(scores), np.int64)
    for sel, _ in overlaps.values():
        row_of[sel] = np.arange(len(sel))

    tp = np.zeros(len(scores))
    fp = np.zeros(len(scores))
    taken = [np.zeros(len(g), bool) for g in gt_boxes]
    for d in range(len(scores)):
        i = int(image_idx[d])
        ov = overlaps[i][1][row_of[d]]
        if ov.size == 0:
            fp[d] = 1
            continue
        j = int(np.argmax(ov))
        if ov[j] >= iou_threshold:
            if gt_difficult[i][j]:
                continue  # ignored: neither TP nor FP
            if not taken[i][j]:
                tp[d] = 1
                taken[i][j] = True
            else:
                fp[d] = 1
        else:
            fp[d] = 1

    info = {"num_gt": npos, "num_det": int(len(scores)), "tp": int(tp.sum()), "fp": int(fp.sum())}
    if npos == 0:
        return None, info, {"recall": [], "precision": [], "scores": []}
    precision, recall = precision_recall(tp, fp, npos)
    ap = ap_11point(recall, precision) if use_07 else ap_area(recall, precision)
    curve = {"recall": recall.tolist(), "precision": precision.tolist(), "scores": scores.tolist()}
    return float(ap), info, curve
