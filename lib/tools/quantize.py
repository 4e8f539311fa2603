"""int8 quantization of an exported CPU detector with MXNet's MKLDNN (oneDNN) quantization.

    python -m lib.tools.quantize --model DIR --calib FRAMES_OR_VIDEO --out DIR_INT8
                                 [--num-calib 16] [--calib-mode naive|entropy] [--calib-tile H[,W]]
                                 [--calib-split LIST]

Convolutions and fully-connected layers run in int8, calibrated on a few frames that go through
the artifact's own pre-processing (``--calib-tile``: one crop of that size per frame, for a model run on
sliding tiles); the detection post-processing (decode, NMS) stays in float. Without ``--calib-split`` the
first ``--num-calib`` frames are used; ``--calib-split LIST`` (a split list: one frame name per line) takes
them spread evenly over the listed images of the ``--calib`` folder, e.g. the training split, so that no
hold-out frame tunes the int8 ranges the hold-out then measures.
The result is a normal exported artifact (same meta.json) that ``lib.tools.infer`` runs. It is
checked against the fp32 artifact on the calibration frames (meta.json "quantized.check"): broken
boxes, or fewer than half of the fp32 detections found again, make it quantize once more with the
elementwise adds in float; broken boxes after that fail with exit code 5 and nothing written
(``--no-check`` keeps it), a low agreement alone is a warning.

That check counts detections, not their scores: an int8 M2Det on EfficientNet-Lite0 with its residual
adds quantized found 93 % of the fp32 detections again and still fell from 0.953 to 0.575 mAP. With
labelled frames it measures what matters instead:

    --check-gt DATASET [--check-format voc|coco|csv|...] [--check-split LIST] [--max-map-drop 0.02]

runs both artifacts on those frames and compares their mAP@0.5 (VOC area); a larger drop is a failed
check like broken boxes (retried with the adds in float, then exit 5, nothing written).
"""
import argparse
import os
import shutil
import sys
import warnings

import cv2
import mxnet as mx
import numpy as np

from lib.bbox import box_iou_np
from lib.cli import user_errors_exit_2
from lib.dataset import DatasetError, load_dataset, spread_indices
from lib.dataset.cli import guess_format
from lib.eval import voc_ap
from lib.export import write_meta
from lib.frames import IMAGE_EXTENSIONS, frame_files
from lib.runtime import quantize_block
from lib.tools.infer import ExportedDetector, iterate_frames


def calibration_crop(frame, tile, index):
    """A ``tile`` (h, w) crop of ``frame`` at a position drawn from ``index`` (the same run to run); the
    whole frame when it is not larger than the tile."""
    h, w = frame.shape[:2]
    th, tw = min(tile[0], h), min(tile[1], w)
    rng = np.random.RandomState(index)
    y, x = rng.randint(0, h - th + 1), rng.randint(0, w - tw + 1)
    return frame[y:y + th, x:x + tw]


def listed_frames(folder, split, num):
    """``num`` image paths of ``folder`` spread evenly over those named in the list file ``split`` (first
    word of each line: a frame name, with or without folder and extension), first and last included."""
    if not os.path.isdir(folder):
        raise SystemExit(f"error: --calib {folder}: --calib-split selects images of a folder; this is not one")
    try:
        with open(split, "r", encoding="utf-8-sig") as f:
            names = {os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.split()}
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: --calib-split {split}: cannot read ({err})") from None
    paths = [p for p in frame_files(folder) if os.path.splitext(os.path.basename(p))[0] in names]
    if not paths:
        raise SystemExit(f"error: --calib-split {split}: none of its {len(names)} names is an image "
                         f"({', '.join(IMAGE_EXTENSIONS)}) of {folder}")
    return [paths[i] for i in spread_indices(len(paths), num)]


def _read_listed(paths):
    for path in paths:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            raise SystemExit(f"error: {path}: unreadable image (listed by --calib-split)")
        yield path, frame


def calibration_batches(detector, source, num, tile=None, split=None):
    """-> (pre-processed calibration inputs (num,3,H,W), all at the first frame's input shape; the frames
    (or crops) they come from). ``tile`` (h, w): calibrate on one crop of that size per frame, for a model
    that detects by sliding tiles (its activations on a whole frame squeezed to the input size are not the
    ones it will see). ``split``: a list file naming the images of the folder ``source`` to spread the
    ``num`` frames over (``listed_frames``); without it, the first ``num`` frames of ``source``."""
    batches, shape, frames = [], None, []
    source_frames = iterate_frames(source) if split is None else _read_listed(listed_frames(source, split, num))
    for index, (_, frame) in enumerate(source_frames):
        view = frame if tile is None else calibration_crop(frame, tile, index)
        frames.append(view)
        data, _ = detector.preprocess(view)
        if shape is None:
            shape = data.shape
        elif data.shape != shape:
            # keep-ratio artifacts: frames of another size are resized to the first frame's input size
            resized = cv2.resize(view, (shape[3], shape[2]))
            data, _ = detector.preprocess(resized)
            data = data[:, :, :shape[2], :shape[3]]
        batches.append(data)
        if len(batches) >= num:
            break
    if not batches:
        raise SystemExit(f"error: {source}: no calibration frames")
    return np.concatenate(batches), frames


class QuantizationCheckError(RuntimeError):
    """The int8 artifact does not reproduce the fp32 one on the calibration frames."""


def agreement(fp32_outputs, int8_outputs, min_score=0.3, iou=0.5):
    """Share of the fp32 detections (score >= min_score; else each frame's top 5) that the int8 model
    finds again (same class, IoU >= iou), and the number of broken int8 boxes (non-finite, x2 < x1,
    y2 < y1). Outputs: per frame (boxes (N,4), scores (N,), class ids (N,))."""
    wanted = found = broken = 0
    for (fb, fs, fi), (qb, qs, qi) in zip(fp32_outputs, int8_outputs):
        qb = np.asarray(qb, np.float64).reshape(-1, 4)
        bad = ~np.isfinite(qb).all(axis=1) | (qb[:, 2] < qb[:, 0]) | (qb[:, 3] < qb[:, 1]) | \
            ~np.isfinite(np.asarray(qs, np.float64))
        broken += int(bad.sum())
        keep = np.where(np.asarray(fs) >= min_score)[0]
        if keep.size == 0:
            keep = np.argsort(-np.asarray(fs))[:5]
        wanted += keep.size
        good = np.where(~bad)[0]
        if keep.size and good.size:
            overlaps = box_iou_np(np.asarray(fb, np.float64).reshape(-1, 4)[keep], qb[good])
            same = np.asarray(fi)[keep][:, None] == np.asarray(qi)[good][None, :]
            found += int(((overlaps >= iou) & same).any(axis=1).sum())
    return (found / wanted if wanted else 1.0), broken


def check_against_fp32(model_dir, out_dir, frames):
    """-> {agreement, broken_boxes, frames}: the int8 artifact against the fp32 one on ``frames``."""
    fp32, int8 = ExportedDetector(model_dir, "mxnet"), ExportedDetector(out_dir, "mxnet")
    share, broken = agreement([fp32(f) for f in frames], [int8(f) for f in frames])
    return {"agreement": round(float(share), 4), "broken_boxes": broken, "frames": len(frames)}


def labelled_frames(gt, classes, fmt=None, split=None):
    """The dataset of ``--check-gt`` with the artifact's class names (labels then mean the same ids)."""
    try:
        fmt = fmt or guess_format(gt)
        spec = {"FORMAT": fmt, "CLASSES": list(classes)}
        spec["ANNOTATIONS" if fmt in ("coco", "csv") else "ROOT"] = gt
        if split:
            spec["SPLIT"] = split
        dataset = load_dataset(spec)
    except DatasetError as err:
        raise SystemExit(f"error: --check-gt {gt}: {err}") from None
    if not any(len(r.boxes) for r in dataset.records):
        raise SystemExit(f"error: --check-gt {gt}: no box of the classes {list(classes)} in its "
                         f"{len(dataset)} images: nothing to measure the int8 model on")
    return dataset


def map_on(detector, dataset):
    """mAP@0.5 (VOC area) of an artifact on the frames of ``dataset``."""
    detections = []
    for rec in dataset.records:
        frame = cv2.imread(rec.image)
        if frame is None:
            raise SystemExit(f"error: --check-gt: cannot read image {rec.image}")
        detections.append(detector(frame))
    return float(voc_ap(dataset.records, detections, dataset.classes)["mAP"])


def check_map(model_dir, out_dir, dataset, fp32=None):
    """-> {fp32, int8, drop, frames}: both artifacts' mAP@0.5 on the labelled frames (``fp32``: that
    number when already measured)."""
    if fp32 is None:
        fp32 = map_on(ExportedDetector(model_dir, "mxnet"), dataset)
    int8 = map_on(ExportedDetector(out_dir, "mxnet"), dataset)
    return {"fp32": round(fp32, 4), "int8": round(int8, 4), "drop": round(fp32 - int8, 4), "frames": len(dataset)}


def _problem(result, model_dir, out_dir, min_agreement, max_map_drop=None):
    """-> (what is wrong or None, whether it refuses the artifact): broken boxes and a mAP drop on labelled
    frames refuse it; a low agreement alone is a warning, and no problem once the labelled frames showed
    the mAP held (low-scoring detections reorder under int8 without costing accuracy)."""
    scores = result.get("map")
    if scores is not None and scores["drop"] > max_map_drop:
        return (f"{out_dir}: mAP@0.5 on {scores['frames']} labelled frames falls from {scores['fp32']:.3f} (fp32) "
                f"to {scores['int8']:.3f} (int8), more than --max-map-drop {max_map_drop:g}"), True
    if not result["broken_boxes"] and (scores is not None or result["agreement"] >= min_agreement):
        return None, False
    return (f"{out_dir}: the int8 model does not reproduce {model_dir} on {result['frames']} calibration "
            f"frames ({result['broken_boxes']} broken boxes, {result['agreement']:.0%} of the fp32 detections "
            f"found)"), bool(result["broken_boxes"])


# MXNet 1.9's int8 elementwise add outside a conv+sum fusion broke M2Det's MobileNetV2 residuals
# (every box degenerate); when the check fails, quantization is redone with these kept in float
FALLBACK_FLOAT_OPERATORS = ("elemwise_add",)


def _quantize_once(model_dir, calib, calib_mode, exclude, exclude_operators, out_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mx.gluon.SymbolBlock.imports(os.path.join(model_dir, "model-symbol.json"), ["data"],
                                           os.path.join(model_dir, "model-0000.params"))
    qnet = quantize_block(net, calib, calib_mode, exclude, exclude_operators)
    os.makedirs(out_dir, exist_ok=True)
    qnet.export(os.path.join(out_dir, "model"))


def quantize(model_dir, calib_source, out_dir, num_calib=16, calib_mode="naive", exclude=(), check=True,
             exclude_operators=(), min_agreement=0.5, name=None, check_gt=None, max_map_drop=0.02,
             calib_tile=None, calib_split=None):
    """Write the int8 artifact and, with ``check``, compare it with the fp32 one on the calibration
    frames: broken boxes or fewer than ``min_agreement`` of the fp32 detections found again -> retried
    once with FALLBACK_FLOAT_OPERATORS in float (when the caller chose no operators); broken boxes
    after that raise QuantizationCheckError, a low agreement alone is a warning (meta.json keeps it).
    ``check_gt`` (path, format or None, split or None): labelled frames (``labelled_frames``), the
    mAP@0.5 of both on them, a drop above ``max_map_drop`` fails like broken boxes. ``calib_tile`` (h, w):
    calibrate on crops of that size; ``calib_split``: a list file of the frames to calibrate on
    (``calibration_batches``)."""
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        raise SystemExit("error: this mxnet build has no MKLDNN (oneDNN): int8 CPU quantization needs it")
    detector = ExportedDetector(model_dir, "mxnet")
    check_data = None
    if check_gt:
        gt, fmt, split = check_gt
        check_data = labelled_frames(gt, detector.classes, fmt, split)
    calib, frames = calibration_batches(detector, calib_source, num_calib, calib_tile, calib_split)
    attempts = [list(exclude_operators)]
    fp32_map = None
    if check and not exclude_operators:
        attempts.append(list(FALLBACK_FLOAT_OPERATORS))
    for k, operators in enumerate(attempts):
        _quantize_once(model_dir, calib, calib_mode, exclude, operators, out_dir)
        meta = dict(detector.meta)
        meta["quantized"] = {"dtype": "int8", "calib_mode": calib_mode, "num_calib": int(len(calib)),
                             "calib_split": os.path.abspath(calib_split) if calib_split else None,
                             "source": os.path.abspath(model_dir), "float_operators": operators}
        write_meta(out_dir, meta)      # before the check too: the check loads the artifact
        problem, refused = None, False
        if check:
            meta["quantized"]["check"] = check_against_fp32(model_dir, out_dir, frames)
            if check_data is not None:
                scores = check_map(model_dir, out_dir, check_data, fp32_map)
                meta["quantized"]["check"]["map"], fp32_map = scores, scores["fp32"]
            problem, refused = _problem(meta["quantized"]["check"], model_dir, name or out_dir, min_agreement,
                                        max_map_drop)
            write_meta(out_dir, meta)
        if problem is None:
            break
        if k + 1 < len(attempts):
            print(f"note: {problem}; quantizing again with {attempts[k + 1]} in float", file=sys.stderr)
        elif refused:
            raise QuantizationCheckError(f"{problem}: keep the failing layers in float (--exclude NAME ..., "
                                         f"--exclude-ops TYPE ...), try --calib-mode entropy, or use the fp32 "
                                         f"artifact")
        else:   # boxes are sound; a weakly trained model reorders its low scores under int8
            print(f"warning: {problem}: compare both on labelled frames (--check-gt, or "
                  f"experiments/custom/evaluate.py) before using it", file=sys.stderr)
    return out_dir


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(description="int8-quantize an exported detector (CPU, MKLDNN).")
    parser.add_argument("--model", required=True, help="exported fp32 artifact folder")
    parser.add_argument("--calib", required=True, help="video or folder of frames for calibration")
    parser.add_argument("--out", required=True, help="output artifact folder")
    parser.add_argument("--num-calib", type=int, default=16)
    parser.add_argument("--calib-mode", choices=["naive", "entropy"], default="naive")
    parser.add_argument("--calib-tile", metavar="H[,W]",
                        help="calibrate on one H x W crop per frame: for a model run on sliding tiles "
                             "(the recipe's TILING.INFER.SIZE)")
    parser.add_argument("--calib-split", metavar="LIST",
                        help="calibrate on --num-calib images of the --calib folder spread over the ones this "
                             "list names (one frame name per line, e.g. the training split)")
    parser.add_argument("--exclude", nargs="*", default=[], help="layer names to keep in float")
    parser.add_argument("--exclude-ops", nargs="*", default=[],
                        help="operator types to keep in float (e.g. Concat elemwise_add)")
    parser.add_argument("--no-check", action="store_true",
                        help="keep the int8 artifact even when it does not reproduce the fp32 detections")
    parser.add_argument("--check-gt", metavar="DATASET",
                        help="labelled frames (dataset folder or annotation file): compare the mAP@0.5 of the "
                             "fp32 and int8 artifacts on them")
    parser.add_argument("--check-format", help="format of --check-gt (default: guessed)")
    parser.add_argument("--check-split", help="split name or image list file of --check-gt (e.g. the hold-out)")
    parser.add_argument("--max-map-drop", type=float, default=0.02,
                        help="largest mAP@0.5 loss on --check-gt accepted (default 0.02)")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    work = f"{out}.tmp{os.getpid()}"  # written here, moved into place when complete
    try:
        if out == os.path.abspath(args.model):
            raise SystemExit("error: --out must differ from --model (the fp32 artifact is kept)")
        if args.num_calib < 1:
            raise SystemExit(f"error: --num-calib {args.num_calib}: needs at least 1 calibration frame")
        if os.path.exists(out) and not (os.path.isdir(out) and (not os.listdir(out) or
                                                                os.path.isfile(os.path.join(out, "meta.json")))):
            raise SystemExit(f"error: --out {args.out}: exists and is not an exported artifact (no meta.json): "
                             f"refusing to replace it")
        calib_tile = None
        if args.calib_tile:
            try:
                calib_tile = [int(v) for v in args.calib_tile.split(",")]
            except ValueError:
                calib_tile = []
            calib_tile = calib_tile * 2 if len(calib_tile) == 1 else calib_tile
            if len(calib_tile) != 2 or min(calib_tile) < 1:
                raise SystemExit(f"error: --calib-tile {args.calib_tile}: expected H or H,W in pixels, e.g. 256 or 256,256")
        check_gt = None
        if args.check_gt:
            if args.no_check:
                raise SystemExit("error: --check-gt and --no-check contradict each other")
            if not 0 <= args.max_map_drop < 1:
                raise SystemExit(f"error: --max-map-drop {args.max_map_drop:g}: must be in [0, 1)")
            check_gt = (args.check_gt, args.check_format, args.check_split)
        elif args.check_format or args.check_split:
            raise SystemExit("error: --check-format / --check-split describe --check-gt, which is missing")
        quantize(args.model, args.calib, work, args.num_calib, args.calib_mode, args.exclude,
                 check=not args.no_check, exclude_operators=args.exclude_ops, name=args.out,
                 check_gt=check_gt, max_map_drop=args.max_map_drop, calib_tile=calib_tile,
                 calib_split=args.calib_split)
        if os.path.isdir(out):
            shutil.rmtree(out)  # an earlier artifact (or an empty folder), replaced only now
        os.rename(work, out)
    except QuantizationCheckError as err:
        print(f"error: {err} (nothing written; --no-check keeps it)", file=sys.stderr)
        return 5
    except SystemExit as exc:  # user errors are raised as SystemExit("error: ..."): one line, status 2
        if not isinstance(exc.code, str):
            raise
        print(exc.code if exc.code.startswith("error:") else f"error: {exc.code}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote int8 artifact {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
