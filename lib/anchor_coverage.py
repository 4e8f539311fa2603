"""Do a detector's anchors fit the training boxes at the scale the network sees them?

An anchor configuration (what ``lib.tools.draw --anchors`` reads, and what each detector family's
``anchor_spec`` returns) describes the anchors of one network: TYPE rpn / retinanet (Faster R-CNN /
R-FCN / RetinaNet anchors on a keep-ratio resized image), ssd (SSD / M2Det priors on a square resize)
or multiscale (TF-OD anchors, LSTM-SSD). ``anchor_match`` gives each box's best anchor IoU;
``anchor_coverage`` summarises a dataset by box height, and ``coverage_warnings`` says which heights
train with poor targets.
"""
import math

import numpy as np

from lib import anchors as A
from lib.bbox import box_iou
from lib.dataset.io import DatasetError

COVERAGE_BANDS = (16, 32, 64)   # box height bands (network pixels) of the coverage report
COVERAGE_WARN = 0.5             # warn when fewer training boxes of a band than this have a matching anchor


def _req(cfg, key, path):
    if key not in cfg:
        raise DatasetError(f"{path}: anchor config needs key {key}")
    return cfg[key]

def network_scale(cfg, width, height):
    """(sx, sy): image pixels -> the pixels anchors live in."""
    kind = cfg["TYPE"].lower()
    if kind in ("ssd", "multiscale"):
        size = cfg["IMAGE_SIZE"]
        sh, sw = (size, size) if np.isscalar(size) else size
        return sw / width, sh / height
    resize = cfg.get("RESIZE")
    if resize:
        scale = resize["SHORT"] / min(width, height)
        if "MAX" in resize and round(scale * max(width, height)) > resize["MAX"]:
            scale = resize["MAX"] / max(width, height)
        return scale, scale
    return 1.0, 1.0

def build_anchors(cfg, width, height, path="anchors"):
    """Anchors (P,4) in our convention (x2 exclusive) for an image of width x height in the network's
    pixel space (the space network_scale maps to)."""
    kind = str(_req(cfg, "TYPE", path)).lower()
    if kind in ("rpn", "retinanet"):
        if kind == "retinanet":
            levels = [{"STRIDE": st, "BASE_SIZE": sz, "SCALES": cfg.get("SCALES", [1.0]),
                       "RATIOS": cfg.get("RATIOS", [0.5, 1, 2])}
                      for sz, st in zip(_req(cfg, "SIZES", path), _req(cfg, "STRIDES", path))]
        else:
            levels = _req(cfg, "LEVELS", path)
        out = []
        for lv in levels:
            stride = lv["STRIDE"]
            base = A.rpn_base_anchors(lv.get("BASE_SIZE", stride), lv.get("SCALES", (8, 16, 32)),
                                      lv.get("RATIOS", (0.5, 1, 2)))
            if kind == "retinanet":  # centre the level's anchors in each stride cell
                base = base + (stride - lv.get("BASE_SIZE", stride)) / 2.0
            a = A.shift_anchors(base, int(math.ceil(height / stride)), int(math.ceil(width / stride)), stride)
            a = a.copy()
            a[:, 2:] += 1.0  # MultiProposal's inclusive x2/y2 -> our exclusive convention
            out.append(a)
        return np.concatenate(out)
    if kind == "ssd":
        size = _req(cfg, "IMAGE_SIZE", path)
        pri = A.ssd_priors(size, _req(cfg, "FEATURE_SIZES", path), _req(cfg, "STEPS", path),
                           _req(cfg, "MIN_SIZES", path), _req(cfg, "MAX_SIZES", path),
                           _req(cfg, "ASPECT_RATIOS", path), clip=cfg.get("CLIP", True))
    elif kind == "multiscale":
        pri = A.multiscale_anchors(_req(cfg, "FEATURE_SIZES", path), min_scale=cfg.get("MIN_SCALE", 0.2),
                                   max_scale=cfg.get("MAX_SCALE", 0.95),
                                   aspect_ratios=tuple(cfg.get("ASPECT_RATIOS", (1.0, 2.0, 0.5, 3.0, 1.0 / 3))),
                                   reduce_lowest=cfg.get("REDUCE_LOWEST", True),
                                   image_size=_req(cfg, "IMAGE_SIZE", path))
    else:
        raise DatasetError(f"{path}: anchor TYPE must be rpn|retinanet|ssd|multiscale, got {kind!r}")
    return pri * np.array([width, height, width, height], np.float32)

def anchor_match(cfg, boxes, width, height, iou=0.5, path="anchors", cache=None):
    """Best IoU of each box (image pixels) with the anchors; returns (best_iou (N,), matched (N,) bool)."""
    if not len(boxes):
        return np.zeros(0), np.zeros(0, bool)
    sx, sy = network_scale(cfg, width, height)
    net_w, net_h = int(round(width * sx)), int(round(height * sy))
    key = (net_w, net_h)
    if cache is not None and key in cache:
        anchors = cache[key]
    else:
        anchors = build_anchors(cfg, net_w, net_h, path).astype(np.float32)
        if cache is not None:
            cache[key] = anchors
    scaled = (np.asarray(boxes, np.float32) * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
    best = box_iou(scaled, anchors).max(axis=1)
    return best, best >= iou


def best_prior_iou(boxes, priors):
    """Best IoU of each box with ``priors`` (the same coordinates: pixels or normalised)."""
    if len(boxes) == 0:
        return np.zeros(0, np.float64)
    return box_iou(np.asarray(boxes, np.float64), np.asarray(priors, np.float64)).max(axis=1)


def anchor_coverage(dataset, spec, iou=0.5, bands=COVERAGE_BANDS):
    """Share of the dataset's boxes whose best anchor has IoU >= ``iou``, per box-height band in the
    pixels the network sees (after its resize). Returns {"iou", "boxes", "matched", "bands": [...]}."""
    best, heights, cache = [], [], {}
    for rec in dataset.records:
        if not rec.num_boxes:
            continue
        b, _ = anchor_match(spec, rec.boxes, rec.width, rec.height, iou, cache=cache)
        sy = network_scale(spec, rec.width, rec.height)[1]
        best.append(b)
        heights.append((rec.boxes[:, 3] - rec.boxes[:, 1]) * sy)
    best = np.concatenate(best) if best else np.zeros(0)
    heights = np.concatenate(heights) if heights else np.zeros(0)
    edges = [0.0] + [float(v) for v in bands] + [math.inf]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (heights >= lo) & (heights < hi)
        rows.append({"min_height": lo, "max_height": None if math.isinf(hi) else hi, "boxes": int(sel.sum()),
                     "matched": int((best[sel] >= iou).sum())})
    return {"iou": float(iou), "boxes": int(len(best)), "matched": int((best >= iou).sum()), "bands": rows}

def coverage_warnings(coverage, min_boxes=10, warn_below=COVERAGE_WARN):
    """Messages for the height bands (with at least ``min_boxes`` boxes) that the anchors match poorly."""
    out = []
    for row in coverage["bands"]:
        if row["boxes"] >= min_boxes and row["matched"] < warn_below * row["boxes"]:
            band = (f"{row['min_height']:g}-{row['max_height']:g} px" if row["max_height"] is not None
                    else f">= {row['min_height']:g} px")
            out.append(f"anchors match only {row['matched']} of the {row['boxes']} training boxes {band} high "
                       f"(best IoU >= {coverage['iou']:g} after the network's resize); those boxes train "
                       f"with poor targets. Smaller or denser anchors (a stride-8 level), training tiles at "
                       f"native resolution or a larger input help; `python -m lib.tools.draw --anchors RUN_DIR` "
                       f"shows the boxes")
    return out
