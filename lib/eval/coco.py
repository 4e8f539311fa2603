"""COCO box AP through pycocotools (no re-implementation): gt and results are built in memory.

Mapping from our records: image ids are 1..N in record order, category ids are class index + 1,
boxes [x1, y1, x2, y2] -> [x1, y1, x2 - x1, y2 - y1], gt ``area`` = box area (records hold no
segmentation area, so the small/medium/large split uses box areas), and ``difficult`` boxes become
``iscrowd=1`` (the COCO reader maps iscrowd to difficult, so this round-trips; pycocotools then lets a
detection on them count neither as TP nor FP).
"""
import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .common import check_detections

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def coco_gt_dict(gt_records, classes, difficult_as_crowd=True):
    """COCO ground-truth dict of the records (ids as described in the module docstring)."""
    images, annotations = [], []
    for i, rec in enumerate(gt_records):
        images.append({"id": i + 1, "file_name": rec.image, "width": rec.width, "height": rec.height})
        for box, label, difficult in zip(rec.boxes.astype(np.float64), rec.labels, rec.difficult):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h,
                                "iscrowd": int(bool(difficult) and difficult_as_crowd)})
    categories = [{"id": c + 1, "name": name, "supercategory": "none"} for c, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results_list(detections):
    """COCO results list of aligned (boxes, scores, labels) tuples (image id = record index + 1)."""
    results = []
    for i, (boxes, scores, labels) in enumerate(detections):
        for box, score, label in zip(boxes, scores, labels):
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "score": float(score),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    return results


def _results_coco(coco_gt, results):
    if results:
        return coco_gt.loadRes(results)
    # pycocotools' loadRes cannot take an empty list: an empty results set is built directly
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                     "annotations": []}
    empty.createIndex()
    return empty


def coco_ap(gt_records, detections, classes, difficult_as_crowd=True, max_dets=100, verbose=False):
    """COCO AP@[.5:.95] ("mAP"), the 12 summary numbers, and per-class AP / AP50 with PR curves at IoU 0.5.

    gt_records: list of ``lib.dataset.Record``; detections: one ``(boxes, scores, labels)`` per record.
    pycocotools' own printing is captured unless ``verbose``; the summary text is under "summary".
    """
    gt_records = list(gt_records)
    classes = list(classes)
    dets = check_detections(gt_records, detections, len(classes))
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = coco_gt_dict(gt_records, classes, difficult_as_crowd)
        coco_gt.createIndex()
        coco_dt = _results_coco(coco_gt, coco_results_list(dets))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
    stats = [None if s < 0 else float(s) for s in evaluator.stats]

    # precision[T, R, K, A, M]: IoU thresholds x 101 recall points x classes x areas x maxDets; -1 = no gt
    precision = evaluator.eval["precision"]
    recall_points = evaluator.params.recThrs
    iou50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    per_class, curves = {}, {}
    num_gt = np.zeros(len(classes), np.int64)
    for rec in gt_records:
        np.add.at(num_gt, rec.labels[~rec.difficult] if difficult_as_crowd else rec.labels, 1)
    num_det = np.zeros(len(classes), np.int64)
    for _, _, labels in dets:
        np.add.at(num_det, labels, 1)
    for c, name in enumerate(classes):
        p_all = precision[:, :, c, 0, -1]
        p50 = precision[iou50, :, c, 0, -1]
        valid = p_all > -1
        per_class[name] = {"ap": float(np.mean(p_all[valid])) if np.any(valid) else None,
                           "ap50": float(np.mean(p50[p50 > -1])) if np.any(p50 > -1) else None,
                           "num_gt": int(num_gt[c]), "num_det": int(num_det[c])}
        curves[name] = ({"recall": recall_points.tolist(), "precision": p50.tolist()}
                        if np.any(p50 > -1) else {"recall": [], "precision": []})
    return {"metric": "coco", "mAP": stats[0], "stats": dict(zip(STAT_NAMES, stats)),
            "per_class": per_class, "curves": curves, "summary": summary.getvalue()}
