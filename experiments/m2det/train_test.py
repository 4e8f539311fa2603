"""Train and test M2Det from a yaml config (datasets in DATASET.TRAIN / DATASET.VAL).

    python experiments/m2det/train_test.py --cfg experiments/m2det/cfgs/speedtrap_mobilenet.yaml
    python experiments/m2det/train_test.py --cfg ... --test-only          # evaluate the run's latest checkpoint

Relative dataset paths are resolved against the project root. Writes OUTPUT_DIR/results.json with
VOC mAP@0.5 (per class), COCO AP and the training wall time.
"""
import argparse
import json
import logging
import os
import time

from lib.config import PROJECT_ROOT
from lib.dataset import load_dataset
from m2det import engine
from m2det.cli import run_training

PATH_KEYS = ("ROOT", "ANNOTATIONS", "CLASSES", "IMAGES_DIR", "DESCRIPTIONS", "BASE_DIR", "PREFIX",
             "ANNOTATIONS_DIR", "LABELS_DIR")


def resolve_spec(spec):
    """Dataset spec with relative paths made absolute from the project root."""
    out = dict(spec)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            out[key] = os.path.normpath(os.path.join(PROJECT_ROOT, value))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--test-only", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = engine.build_config(args.cfg, args.overrides)
    out_dir = cfg.OUTPUT_DIR if os.path.isabs(cfg.OUTPUT_DIR) else os.path.join(PROJECT_ROOT, cfg.OUTPUT_DIR)
    cfg.OUTPUT_DIR = out_dir
    train_set = load_dataset(resolve_spec(cfg.DATASET.TRAIN)) if not args.test_only else None
    val_set = load_dataset(resolve_spec(cfg.DATASET.VAL)) if cfg.DATASET.VAL else None
    wall = None
    if not args.test_only:
        started = time.time()
        run_training(cfg, train_set, val_set)
        wall = time.time() - started
    if val_set is None:
        return 0
    net, run_cfg, classes = engine.load_trained_model(out_dir)
    detector = engine.Detector(net, run_cfg)
    started = time.time()
    detections = engine.detect_dataset(detector, val_set, batch_size=int(run_cfg.TRAIN.BATCH_SIZE))
    detect_seconds = time.time() - started
    result = engine.evaluate_detections(val_set, detections)
    summary = {"config": os.path.abspath(args.cfg), "train_wall_seconds": wall,
               "val_images": len(val_set), "detect_seconds_per_image": detect_seconds / max(1, len(val_set)),
               "mAP@0.5": result["voc"]["mAP"],
               "AP@0.5 per class": {k: v["ap"] for k, v in result["voc"]["per_class"].items()},
               "coco": {k: v for k, v in result["coco"].items() if isinstance(v, (int, float))}}
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
