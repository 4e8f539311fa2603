"""Draw a dataset's annotations into PNGs; with an anchor configuration, colour each box by whether
some anchor matches it (keras-retinanet's debug tool for small-object problems).

    python -m lib.tools.draw --data PATH [--format F] [--split S] --out DIR [--limit N]
        [--anchors ANCHORS.yaml | RUN_DIR] [--iou 0.5] [--only-unmatched]

Without --anchors boxes are drawn in their class colour. With --anchors a box is GREEN when its best
anchor has IoU >= --iou and RED otherwise; DIR/anchor_coverage.json lists the unmatched boxes.
ANCHORS.yaml (keys upper case), one of:

  TYPE: rpn            # Faster R-CNN / R-FCN anchors (lib.anchors.rpn_base_anchors + shift_anchors)
  LEVELS: [{STRIDE: 16, BASE_SIZE: 16, SCALES: [8, 16, 32], RATIOS: [0.5, 1, 2]}]
  RESIZE: {SHORT: 600, MAX: 1000}   # optional: the image scale the network sees

  TYPE: retinanet      # keras-retinanet style: one size per level, shifted by its stride
  SIZES: [32, 64, 128, 256, 512]
  STRIDES: [8, 16, 32, 64, 128]
  RATIOS: [0.5, 1, 2]
  SCALES: [1.0, 1.26, 1.587]

  TYPE: ssd            # SSD / M2Det priors (lib.anchors.ssd_priors), image resized to IMAGE_SIZE square
  IMAGE_SIZE: 320
  FEATURE_SIZES: [40, 20, 10, 5, 3, 1]
  STEPS: [8, 16, 32, 64, 107, 320]
  MIN_SIZES: [25.6, 48, 105.6, 163.2, 220.8, 278.4]
  MAX_SIZES: [48, 105.6, 163.2, 220.8, 278.4, 336]
  ASPECT_RATIOS: [[2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]]

  TYPE: multiscale     # TF OD API SSD anchors (lib.anchors.multiscale_anchors), e.g. LSTM-SSD
  IMAGE_SIZE: 256      # or [H, W]; FEATURE_SIZES entries then [h, w]
  FEATURE_SIZES: [8, 4, 2, 1, 1]
"""
import argparse
import json
import math
import os
import sys

import cv2
import numpy as np
import yaml

from lib.dataset import DatasetError, ImageReadError, read_image
from lib.dataset.cli import add_dataset_args, dataset_from_args

GREEN, RED = (0, 200, 0), (230, 0, 0)


def _palette(k):
    rng = np.random.default_rng(k * 7919 + 1)
    return tuple(int(v) for v in rng.integers(60, 255, 3))


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
    from lib import anchors as A
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
    from lib.bbox import box_iou
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


def run_anchor_spec(run_dir):
    """The anchor configuration of a recipe run folder (its detector.json / family.yaml)."""
    from lib.detectors import anchor_spec, read_run
    _, _, cfg, fam, classes = read_run(run_dir)
    return anchor_spec(cfg.DETECTOR, fam, len(classes))


def draw_record(image, rec, classes, matched=None, best=None):
    canvas = np.ascontiguousarray(image.copy())
    thick = max(1, int(round(min(rec.width, rec.height) / 400)))
    for k, (b, l) in enumerate(zip(rec.boxes, rec.labels)):
        color = _palette(int(l)) if matched is None else (GREEN if matched[k] else RED)
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), color, thick)
        text = classes[int(l)] + (f" {best[k]:.2f}" if best is not None else "")
        cv2.putText(canvas, text, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, color, thick,
                    cv2.LINE_AA)
    return canvas


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.draw", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--out", required=True, help="folder for the PNGs")
    ap.add_argument("--limit", type=int, default=None, help="draw at most N images")
    ap.add_argument("--anchors", default=None, help="anchor configuration yaml (see above), or a recipe run folder "
                    "(experiments/custom/train.py OUTPUT_DIR): that detector's anchors")
    ap.add_argument("--iou", type=float, default=0.5, help="IoU an anchor needs to match a box (default 0.5)")
    ap.add_argument("--only-unmatched", action="store_true", help="with --anchors, write only images with a red box")
    args = ap.parse_args(argv)
    cfg = None
    if args.anchors and os.path.isdir(args.anchors):
        cfg = run_anchor_spec(args.anchors)
    elif args.anchors:
        with open(args.anchors, "r", encoding="utf-8") as f:
            cfg = {str(k).upper(): v for k, v in (yaml.safe_load(f) or {}).items()}
    try:
        ds = dataset_from_args(args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    from tqdm import tqdm
    records = ds.records[:args.limit] if args.limit else ds.records
    cache, coverage, written, total, matched_total = {}, [], 0, 0, 0
    for rec in tqdm(records, desc="draw", unit="img"):
        matched = best = None
        if cfg is not None:
            try:
                best, matched = anchor_match(cfg, rec.boxes, rec.width, rec.height, args.iou, args.anchors, cache)
            except DatasetError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            total += len(matched)
            matched_total += int(matched.sum())
            for k in np.nonzero(~matched)[0]:
                b = rec.boxes[k]
                coverage.append({"image_id": rec.image_id, "class": ds.classes[int(rec.labels[k])],
                                 "box": [float(v) for v in b], "best_iou": float(best[k])})
            if args.only_unmatched and matched.all():
                continue
        try:
            image = read_image(rec.image)
        except ImageReadError as exc:
            print(f"warning: {exc}; skipped", file=sys.stderr)
            continue
        canvas = draw_record(image, rec, ds.classes, matched, best)
        name = rec.image_id.replace("/", "__").replace("\\", "__") + ".png"
        cv2.imwrite(os.path.join(args.out, name), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        written += 1
    msg = f"wrote {written} PNGs to {args.out}"
    if cfg is not None:
        with open(os.path.join(args.out, "anchor_coverage.json"), "w", encoding="utf-8") as f:
            json.dump({"boxes": total, "matched": matched_total, "iou": args.iou, "unmatched": coverage}, f, indent=1)
        msg += f"; {matched_total}/{total} boxes have an anchor with IoU >= {args.iou}"
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
