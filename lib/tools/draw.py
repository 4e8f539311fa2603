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

  TYPE: ssd            # SSD / M2Det priors (lib.anchors.ssd_priors), image resized to IMAGE_SIZE
  IMAGE_SIZE: 320      # or [H, W]; FEATURE_SIZES entries and STEPS then [h, w]
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
import os
import sys

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from lib.anchor_coverage import anchor_match
from lib.cli import check_fraction, output_folder, user_errors_exit_2
from lib.config import ConfigError
from lib.dataset import ImageReadError, read_image
from lib.dataset.cli import add_dataset_args, dataset_from_args
from lib.family import read_run
from lib.viz import draw_record


def run_anchor_spec(run_dir):
    """The anchor configuration of a training run folder, from its detector family (lib.family)."""
    run, _, family, cfg = read_run(run_dir)
    return family.anchor_spec(cfg, len(run.classes))


def read_anchor_yaml(path):
    """An anchor configuration file (keys upper-cased); a BOM is fine (Excel / Notepad), invalid yaml or
    a file that is not a mapping is a ConfigError naming the file (and line)."""
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"--anchors {path}{where}: invalid yaml: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--anchors {path}: expected a mapping with TYPE (rpn, retinanet, ssd, multiscale), "
                          f"got {type(data).__name__}")
    return {str(k).upper(): v for k, v in data.items()}


@user_errors_exit_2
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
    check_fraction(args.iou, "--iou", low_open=True)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit {args.limit}: must be at least 1")
    cfg = None
    if args.anchors and os.path.isdir(args.anchors):
        cfg = run_anchor_spec(args.anchors)
    elif args.anchors:
        cfg = read_anchor_yaml(args.anchors)
    output_folder(args.out, "--out")
    ds = dataset_from_args(args)
    records = ds.records[:args.limit] if args.limit else ds.records
    cache, coverage, written, total, matched_total = {}, [], 0, 0, 0
    for rec in tqdm(records, desc="draw", unit="img"):
        matched = best = None
        if cfg is not None:
            best, matched = anchor_match(cfg, rec.boxes, rec.width, rec.height, args.iou, args.anchors, cache)
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
