"""Export a trained recipe model as a standalone inference artifact (docs/DESIGN.md).

    python -m lib.tools.export --model RUN_OR_CKPT [--cfg CFG] --format mxnet|onnx --out DIR
                               [--check-input VIDEO_OR_FOLDER] [--check-frames 4] [--builtin-ops]

RUN_OR_CKPT is a training run folder of any detector family (experiments/custom/train.py, a family's
train_test.py, m2det-train: its folder for the latest checkpoint, or a ckpt-NNNN.json / .params inside
it); the family (lib.family) writes the artifact. DIR gets model-symbol.json + model-0000.params (decode, clipping
and NMS inside the graph) and meta.json; --format onnx adds model.onnx and checks it in onnxruntime
against the MXNet graph (max difference of scores and boxes within --tolerance, default 1e-4) on a few
frames of --check-input, or on seeded random images without it. DIR is then run by
``python -m lib.tools.infer`` with only mxnet or onnxruntime installed.
Families the single-frame artifact cannot hold (lstm_ssd, fgfa) get a message saying why and what to
use instead (exit code 3); rfcn exports for MXNet only (its proposal / PS-RoI operators have no ONNX
form), with this project's compiled operators or, with --builtin-ops, MXNet's own.
"""
import argparse
import math
import os
import sys

import numpy as np

from lib.cli import UsageError, user_errors_exit_2
from lib.config import ConfigError, read_yaml
from lib.export import ExportNotSupported
from lib.family import load_model
from lib.frames import check_source
from lib.tools.infer import FIXED_RESIZE, ExportedDetector, iterate_frames, read_meta
from lib.train import CheckpointError


def _check_images(source, count, meta, seed=0):
    """BGR frames for the ONNX check: the first ``count`` frames of source, or seeded random images."""
    if source:
        frames = []
        for _, frame in iterate_frames(source):
            frames.append(frame)
            if len(frames) >= count:
                break
        return frames
    rng = np.random.default_rng(seed)
    h, w = meta["input"]["size"] if meta["input"]["resize"] in FIXED_RESIZE else (480, 640)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


def compare_runtimes(folder, frames, tolerance=1e-4):
    """Run the artifact with MXNet and with onnxruntime on each frame -> max abs differences.

    Raises ValueError naming the frame when the detections differ (count, class, more than
    ``tolerance`` in a score, or more than ``tolerance`` x the frame's longer side in a box coordinate).
    """
    reference = ExportedDetector(folder, "mxnet")
    candidate = ExportedDetector(folder, "onnx")
    worst = {"scores": 0.0, "boxes": 0.0, "detections": 0}
    for k, frame in enumerate(frames):
        b1, s1, l1 = reference(frame)
        b2, s2, l2 = candidate(frame)
        if len(s1) != len(s2) or not np.array_equal(l1, l2):
            raise ValueError(f"frame {k}: MXNet gives {len(s1)} detections (classes {l1.tolist()[:10]}), "
                             f"onnxruntime {len(s2)} (classes {l2.tolist()[:10]})")
        if len(s1):
            worst["scores"] = max(worst["scores"], float(np.abs(s1 - s2).max()))
            worst["boxes"] = max(worst["boxes"], float(np.abs(b1 - b2).max()))
        worst["detections"] += len(s1)
        # boxes in units of the frame size (as normalised coordinates): the two runtimes' float32
        # kernels sum in different orders, ~1e-4 px apart on a 1280 px frame with 2 threads
        box_tolerance = tolerance * max(frame.shape[:2])
        if worst["scores"] > tolerance or worst["boxes"] > box_tolerance:
            raise ValueError(f"frame {k}: onnxruntime differs from MXNet by {worst['scores']:.2e} in scores and "
                             f"{worst['boxes']:.2e} px in boxes (tolerance {tolerance:g}, boxes "
                             f"{box_tolerance:.2g} px = {tolerance:g} of the frame size)")
    return worst


def export_run(model, out, fmt="mxnet", cfg_path=None, builtin_ops=False):
    """Load a run and write its artifact through its detector family; returns the written paths."""
    loaded = load_model(model)
    if cfg_path:
        detector = read_yaml(cfg_path).get("DETECTOR")
        if detector is not None and detector != loaded.family:
            raise ConfigError(f"{cfg_path}: DETECTOR is {detector} but {model} is a {loaded.family} run")
    return loaded.export(out, onnx=(fmt == "onnx"), builtin_ops=builtin_ops)


def check_options(args):
    """The values that make no sense, refused before the model is loaded (UsageError naming the flag);
    the --check-input source is opened now too (lib.frames.FrameSourceError)."""
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise UsageError(f"--tolerance {args.tolerance:g}: the largest allowed difference must be a number >= 0")
    if args.check_frames < 1:
        raise UsageError(f"--check-frames {args.check_frames}: the ONNX check needs at least 1 frame")
    if args.check_input:
        if args.format != "onnx":
            raise UsageError(f"--check-input {args.check_input}: applies to --format onnx only (the ONNX check)")
        check_source(args.check_input)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: is a file, and a folder is needed here")


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.tools.export", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="run folder of experiments/custom/train.py or a checkpoint in it")
    parser.add_argument("--cfg", help="the recipe config of the run (checked against it; optional)")
    parser.add_argument("--format", choices=("mxnet", "onnx"), default="mxnet")
    parser.add_argument("--out", required=True, help="artifact folder (created)")
    parser.add_argument("--check-input", help="video or frame folder for the ONNX check")
    parser.add_argument("--check-frames", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--builtin-ops", action="store_true",
                        help="rfcn: MXNet's own MultiProposal/PSROIPooling, so the artifact runs without "
                             "lib/libdetops.so (portable, slower on CPU)")
    args = parser.parse_args(argv)
    check_options(args)
    try:
        paths = export_run(args.model, args.out, args.format, args.cfg, args.builtin_ops)
    except ExportNotSupported as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (ConfigError, CheckpointError, ValueError) as err:   # OSErrors: the decorator names the path
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the ONNX exporter fails on operators it cannot map
        if args.format != "onnx":
            raise
        print(f"error: the graph could not be converted to ONNX ({type(err).__name__}: {err}); the MXNet "
              f"artifact in {args.out} is complete, run it with --runtime mxnet", file=sys.stderr)
        return 3
    print("wrote " + ", ".join(sorted(paths.values())))
    if args.format == "onnx":
        meta = read_meta(os.path.join(args.out, "meta.json"))   # checked; a BOM is fine
        try:
            worst = compare_runtimes(args.out, _check_images(args.check_input, args.check_frames, meta),
                                     args.tolerance)
        except ValueError as err:
            print(f"error: ONNX check failed: {err}", file=sys.stderr)
            return 4
        print(f"ONNX check: {worst['detections']} detections, max difference {worst['scores']:.1e} (scores), "
              f"{worst['boxes']:.1e} px (boxes) vs MXNet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
