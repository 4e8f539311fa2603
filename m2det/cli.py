"""Console scripts of the M2Det toolkit (keras-retinanet style).

    m2det-train [options] {csv,pascal,coco,kitti,oid} ...     train (snapshots, resume, TensorBoard, eval)
    m2det-evaluate --model M [options] {csv,...} ...          mAP@0.5 per class + COCO AP
    m2det-convert-model MODEL OUT_DIR [--onnx]                training checkpoint -> inference artifact
    m2det-debug [options] {csv,...} ...                       anchor coverage drawings (green / red)

Global options come before the dataset sub-command, as in keras-retinanet. A user error (config,
dataset, checkpoint, path) is one 'error:' line and exit status 2 (lib.cli); a bug shows its traceback.
"""
import argparse
import json
import logging
import os
import sys

import cv2
import numpy as np

from lib.anchor_coverage import anchor_match
from lib.cli import UsageError, user_errors_exit_2
from lib.dataset import Record
from lib.dataset.io import DatasetError, read_image
from lib.fileio import atomic_write_json
from lib.runtime import relaunch_with_huge_pages
from lib.tools.infer import ExportedDetector
from lib.viz import draw_detections, draw_ground_truth, draw_record, save_image

from .config import load as load_config
from .data import TrainSample, build_augmentation
from .datasets import add_dataset_subparsers, load_split, split_source
from .detector import build_network, prior_spec
from .export import export_inference_model
from .inference import (
    build_detector,
    detect_dataset,
    evaluate_detections,
    filter_detections,
    load_trained_model,
    per_class_values,
)
from .train import run_training

logger = logging.getLogger("m2det")
# m2det-debug without a window writes here (relative to the current folder: output/ of the project root
# when run from there, as the README's commands are)
DEBUG_DIR = os.path.join("output", "m2det", "debug")


def _common_model_options(parser):
    parser.add_argument("--cfg", help="yaml config (merged over m2det.config.DEFAULTS)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set MODEL.NUM_LEVELS=4 (repeatable)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad annotation instead of warning and skipping it")


def _overrides(args, mapping):
    """--set overrides plus the explicit options that were given (not None)."""
    out = list(args.overrides)
    for option, key in mapping.items():
        value = getattr(args, option, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, (list, bool)) else value}")
    return out


@user_errors_exit_2
def _run(fn, argv):
    """Run a command: user errors (lib.cli) are one 'error:' line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fn(argv)
    return 0


# ----------------------------------------------------------------------------------------------
# m2det-train

def train_parser():
    p = argparse.ArgumentParser(prog="m2det-train", description="Train M2Det (keras-retinanet style).")
    _common_model_options(p)
    p.add_argument("--backbone", help="vgg16 | vgg16_bn | resnet50 | resnet101 | mobilenetv2")
    p.add_argument("--input-size", type=int, help="square input size (320, 512, 800, ...); a non-square "
                                                  "one: --set INPUT.SIZE=[H,W]")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="at most this many iterations per epoch")
    p.add_argument("--lr", type=float, help="base learning rate (after warm-up)")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--lr-steps", type=float, nargs="+", help="epochs where lr is multiplied by 0.1")
    p.add_argument("--freeze-backbone", action="store_true", default=None)
    p.add_argument("--random-transform", dest="random_transform", action="store_true", default=None,
                   help="SSD augmentation: photometric, expand, crop, flip")
    p.add_argument("--no-random-transform", dest="random_transform", action="store_false")
    p.add_argument("--weights", help="backbone weights (.params, e.g. gluoncv ImageNet weights)")
    p.add_argument("--snapshot", help="initialise from this checkpoint (run folder / ckpt JSON / .params)")
    p.add_argument("--snapshot-path", help="run folder: checkpoints, logs; an existing run resumes")
    p.add_argument("--tensorboard-dir", help="also expose the TensorBoard logs here (symlink to RUN/tb)")
    p.add_argument("--no-evaluation", action="store_true", help="no mAP on the validation set")
    p.add_argument("--workers", type=int, help="data loading worker processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--loss", choices=("softmax", "focal"))
    p.add_argument("--context", help="cpu | gpu | gpu:N | gpu:0,gpu:1 (data parallel); several hosts: "
                                     "--set TRAIN.KVSTORE=dist_sync under python -m lib.tools.launch")
    add_dataset_subparsers(p, for_training=True)
    return p


def train(argv=None):
    args = train_parser().parse_args(argv)
    overrides = _overrides(args, {
        "backbone": "MODEL.BACKBONE", "input_size": "INPUT.SIZE", "batch_size": "TRAIN.BATCH_SIZE",
        "epochs": "TRAIN.EPOCHS", "steps": "TRAIN.MAX_BATCHES", "lr": "TRAIN.LR",
        "warmup_epochs": "TRAIN.WARMUP_EPOCHS", "lr_steps": "TRAIN.LR_STEPS",
        "freeze_backbone": "TRAIN.FREEZE_BACKBONE", "random_transform": "TRAIN.AUGMENT",
        "weights": "PRETRAINED", "snapshot_path": "OUTPUT_DIR", "workers": "TRAIN.WORKERS",
        "seed": "TRAIN.SEED", "loss": "LOSS.TYPE", "context": "CONTEXT"})
    if args.no_evaluation:
        overrides.append("TRAIN.EVALUATE=false")
    cfg = load_config(args.cfg, overrides)
    train_set = load_split(args, "train", args.strict)
    if train_set is not None:   # the dataset named as given on the command line
        train_set.require_boxes(f"training set ({split_source(args, 'train')})",
                                allow_background_only=cfg.DATASET.ALLOW_BACKGROUND_ONLY)
    return run_training(cfg, train_set, load_split(args, "val", args.strict),
                        snapshot=args.snapshot, tensorboard_dir=args.tensorboard_dir)


def train_main(argv=None):
    relaunch_with_huge_pages(argv)   # faster CPU training (lib.runtime)
    return _run(train, argv)


# ----------------------------------------------------------------------------------------------
# m2det-evaluate

def _input_size(text):
    """'512' -> 512, '384x672' -> [384, 672] (H x W)."""
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an input size S or HxW (e.g. 512, 384x672)")
    return values[0] if len(values) == 1 else values


def evaluate_parser():
    p = argparse.ArgumentParser(prog="m2det-evaluate", description="Evaluate a trained or converted M2Det.")
    p.add_argument("--model", required=True,
                   help="training run folder / checkpoint, or a converted model folder (meta.json)")
    p.add_argument("--score-threshold", type=float, default=0.05)
    p.add_argument("--iou-threshold", type=float, default=0.5, help="IoU for a true positive")
    p.add_argument("--max-detections", type=int, default=100, help="per image")
    p.add_argument("--nms", choices=("hard", "linear", "gaussian"), default=None,
                   help="NMS of a training checkpoint (converted models use their built-in hard NMS)")
    p.add_argument("--no-coco", action="store_true", help="skip COCO AP (pycocotools)")
    p.add_argument("--weighted-average", action="store_true",
                   help="also report the mAP weighted by the number of instances per class")
    p.add_argument("--test-sizes", type=_input_size, nargs="+", metavar="S|HxW",
                   help="multi-scale test: input sizes whose detections are merged by NMS "
                        "(training checkpoints only; TEST.SIZES), e.g. --test-sizes 320 512 or 384x672 432x768")
    p.add_argument("--flip", action="store_true",
                   help="also detect on the mirrored images and merge (training checkpoints only; TEST.FLIP)")
    p.add_argument("--save-path", help="write annotated images here")
    p.add_argument("--results", help="write detections as COCO results JSON")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--strict", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_dataset_subparsers(p, for_training=False)
    return p


def evaluate(argv=None):
    args = evaluate_parser().parse_args(argv)
    dataset = load_split(args, "val", args.strict)
    if dataset is None or len(dataset) == 0:
        raise DatasetError(f"{dataset.name if dataset is not None else 'the dataset'}: the evaluation set has no image")
    if os.path.isfile(os.path.join(args.model, "meta.json")):
        if args.test_sizes or args.flip:
            raise UsageError("--test-sizes / --flip need a training checkpoint: a converted model has one "
                             "input size and no mirrored pass")
        detections, classes = _detect_exported(args.model, dataset, args.batch_size)
    else:
        overrides = list(args.overrides) + [f"TEST.SCORE_THRESH={min(args.score_threshold, 1.0)}",
                                            f"TEST.MAX_PER_IMAGE={args.max_detections}"]
        if args.test_sizes:
            overrides.append("TEST.SIZES=" + json.dumps(args.test_sizes))
        if args.flip:
            overrides.append("TEST.FLIP=true")
        net, cfg, classes = load_trained_model(args.model, overrides=overrides)
        detector = build_detector(net, cfg, nms=args.nms)
        detections = detect_dataset(detector, dataset, batch_size=args.batch_size, progress=True)
    if list(classes) != list(dataset.classes):
        raise DatasetError(f"--model {args.model}: the model's classes {classes} differ from the dataset's "
                           f"{dataset.classes}")
    detections = filter_detections(detections, args.score_threshold, args.max_detections)
    result = evaluate_detections(dataset, detections, iou=args.iou_threshold, coco=not args.no_coco)
    voc = result["voc"]
    counts = dataset.class_counts()
    for name, ap in zip(dataset.classes, per_class_values(voc, dataset.classes)):
        print(f"{counts.get(name, 0):6d} instances of class {name} with average precision: "
              f"{'n/a' if ap is None else f'{ap:.4f}'}")
    print(f"mAP@{args.iou_threshold:g}: {_fmt(voc['mAP'])}")
    if args.weighted_average:
        print(f"weighted mAP@{args.iou_threshold:g}: {_fmt(voc['weighted_mAP'])}")
    if "coco" in result:
        print(f"COCO AP@[.5:.95]: {_fmt(result['coco'].get('mAP'))}")
    if args.results:
        _write_results(args.results, dataset, detections)
    if args.save_path:
        _save_annotated(args.save_path, dataset, detections)
    return result


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"


def _detect_exported(folder, dataset, batch_size):
    """Detections of a converted model through lib.tools.infer (no training code involved)."""
    model = ExportedDetector(folder)
    out = []
    for record in dataset.records:
        boxes, scores, labels = model(cv2.imread(record.image))
        out.append((boxes.astype(np.float32), scores.astype(np.float32), labels))
    return out, model.classes


def _write_results(path, dataset, detections):
    rows = []
    for record, (boxes, scores, labels) in zip(dataset.records, detections):
        for box, score, label in zip(boxes, scores, labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            rows.append({"image_id": record.image_id, "category": dataset.classes[int(label)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)


def _save_annotated(folder, dataset, detections):
    """Ground truth and detections drawn with lib.viz, one JPEG per image."""
    os.makedirs(folder, exist_ok=True)
    for record, (boxes, scores, labels) in zip(dataset.records, detections):
        canvas = draw_ground_truth(read_image(record.image), record.boxes, record.labels, dataset.classes,
                                   difficult=record.difficult)
        canvas = draw_detections(canvas, boxes, scores, labels, dataset.classes, threshold=0.0)
        save_image(os.path.join(folder, record.image_id.replace("/", "_") + ".jpg"), canvas)


def evaluate_main(argv=None):
    return _run(evaluate, argv)


# ----------------------------------------------------------------------------------------------
# m2det-convert-model

def convert_parser():
    p = argparse.ArgumentParser(prog="m2det-convert-model",
                                description="Training checkpoint -> inference model (decode, clip, NMS inside).")
    p.add_argument("model", help="training run folder, ckpt-*.json or .params of an m2det-train run")
    p.add_argument("output", help="output folder (model-symbol.json, model-0000.params, meta.json)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (NMS included)")
    p.add_argument("--score-threshold", type=float, help="per-class score threshold in the graph")
    p.add_argument("--nms-iou", type=float)
    p.add_argument("--max-detections", type=int, help="per image")
    p.add_argument("--max-per-class", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def convert(argv=None):
    args = convert_parser().parse_args(argv)
    overrides = _overrides(args, {"score_threshold": "TEST.SCORE_THRESH", "nms_iou": "TEST.NMS_IOU",
                                  "max_detections": "TEST.MAX_PER_IMAGE",
                                  "max_per_class": "TEST.MAX_PER_CLASS"})
    net, cfg, classes = load_trained_model(args.model, overrides=overrides)
    if cfg.TEST.NMS_METHOD != "hard":
        logger.warning("TEST.NMS_METHOD is %r: the exported graph uses hard NMS (soft-NMS has no graph "
                       "operator); use m2det-evaluate --nms %s on the checkpoint for soft-NMS",
                       cfg.TEST.NMS_METHOD, cfg.TEST.NMS_METHOD)
    paths = export_inference_model(net, cfg, classes, args.output, onnx=args.onnx)
    print(json.dumps(paths))
    return paths


def convert_main(argv=None):
    return _run(convert, argv)


# ----------------------------------------------------------------------------------------------
# m2det-debug

def debug_parser():
    p = argparse.ArgumentParser(prog="m2det-debug",
                                description="Draw annotations green when a prior covers them (IoU >= "
                                            "LOSS.POS_IOU after the resize to the input size) and red when none does.")
    _common_model_options(p)
    p.add_argument("--input-size", type=int)
    p.add_argument("--random-transform", action="store_true", help="apply the training augmentation first")
    p.add_argument("--output-dir", help="write the drawings here (default: show them in a window; without a "
                                        f"display, or with --no-gui, write them to {DEBUG_DIR})")
    p.add_argument("--no-gui", action="store_true", help="no window: write the drawings to --output-dir "
                                                         f"(default {DEBUG_DIR}), as keras-retinanet's flag")
    p.add_argument("--limit", type=int, default=0, help="at most this many images")
    p.add_argument("--seed", type=int, default=0)
    add_dataset_subparsers(p, for_training=False)
    return p


def has_display():
    """False on Linux without an X11 or Wayland display (Qt would abort the process when asked for a
    window); other systems are taken to have one."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def debug_output_dir(args):
    """Where the drawings go: --output-dir; with --no-gui or without a display, DEBUG_DIR (said on
    stderr); None: show them in a window."""
    if args.output_dir:
        return args.output_dir
    if args.no_gui:
        return DEBUG_DIR
    if not has_display():
        print(f"note: no display (neither DISPLAY nor WAYLAND_DISPLAY is set): the drawings go to {DEBUG_DIR} "
              f"instead of a window (--output-dir sets another folder)", file=sys.stderr, flush=True)
        return DEBUG_DIR
    return None


def debug(argv=None):
    args = debug_parser().parse_args(argv)
    overrides = _overrides(args, {"input_size": "INPUT.SIZE"})
    cfg = load_config(args.cfg, overrides)
    output_dir = debug_output_dir(args)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)       # an unusable folder is an error before any work
    dataset = load_split(args, "val", args.strict)
    if dataset is None or len(dataset) == 0:
        raise DatasetError(f"{dataset.name if dataset is not None else 'the dataset'}: the dataset has no image")
    net = build_network(cfg, max(1, len(dataset.classes)))  # shape inference only, no weights
    spec = prior_spec(net)
    rng = np.random.RandomState(args.seed)
    augment = build_augmentation(cfg, rng=rng) if args.random_transform else None
    sample = TrainSample(cfg, net.priors, augment)
    threshold = float(cfg.LOSS.POS_IOU)
    covered_total, boxes_total, uncovered = 0, 0, []
    records = dataset.records[:args.limit] if args.limit else dataset.records
    cache = {}
    for record in records:
        image, boxes = sample.load(record)
        h, w = image.shape[:2]
        shown = Record(image=record.image, width=w, height=h, boxes=boxes[:, :4],
                       labels=boxes[:, 4].astype(np.int64), image_id=record.image_id)
        # anchor_match resizes the boxes to the input size as the network does
        best, covered = anchor_match(spec, shown.boxes, w, h, iou=threshold, cache=cache)
        covered_total += int(covered.sum())
        boxes_total += len(best)
        uncovered += [{"image_id": record.image_id, "box": [float(v) for v in b], "best_iou": float(i)}
                      for b, i, ok in zip(shown.boxes, best, covered) if not ok]
        canvas = cv2.cvtColor(draw_record(image, shown, dataset.classes, covered, best), cv2.COLOR_RGB2BGR)
        if output_dir:
            cv2.imwrite(os.path.join(output_dir, record.image_id.replace("/", "_") + ".jpg"), canvas)
        else:
            cv2.imshow("m2det-debug (any key: next, q: quit)", canvas)
            if cv2.waitKey() & 0xFF == ord("q"):
                break
    summary = {"images": len(records), "boxes": boxes_total, "covered": covered_total,
               "uncovered": boxes_total - covered_total, "pos_iou": threshold}
    if output_dir:
        atomic_write_json(os.path.join(output_dir, "anchor_coverage.json"), dict(summary, unmatched=uncovered))
        summary["output_dir"] = output_dir
    print(json.dumps(summary))
    return summary


def debug_main(argv=None):
    return _run(debug, argv)
