"""Evaluation: VOC AP, ImageNet VID AP (motion/area breakdown), COCO AP via pycocotools, plots."""
from .coco import coco_ap  # noqa: F401
from .vid import vid_ap  # noqa: F401
from .voc import voc_ap  # noqa: F401
