"""Evaluation: VOC AP, ImageNet VID AP (motion/area breakdown), COCO AP via pycocotools, plots."""
from .voc import voc_ap  # noqa: F401
