"""Testing of FGFA / the R-FCN baseline: window inference per video, Seq-NMS, evaluation, reports.

Each video of the test set runs through ``fgfa.window.WindowRunner`` (one result per frame, window padded at the
edges); still images are videos of one frame. Detections are evaluated with the ImageNet VID metric
(motion and area breakdowns) when the test records carry track ids, VOC AP otherwise. The output
folder (OUTPUT_DIR/test, or test_seqnms) gets detections.json (COCO results), metrics.json,
results.md and the PR curves pr_all.png / pr_<class>.png.
"""
import json
import os
import time

import numpy as np
import tqdm

from lib.config import ConfigError, project_path
from lib.dataset import whole_videos_spec
from lib.dataset.streams import stream_plan
from lib.dataset.io import DatasetError, read_image
from lib.eval.subsets import subset_scores
from lib.fileio import atomic_open
from lib.eval import detections_to_json, save_pr_curves, vid_ap, voc_ap, write_results_table
from lib.nms import seq_nms
from lib.runtime import get_context
from lib.train import CheckpointError, CheckpointManager, setup_logger
from lib.train.checkpoint import check_params_file
from lib.train.run import RunFolder, RunFolderError

from .data import make_preprocess
from .detector import FGFADetector
from .train import family_name, load_train_set, load_val_set, materialize, output_dir
from .window import WindowRunner


def read_classes(folder, cfg=None):
    """The class list recorded in a run folder (lib.train.run); CheckpointError when there is none."""
    try:
        return RunFolder.read(folder, family=family_name(cfg) if cfg is not None else None).classes
    except RunFolderError as err:
        raise CheckpointError(f"class list not found: {err} (written by training next to the checkpoints)") from None


def load_model(cfg, classes=None, checkpoint=None, ctx=None):
    """Detector with trained weights. ``checkpoint``: a .params file, a checkpoint .json, an epoch
    number, or None (TEST.CHECKPOINT, else the latest checkpoint of OUTPUT_DIR).
    Raises CheckpointError naming the missing or mismatching file."""
    ctx = ctx or get_context(cfg.CONTEXT)
    checkpoint = checkpoint if checkpoint not in (None, "") else (cfg.TEST.CHECKPOINT or None)
    folder = output_dir(cfg)
    if isinstance(checkpoint, str):
        checkpoint = project_path(checkpoint)
        folder = os.path.dirname(checkpoint)
        if not os.path.isfile(checkpoint):
            raise CheckpointError(f"checkpoint file not found: {checkpoint}")
    classes = classes or read_classes(folder, cfg)
    model = FGFADetector(cfg, len(classes))
    model.prepare_for_context(ctx)
    model.initialize(ctx=ctx)
    materialize(model, ctx)
    if isinstance(checkpoint, str) and checkpoint.endswith(".params"):
        check_params_file(model, checkpoint)
        model.load_parameters(checkpoint, ctx=ctx)
    else:
        CheckpointManager(folder).load(model, checkpoint=checkpoint, ctx=ctx, restore_rng=False)
    return model, classes


def detect_dataset(model, dataset, cfg, ctx=None, progress=True, logger=None, context=None):
    """Run window inference over every video. Returns (records, detections, seconds per frame).

    ``context``: the dataset without its split (TEST.CONTEXT: video); its videos are streamed whole
    and the results of ``dataset``'s frames are returned."""
    ctx = ctx or get_context(cfg.CONTEXT)
    detector = WindowRunner(model, ctx, preprocess=make_preprocess(cfg))
    plan = stream_plan(dataset, context, cfg.DATASET.TEST_MAX_FRAMES)
    records, detections, seconds, total = _detect_groups(detector, plan, dataset, cfg, progress, logger)
    if logger:
        logger.info("tested %d frames (%d streamed) in %d videos: %.1f ms/frame", len(records), total,
                    len(plan), 1000.0 * seconds / max(total, 1))
    return records, detections, seconds / max(total, 1)


def _detect_groups(detector, plan, dataset, cfg, progress, logger):
    """Stream each video of ``plan`` (lib.dataset.streams.stream_plan); -> (records of ``dataset``,
    detections, seconds, frames streamed): the frames the plan reports, in stream order."""
    total = sum(len(recs) for _, recs, _ in plan)
    bar = None
    if progress:
        bar = tqdm.tqdm(total=total, desc="test", dynamic_ncols=True, leave=False)
    records, detections = [], []
    seconds = 0.0
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))
    for name, recs, report in plan:
        readable = []   # positions of the frames that could be read, in stream order

        def frames():
            for pos, rec in enumerate(recs):
                try:
                    image = read_image(rec.image)
                except DatasetError as err:  # reported; the frame gets no detections
                    if logger:
                        logger.warning("video %s: skipping unreadable frame: %s", name, err)
                    continue
                readable.append(pos)
                yield image

        start = time.time()
        per_frame = [None] * len(recs)

        def keep(ready):
            for t, result in ready:
                per_frame[readable[t]] = result
                if bar is not None:
                    bar.update(1)
        detector.reset()
        for image in frames():      # frames are read as the stream goes (lib.streaming contract)
            keep(detector.step(image))
        keep(detector.flush())
        for pos in set(range(len(recs))) - set(readable):
            per_frame[pos] = empty
        seconds += time.time() - start
        if any(r is None for r in per_frame):  # the window logic guarantees one result per frame
            raise RuntimeError(f"video {name}: frames without a result")
        if cfg.TEST.SEQ_NMS and len(recs) > 1:
            per_frame = seq_nms(per_frame, link_iou=cfg.TEST.SEQ_NMS_LINK_IOU,
                                suppress_iou=cfg.TEST.SEQ_NMS_SUPPRESS_IOU,
                                rescore=cfg.TEST.SEQ_NMS_RESCORE, nms_iou=cfg.TEST.NMS_IOU)
        for i, result in zip(report, per_frame):
            if i is not None:
                records.append(dataset.records[i])
                detections.append(result)
    if bar is not None:
        bar.close()
    return records, detections, seconds, total


def evaluate(records, detections, classes, metric="auto"):
    """VID metric (motion/area breakdown) when tracks exist, VOC AP otherwise."""
    has_tracks = any((r.track_ids >= 0).any() for r in records if r.num_boxes)
    if metric == "vid" or (metric == "auto" and has_tracks):
        return vid_ap(records, detections, classes)
    return voc_ap(records, detections, classes)


def write_reports(out_dir, records, detections, classes, result, seconds_per_frame):
    """detections.json (COCO results), results.md + metrics.json (lib.eval tables), PR curve PNGs."""
    os.makedirs(out_dir, exist_ok=True)
    with atomic_open(os.path.join(out_dir, "detections.json")) as f:
        json.dump(detections_to_json(records, detections, classes), f)
    text = write_results_table(result, os.path.join(out_dir, "results.md"),
                               os.path.join(out_dir, "metrics.json"))
    with open(os.path.join(out_dir, "results.md"), "a", encoding="utf-8") as f:
        f.write(f"\nInference: {1000 * seconds_per_frame:.1f} ms/frame (window inference, this machine)\n")
    save_pr_curves(result, out_dir)
    return text


def calibration_frames(cfg, count):
    """``count`` training frames pre-processed for testing, spread over the training set, all at the
    first one's input size (int8 calibration)."""
    preprocess = make_preprocess(cfg)
    frames, shape = [], None
    for rec in load_train_set(cfg).spread(count):
        data, _ = preprocess(read_image(rec.image))
        if shape is None:
            shape = data.shape
        if data.shape == shape:
            frames.append(data)
    return np.stack(frames)


def test_context(cfg, dataset):
    """TEST.CONTEXT: video -> DATASET.VAL without its split (the whole videos), else None."""
    source = cfg.get("CONFIG_FILE") or "config"
    if cfg.TEST.CONTEXT not in ("split", "video"):
        raise ConfigError(f"{source}: TEST.CONTEXT must be 'split' or 'video', got {cfg.TEST.CONTEXT!r}")
    if cfg.TEST.CONTEXT == "split" or not cfg.NETWORK.AGGREGATE:
        return None     # a frame detector (R-FCN) gives the same results without the neighbours
    whole = [whole_videos_spec(spec) for spec in cfg.DATASET.VAL]
    if all(spec is None for spec in whole):
        return None     # the test set is whole videos already
    return load_val_set(cfg, [w or spec for w, spec in zip(whole, cfg.DATASET.VAL)])     # only its images are used: the split's records are reported


def run_test(cfg, model=None, classes=None, dataset=None, checkpoint=None, logger=None, progress=True):
    """Test phase of train_test.py; returns the metrics dict."""
    out_dir = output_dir(cfg)
    logger = logger or setup_logger(out_dir, "test")
    ctx = get_context(cfg.CONTEXT)
    dataset = dataset if dataset is not None else load_val_set(cfg)
    if model is None:
        model, classes = load_model(cfg, classes or None, checkpoint, ctx)
    classes = classes or dataset.classes
    if list(dataset.classes) != list(classes):
        raise ValueError(f"test set classes {dataset.classes} differ from the model's {classes}")
    if cfg.TEST.HYBRIDIZE:
        model.hybridize_for_inference(ctx)
    if cfg.TEST.QUANTIZE == "int8":
        calib = calibration_frames(cfg, cfg.TEST.CALIB_FRAMES)
        model.quantize_int8(calib, cfg.TEST.CALIB_MODE, cfg.TEST.FLOW_CALIB_MODE)
        logger.info("int8 backbone, feature conv and head convolutions, calibrated on %d training frames", len(calib))
    context = test_context(cfg, dataset)
    records, detections, spf = detect_dataset(model, dataset, cfg, ctx, progress, logger, context=context)
    result = evaluate(records, detections, classes, cfg.TEST.EVAL_METRIC)
    # the windows were built from every frame; only the scoring is restricted to each subset
    result["subsets"] = subset_scores(records, detections, classes, cfg.TEST.SUBSETS)
    suffix = ("_seqnms" if cfg.TEST.SEQ_NMS else "") + ("_int8" if cfg.TEST.QUANTIZE == "int8" else "")
    test_dir = os.path.join(out_dir, "test" + suffix)
    write_reports(test_dir, records, detections, classes, result, spf)
    logger.info("%s mAP %.4f%s%s (reports in %s)", cfg.NAME, result["mAP"],
                "".join(f", {k} {v['mAP']:.4f}" for k, v in (result.get("motion") or {}).items()
                        if v.get("mAP") is not None),
                "".join(f", {k} {v['mAP']:.4f} ({v['frames']} frames)" for k, v in result["subsets"].items()),
                test_dir)
    return result
