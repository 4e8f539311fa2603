"""Evaluation: VOC AP, ImageNet VID AP (motion/area breakdown), COCO AP via pycocotools, plots.

Every metric takes the ground-truth records and one ``(boxes, scores, labels)`` tuple per record
(boxes in the project convention, labels 0-based) and returns a dict with "mAP" (None when no class
has ground truth), "per_class" and "curves"; see each module for its breakdowns.
"""
import os

from .coco import coco_ap
from .common import small_objects_only
from .detections_io import (DetectionsFormatError, detections_from_json, detections_to_json,
                            read_detections, write_detections)
from .plots import format_table, save_pr_curves, write_results_table
from .vid import motion_ious, vid_ap
from .voc import voc_ap

METRICS = ("voc07", "voc", "vid", "coco")

__all__ = ["voc_ap", "vid_ap", "coco_ap", "motion_ious", "evaluate", "save_pr_curves", "write_results_table",
           "format_table", "read_detections", "write_detections", "detections_from_json", "detections_to_json",
           "DetectionsFormatError", "METRICS", "small_objects_only"]


def evaluate(gt_dataset, detections, metric, **kwargs):
    """Evaluate detections on a ``DetectionDataset`` with 'voc07' | 'voc' | 'vid' | 'coco'.

    ``detections``: one (boxes, scores, labels) per record, or the path of a COCO results JSON file.
    Extra keyword arguments go to the metric (e.g. ``iou=0.7`` for VOC, ``motion=False`` for VID).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if isinstance(detections, (str, os.PathLike)):
        detections = read_detections(detections, gt_dataset)
    records, classes = gt_dataset.records, gt_dataset.classes
    if metric in ("voc07", "voc"):
        return voc_ap(records, detections, classes, use_07=(metric == "voc07"), **kwargs)
    if metric == "vid":
        return vid_ap(records, detections, classes, **kwargs)
    return coco_ap(records, detections, classes, **kwargs)
