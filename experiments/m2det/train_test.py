"""Train and test M2Det from a yaml config (datasets in DATASET.TRAIN / DATASET.VAL).

    python experiments/m2det/train_test.py --cfg experiments/m2det/cfgs/speedtrap_mobilenet.yaml
    python experiments/m2det/train_test.py --cfg ... --test-only          # evaluate the run's latest checkpoint

Relative dataset paths are resolved against the project root. Writes OUTPUT_DIR/results.json with
VOC mAP@0.5 (per class), COCO AP and the training wall time. Under ``python -m lib.tools.launch`` with
``--set TRAIN.KVSTORE=dist_sync`` every worker trains and rank 0 alone writes and evaluates.
A mistake in the config, the data or a checkpoint: one line ``error: ...`` and exit code 2 (lib.cli).
"""
import argparse
import json
import logging
import os
import sys
import time

from lib.cli import user_errors_exit_2
from lib.config import project_path
from lib.dataset.specs import load_datasets
from lib.fileio import atomic_write_json
from lib.runtime import relaunch_with_huge_pages
from m2det.config import load as load_config
from m2det.inference import Detector, detect_dataset, evaluate_detections, load_trained_model
from m2det.train import run_training


@user_errors_exit_2
def main(argv=None):
    relaunch_with_huge_pages(argv)   # faster CPU training (lib.runtime)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--test-only", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train_test(args)


def train_test(args):
    cfg = load_config(args.cfg, args.overrides)
    out_dir = project_path(cfg.OUTPUT_DIR)
    cfg.OUTPUT_DIR = out_dir
    source = cfg.CONFIG_FILE
    train_set = None if args.test_only else load_datasets(cfg.DATASET.TRAIN, source=source, key="DATASET.TRAIN")
    val_set = load_datasets(cfg.DATASET.VAL, source=source, key="DATASET.VAL")
    wall = None
    if not args.test_only:
        started = time.time()
        summary = run_training(cfg, train_set, val_set)
        wall = time.time() - started
        if summary["rank"] != 0:     # a worker of a distributed job: rank 0 evaluates and writes
            return 0
    if val_set is None:
        return 0
    net, run_cfg, classes = load_trained_model(out_dir)
    detector = Detector(net, run_cfg)
    started = time.time()
    detections = detect_dataset(detector, val_set, batch_size=int(run_cfg.TRAIN.BATCH_SIZE))
    detect_seconds = time.time() - started
    result = evaluate_detections(val_set, detections)
    summary = {"config": os.path.abspath(args.cfg), "train_wall_seconds": wall,
               "val_images": len(val_set), "detect_seconds_per_image": detect_seconds / max(1, len(val_set)),
               "mAP@0.5": result["voc"]["mAP"],
               "AP@0.5 per class": {k: v["ap"] for k, v in result["voc"]["per_class"].items()},
               "coco": {k: v for k, v in result["coco"].items() if isinstance(v, (int, float))}}
    atomic_write_json(os.path.join(out_dir, "results.json"), summary, sort_keys=False)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
