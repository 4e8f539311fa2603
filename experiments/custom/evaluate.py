"""Evaluate a recipe model on DATASET.VAL: mAP@0.5, AP of small objects, false positives per image.

    python experiments/custom/evaluate.py --model RUN_DIR_OR_EXPORT_DIR [--cfg CFG] [--tiling on|off]
                                          [--out DIR] [--save-images N] [--image-thresh T] [--int8 N]

--model is a training run folder (or a checkpoint in it: the model runs in this process, video
families stream each snippet; with EVAL.CONTEXT 'video', the default, the whole snippet even where the
frame list keeps only some of its frames, and only the listed frames are scored) or an exported artifact folder (meta.json: run through lib.tools.infer's
runner, as on the device). ``--set OVERRIDES.<family key>=value`` changes the run's family config for
this evaluation only, e.g. ``OVERRIDES.TEST.K=0`` (FGFA without aggregation) or
``OVERRIDES.INPUT.SHORT_SIDE=1080`` (R-FCN / FGFA tested on upscaled frames). --cfg gives the recipe config (default: the run's recipe.yaml; needed for an
exported artifact) for DATASET.VAL, TILING.INFER and EVAL. With tiling, each frame is detected by sliding
tiles merged with NMS (lib.tiling.detect_tiled). ``--int8 N`` quantizes a training run's model in this
process (LoadedModel.quantize_int8), calibrated on N frames spread over DATASET.TRAIN: the int8 path of
the families that are not exported as one artifact (lstm_ssd, fgfa; also ssdlite, rfcn); exported
artifacts are quantized with lib.tools.quantize.

Writes OUT/detections.json (COCO results), OUT/metrics.json, OUT/results.md, PR curves (OUT/pr_*.png)
and with --save-images N annotated frames (OUT/images/):
- mAP@0.5 (VOC, lib.eval.voc_ap) on all validation frames;
- AP@0.5 of small objects: boxes lower than EVAL.SMALL_HEIGHT px count, taller ones are ignored
  like VOC "difficult" boxes (a detection on them is neither right nor wrong);
- false positives per image at each EVAL.THRESHOLDS score on all frames, on the frames with objects
  (without background images) and on the background frames (lib.eval.false_positives);
- mAP@0.5 and small-object AP per snippet (video) with boxes;
- why small objects are missed (lib.eval.misses): how many have a detection at IoU >= 0.5 at any
  score, a loose one, or none, and how the scores of the found ones compare with detections on background;
- mAP@0.5 of each EVAL.SUBSETS frame list (e.g. ``--set EVAL.SUBSETS.degraded=DIR/degraded_frames.txt``
  on a dataset written by lib.tools.degrade);
- milliseconds per frame of the detector (tiling included; after one untimed warm-up frame).
"""
import argparse
import copy
import json
import os
import sys
import time

import cv2
import numpy as np

from experiments.custom import recipe
from lib.cli import user_errors_exit_2
from lib.config import ConfigError
from lib.dataset import read_image, whole_videos_spec
from lib.dataset.streams import stream_plan
from lib.eval import small_objects_only, voc_ap, write_detections
from lib.eval.false_positives import false_positive_table
from lib.eval.misses import format_misses, miss_analysis
from lib.eval.subsets import subset_scores
from lib.eval.plots import save_pr_curves
from lib.family import load_model
from lib.streaming import FrameRunner, fused_runner
from lib.tiling import detect_tiled
from lib.tools.infer import ExportedDetector
from lib.train import CheckpointError
from lib.viz import draw_detections, draw_ground_truth, save_image


def context_dataset(cfg, dataset):
    """EVAL.CONTEXT 'video' (default): DATASET.VAL without its frame lists, the whole videos a video family
    streams so that its window / memory sees every frame as on the device, while only the listed frames are
    scored; None when the lists pick no subset of their videos or with 'split' (stream the listed frames
    only)."""
    context = str(cfg.EVAL.CONTEXT).lower()
    if context not in ("video", "split"):
        raise ConfigError(f"{cfg.CONFIG_FILE or '<config>'}: EVAL.CONTEXT must be 'video' or 'split', "
                          f"got {cfg.EVAL.CONTEXT!r}")
    specs = cfg.DATASET.VAL if isinstance(cfg.DATASET.VAL, (list, tuple)) else [cfg.DATASET.VAL]
    whole = [whole_videos_spec(spec) for spec in specs]
    if context == "split" or all(spec is None for spec in whole):
        return None
    whole_cfg = copy.deepcopy(cfg)
    whole_cfg.DATASET.VAL = [w or spec for w, spec in zip(whole, specs)]
    return recipe.load_data(whole_cfg, "VAL", dataset.classes)


def per_snippet_ap(dataset, detections, small_height):
    """{snippet: {"frames", "boxes", "mAP@0.5", "AP@0.5 small"}} for the snippets with boxes: a hold-out
    of several snippets averages very different footage (another camera, light, object type)."""
    index_of = {id(r): i for i, r in enumerate(dataset.records)}
    rows = {}
    for name, recs in dataset.snippets().items():
        if not any(r.num_boxes for r in recs):
            continue
        dets = [detections[index_of[id(r)]] for r in recs]
        small = voc_ap(small_objects_only(recs, small_height), dets, dataset.classes)
        rows[name] = {"frames": len(recs), "boxes": int(sum(r.num_boxes for r in recs)),
                      "mAP@0.5": voc_ap(recs, dets, dataset.classes)["mAP"], "AP@0.5 small": small["mAP"],
                      "small_gt": int(sum(v["num_gt"] for v in small["per_class"].values()))}
    return rows


def _snippet_table(rows):
    if not rows:
        return ""
    lines = ["| snippet | frames | boxes | mAP@0.5 | small boxes | AP@0.5 small |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['frames']} | {r['boxes']} | {_fmt(r['mAP@0.5'])} | {r['small_gt']} | {_fmt(r['AP@0.5 small'])} |"
              for name, r in rows.items()]
    return "\n".join(lines) + "\n"


def calibration_images(cfg, count):
    """``count`` RGB frames spread over DATASET.TRAIN (int8 calibration)."""
    train = recipe.load_data(cfg, "TRAIN", cfg.CLASSES or None)
    if train is None or len(train) == 0:
        raise ConfigError(f"{cfg.CONFIG_FILE}: --int8 calibrates on DATASET.TRAIN, which gives no image")
    return [read_image(rec.image) for rec in train.spread(count)]


def detect_all(model_path, cfg, dataset, tiling, overrides=None, int8_calib=0):
    """Detections aligned with dataset.records, the seconds spent in the detector and the number of frames
    it ran on (more than the dataset's with EVAL.CONTEXT 'video': see context_dataset). ``overrides``:
    family "KEY.SUB=value" strings for a training run's model; ``int8_calib`` > 0: quantize that model
    in process, calibrated on so many training frames."""
    detections = [None] * len(dataset)
    seconds = 0.0
    if os.path.isfile(os.path.join(model_path, "meta.json")):
        if overrides:
            raise ConfigError(f"{model_path} is an exported artifact: OVERRIDES.* ({', '.join(overrides)}) "
                              f"apply to a training run's model; export the run with them instead")
        if int8_calib:
            raise ConfigError(f"{model_path} is an exported artifact: quantize it with python -m "
                              f"lib.tools.quantize --model {model_path} --calib FRAMES --out DIR_INT8")
        runner = ExportedDetector(model_path, "mxnet")

        def detect_one(image_rgb):
            return runner(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
        detect_one(read_image(dataset.records[0].image))   # warm-up (graph build, memory plans): not timed
        for i, rec in enumerate(dataset.records):
            image = read_image(rec.image)
            start = time.perf_counter()
            if tiling:
                t = cfg.TILING.INFER
                detections[i] = detect_tiled(detect_one, image, tuple(int(v) for v in t.SIZE), int(t.OVERLAP),
                                             float(t.NMS_IOU), include_full_frame=bool(t.INCLUDE_FULL_FRAME),
                                             max_detections=int(t.MAX_DETECTIONS))
            else:
                detections[i] = detect_one(image)
            seconds += time.perf_counter() - start
        return detections, seconds, len(dataset)
    model = load_model(model_path, overrides=overrides)
    if int8_calib:
        model.quantize_int8(calibration_images(cfg, int8_calib))
    warm = read_image(dataset.records[0].image)           # warm-up: not timed
    model.detect_tiled(warm, cfg.TILING.INFER) if tiling else model.detect([warm])
    fuse = bool(model.cfg.TEST.FUSE.ENABLED)
    if tiling:       # the tiled detector as a frame runner (with TEST.FUSE, streamed with the box-level memory)
        tiled = fused_runner(FrameRunner(lambda image: model.detect_tiled(image, cfg.TILING.INFER)), model.cfg.TEST,
                             model.cfg.get("CONFIG_FILE") or "config")
        detect_video = tiled.detect_video
    else:
        detect_video = model.detect_stream if model.video or fuse else model.detect
    streamed = 0
    # a memory (the family's, or TEST.FUSE's boxes) needs the videos in order, with their other frames
    in_order = model.video or fuse
    for _, records, report in stream_plan(dataset, context_dataset(cfg, dataset) if in_order else None):
        images = [read_image(rec.image) for rec in records]
        start = time.perf_counter()
        results = detect_video(images)
        seconds += time.perf_counter() - start
        streamed += len(images)
        for i, result in zip(report, results):
            if i is not None:
                detections[i] = result
    return detections, seconds, streamed


def save_annotated(dataset, detections, out_dir, count, threshold):
    """``count`` validation frames spread over the set, ground truth (green) and detections scoring
    >= ``threshold`` drawn, as OUT/images/<image id>.jpg; returns the paths."""
    index_of = {id(r): i for i, r in enumerate(dataset.records)}
    paths = []
    for rec in dataset.spread(count):
        boxes, scores, labels = detections[index_of[id(rec)]]
        canvas = draw_ground_truth(read_image(rec.image), rec.boxes, rec.labels, dataset.classes)
        canvas = draw_detections(canvas, boxes, scores, labels, dataset.classes, threshold=threshold)
        name = str(rec.image_id).replace("/", "__").replace("\\", "__") + ".jpg"
        paths.append(os.path.join(out_dir, "images", name))
        save_image(paths[-1], canvas)
    return paths


def evaluate(model_path, cfg, tiling=None, out_dir=None, save_images=0, image_threshold=0.5, overrides=None,
             int8_calib=0):
    """-> metrics dict (see the module docstring); writes the files when ``out_dir`` is given.
    ``overrides``: family "KEY.SUB=value" strings for a training run's model; ``int8_calib``: see
    detect_all."""
    dataset = recipe.load_data(cfg, "VAL", cfg.CLASSES or None)
    if dataset is None or len(dataset) == 0:
        raise ConfigError(f"{cfg.CONFIG_FILE}: DATASET.VAL gives no image to evaluate on")
    tiling = bool(cfg.TILING.INFER.ENABLED) if tiling is None else tiling
    detections, seconds, streamed = detect_all(model_path, cfg, dataset, tiling, overrides, int8_calib)
    voc = voc_ap(dataset.records, detections, dataset.classes)
    small = voc_ap(small_objects_only(dataset.records, float(cfg.EVAL.SMALL_HEIGHT)), detections,
                   dataset.classes)
    fp_results, fp_table = false_positive_table(dataset.records, detections, dataset.classes,
                                                tuple(cfg.EVAL.THRESHOLDS))
    metrics = {"model": os.path.abspath(model_path), "family_overrides": list(overrides or []),
               "tiling": tiling, "int8_calibration_frames": int(int8_calib), "images": len(dataset),
               "background_images": int(sum(r.num_boxes == 0 for r in dataset.records)),
               "mAP@0.5": voc["mAP"], "AP@0.5 per class": {k: v["ap"] for k, v in voc["per_class"].items()},
               f"AP@0.5 small (<{cfg.EVAL.SMALL_HEIGHT:g} px high)": small["mAP"],
               "small_gt": int(sum(v["num_gt"] for v in small["per_class"].values())),
               "per_snippet": per_snippet_ap(dataset, detections, float(cfg.EVAL.SMALL_HEIGHT)),
               "small_misses": miss_analysis(dataset.records, detections, dataset.classes,
                                             float(cfg.EVAL.SMALL_HEIGHT)),
               "subsets": subset_scores(dataset.records, detections, dataset.classes, cfg.EVAL.SUBSETS),
               "context_frames": streamed - len(dataset), "ms_per_frame": 1000.0 * seconds / streamed,
               "false_positives": [{k: v for k, v in r.items() if k != "per_image"} for r in fp_results]}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        write_detections(os.path.join(out_dir, "detections.json"), dataset, detections)
        save_pr_curves(voc, out_dir, title=f"{os.path.basename(os.path.abspath(model_path))} mAP@0.5")
        if save_images:
            save_annotated(dataset, detections, out_dir, save_images, image_threshold)
        with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=1)
        with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
            ap_small = metrics[f"AP@0.5 small (<{cfg.EVAL.SMALL_HEIGHT:g} px high)"]
            int8 = f", int8 calibrated on {int8_calib} training frames" if int8_calib else ""
            f.write(f"model {metrics['model']} (tiling {'on' if tiling else 'off'}{int8}), {len(dataset)} images "
                    f"({metrics['background_images']} background)"
                    f"{_context_line(metrics['context_frames'])}\n\n"
                    f"mAP@0.5 {_fmt(voc['mAP'])}, AP@0.5 small {_fmt(ap_small)} ({metrics['small_gt']} small boxes), "
                    f"{metrics['ms_per_frame']:.1f} ms/frame\n\n"
                    f"{_subset_lines(metrics['subsets'])}"
                    f"small objects: {format_misses(metrics['small_misses'], 'small boxes')}\n\n"
                    f"{fp_table}\n{_snippet_table(metrics['per_snippet'])}")
    return metrics


def _context_line(frames):
    return f", streamed with {frames} unlisted frames of their videos (EVAL.CONTEXT video)" if frames else ""


def _subset_lines(subsets):
    return "".join(f"subset {name}: mAP@0.5 {_fmt(s['mAP'])} ({s['frames']} frames, {s['boxes']} boxes)\n"
                   for name, s in subsets.items()) + ("\n" if subsets else "")


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder, checkpoint, or exported artifact folder")
    parser.add_argument("--cfg", help="recipe yaml (default: the run's recipe.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tiling", choices=("on", "off", "config"), default="config")
    parser.add_argument("--out", help="output folder (default: MODEL/eval[_tiled][_int8])")
    parser.add_argument("--save-images", type=int, default=0, metavar="N",
                        help="also draw N validation frames (spread over the set) into OUT/images")
    parser.add_argument("--image-thresh", type=float, default=0.5, help="score threshold of the drawn detections")
    parser.add_argument("--int8", type=int, default=0, metavar="N",
                        help="quantize a training run's model in process, calibrated on N training frames")
    args = parser.parse_args(argv)
    if args.int8 < 0:
        parser.error(f"--int8 takes a number of calibration frames, got {args.int8}")
    try:
        if args.cfg:
            cfg = recipe.load_recipe_config(args.cfg, args.overrides)
        elif os.path.isfile(os.path.join(args.model, "meta.json")):
            raise ConfigError("an exported artifact has no dataset: give the recipe config with --cfg")
        else:
            cfg = recipe.run_recipe(args.model, args.overrides)
        tiling = None if args.tiling == "config" else args.tiling == "on"
        model_dir = args.model if os.path.isdir(args.model) else os.path.dirname(args.model)
        tiled = tiling or (tiling is None and cfg.TILING.INFER.ENABLED)
        out = args.out or os.path.join(model_dir, ("eval_tiled" if tiled else "eval") + ("_int8" if args.int8 else ""))
        metrics = evaluate(args.model, cfg, tiling, out, args.save_images, args.image_thresh,
                           recipe.family_overrides(args.overrides), args.int8)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with open(os.path.join(out, "results.md"), "r", encoding="utf-8") as f:
        print(f.read())
    print(f"wrote {out}/detections.json, metrics.json, results.md")
    return 0 if np.isfinite(metrics["ms_per_frame"]) else 1


if __name__ == "__main__":
    sys.exit(main())
