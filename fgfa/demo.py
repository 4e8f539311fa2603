"""FGFA demo: detect objects in a video or a folder of frames; write annotated JPEGs and an MP4.

    python fgfa/demo.py [--input VIDEO_OR_FRAME_FOLDER] [--cfg CFG] [--model PARAMS] [--output DIR]
                        [--thresh 0.5] [--seq-nms] [--fps FPS] [--set KEY=VALUE ...]

Frames are read with lib.frames (a video, one image, or a folder of frames in numeric order: frame2
before frame10); the MP4 is written at the source video's frame rate (--fps sets it; a folder gets
25). --set overrides a key of the model's config (e.g. --set TEST.K=4), as the training commands do.
The input, the output folder, --cfg and --model are checked before anything else runs. With no
arguments the demo runs offline on the default synthetic clip (lib.dataset.synthetic,
deterministic) with the default model ``model/fgfa_rfcn_demo.params``. If that file is missing, or
was trained for another network than the demo config describes, it is trained first with the
project's own command (a few minutes on 2 cores):

    python experiments/fgfa_rfcn/train_test.py --cfg experiments/fgfa_rfcn/cfgs/fgfa_rfcn_demo.yaml --skip-test

and the last checkpoint is copied to model/ (with its class list, model/fgfa_rfcn_demo.json).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx

from fgfa.config import get_config
from fgfa.data import make_preprocess
from fgfa.detector import FGFADetector
from fgfa.test import read_classes
from fgfa.train import materialize, output_dir
from fgfa.window import WindowRunner
from lib.cli import check_fps, check_fraction, output_folder, user_errors_exit_2
from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset.synthetic import render_video
from lib.fileio import atomic_write_json
from lib.frames import DEFAULT_FPS, check_source, read_frames, source_fps
from lib.nms import seq_nms as run_seq_nms
from lib.runtime import get_context
from lib.streaming import fused_runner
from lib.train import CheckpointManager
from lib.train.checkpoint import CheckpointError, check_params_file, read_model_sidecar
from lib.train.checkpoint import model_sidecar as sidecar
from lib.train.run import RunFolder
from lib.viz import VideoWriter, draw_detections, letterbox, save_image

DEMO_CFG = os.path.join("experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_demo.yaml")
DEMO_MODEL = os.path.join("model", "fgfa_rfcn_demo.params")
# the default clip: a held-out synthetic video (training used other seeds), same size as training
DEMO_CLIP = {"seed": 7, "video_index": 0, "num_frames": 40, "width": 160, "height": 120, "num_classes": 2,
             "max_objects": 2, "fast_fraction": 0.3}


def _abs(path):
    return path if os.path.isabs(path) else os.path.join(PROJECT_ROOT, path)


def network_of(cfg_path):
    """The NETWORK section of a config as plain JSON data (what the default model is checked against)."""
    return json.loads(json.dumps(get_config(_abs(cfg_path)).NETWORK))


def default_model_is_current(model_path, cfg_path=DEMO_CFG):
    """False when the default model was trained for another NETWORK than the demo config has now
    (an older checkout's model, e.g. before the demo model became a half-width ResNet-18)."""
    return read_sidecar(model_path).get("network") == network_of(cfg_path)


def train_default_model(model_path, cfg_path=DEMO_CFG, reason="not found"):
    """Train the demo model with the project's training command and copy it to ``model_path``."""
    cfg_path = _abs(cfg_path)
    command = [sys.executable, os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "train_test.py"),
               "--cfg", cfg_path, "--skip-test"]
    print(f"default model {model_path} {reason}: training it with\n  {' '.join(command)}", flush=True)
    start = time.time()
    status = subprocess.run(command, cwd=PROJECT_ROOT).returncode
    if status:
        raise SystemExit(f"error: training the default model failed (exit status {status}; its messages are "
                         f"above): {' '.join(command)}")
    cfg = get_config(cfg_path)
    out = output_dir(cfg)
    record = CheckpointManager(out).read()
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    shutil.copyfile(os.path.join(out, record["params"]), model_path + ".tmp")
    os.replace(model_path + ".tmp", model_path)
    classes = RunFolder.read(out).classes
    atomic_write_json(sidecar(model_path), {
        "classes": classes, "config": os.path.relpath(cfg_path, PROJECT_ROOT), "network": network_of(cfg_path),
        "command": " ".join(["python"] + [os.path.relpath(c, PROJECT_ROOT) if c.startswith(PROJECT_ROOT) else c
                                          for c in command[1:]]),
        "train_seconds": round(time.time() - start, 1)}, sort_keys=False)
    print(f"trained in {time.time() - start:.0f} s, saved {model_path}")
    return model_path


def default_clip():
    """(name, frame) of the default synthetic clip, rendered in memory."""
    frames, _ = render_video(**DEMO_CLIP)
    return [(f"{i:06d}", frame) for i, frame in enumerate(frames)]


def read_sidecar(model_path):
    return read_model_sidecar(model_path, ("classes", "config"))


def run(input_path=None, cfg_path=None, model_path=None, output=None, thresh=None, seq_nms=False,
        ctx_name=None, overrides=None, fps=None):
    """Annotate every frame; returns (number of frames, frames per second of detection).

    Everything the user named is checked before the default model is trained (minutes): the input
    (lib.frames.check_source), the output folder, --cfg with the --set overrides, --model, --fps."""
    overrides = list(overrides or [])
    if input_path:
        check_source(input_path)
    output = output_folder(_abs(output or os.path.join("output", "demo")))
    if fps is not None:
        fps = check_fps(fps)
    if thresh is not None:
        check_fraction(thresh, "--thresh")
    using_default = model_path is None
    model_path = _abs(model_path or DEMO_MODEL)
    if not using_default and not os.path.isfile(model_path):
        raise CheckpointError(f"--model {model_path}: model file not found")
    if cfg_path and not os.path.isfile(_abs(cfg_path)):
        raise ConfigError(f"--cfg {cfg_path}: config file not found")
    test_keys = [f"TEST.SEQ_NMS={str(bool(seq_nms)).lower()}"] + overrides
    # the config (and every --set) is checked now: the one given, the model's own, or the demo's
    cfg = get_config(_abs(cfg_path or read_sidecar(model_path).get("config") or DEMO_CFG), test_keys)
    if using_default and not (os.path.isfile(model_path) and default_model_is_current(model_path)):
        train_default_model(model_path, reason="not found" if not os.path.isfile(model_path) else
                            f"was trained for another network than {DEMO_CFG} now describes")
    meta = read_sidecar(model_path)
    if not cfg_path and meta.get("config"):
        cfg = get_config(_abs(meta["config"]), test_keys)
    if ctx_name:
        cfg.CONTEXT = ctx_name
    classes = meta.get("classes")
    if not classes:
        classes = read_classes(os.path.dirname(model_path))
    thresh = cfg.TEST.VIS_THRESH if thresh is None else thresh
    ctx = get_context(cfg.CONTEXT)
    model = FGFADetector(cfg, len(classes))
    model.prepare_for_context(ctx)
    model.initialize(ctx=ctx)
    materialize(model, ctx)
    check_params_file(model, model_path)
    model.load_parameters(model_path, ctx=ctx)
    model.hybridize_for_inference(ctx)

    frames = read_frames(input_path) if input_path else default_clip()
    fps = fps or (source_fps(input_path) if input_path else None) or DEFAULT_FPS
    detector = fused_runner(WindowRunner(model, ctx, preprocess=make_preprocess(cfg)), cfg.TEST,
                            cfg.get("CONFIG_FILE") or "config")                   # TEST.FUSE, when enabled
    detector.reset()
    names, images, results, size, resized = [], [], {}, None, 0
    start = time.time()
    for name, image in frames:
        # the window aggregates features of neighbouring frames: every frame at the first one's size
        if size is None:
            size = (image.shape[1], image.shape[0])
        elif (image.shape[1], image.shape[0]) != size:
            if not resized:
                print(f"note: frame {name} is {image.shape[1]}x{image.shape[0]}, the first {size[0]}x{size[1]}: "
                      f"frames of another size are scaled into it with their aspect kept", file=sys.stderr)
            resized += 1
            image = letterbox(image, size)
        names.append(name)
        images.append(image)
        for t, result in detector.step(image):
            results[t] = result
    for t, result in detector.flush():
        results[t] = result
    mx.nd.waitall()
    seconds = time.time() - start
    per_frame = [results[t] for t in range(len(images))]
    if seq_nms and len(per_frame) > 1:
        per_frame = run_seq_nms(per_frame, link_iou=cfg.TEST.SEQ_NMS_LINK_IOU,
                                suppress_iou=cfg.TEST.SEQ_NMS_SUPPRESS_IOU, rescore=cfg.TEST.SEQ_NMS_RESCORE,
                                nms_iou=cfg.TEST.NMS_IOU)
    video_path = os.path.join(output, "demo.mp4")
    with VideoWriter(video_path, fps, mismatch="resize") as writer:
        for name, image, (boxes, scores, labels) in zip(names, images, per_frame):
            drawn = draw_detections(image, boxes, scores, labels, classes, thresh)
            save_image(os.path.join(output, f"{name}.jpg"), drawn)
            writer.write(drawn)
    speed = len(images) / max(seconds, 1e-9)
    method = f"FGFA K={cfg.TEST.K}, {'DIS' if cfg.NETWORK.FLOW == 'dis' else 'FlowNet'} flow" if cfg.NETWORK.AGGREGATE \
        else "R-FCN"
    print(f"{len(images)} frames, {speed:.2f} fps ({1000 * seconds / max(len(images), 1):.1f} ms/frame) "
          f"with {method}; "
          f"wrote {output}/*.jpg and {video_path} ({fps:g} fps)")
    return len(images), speed


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.strip().split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="video file, image or folder of frames (default: synthetic clip)")
    parser.add_argument("--cfg", default=None, help="yaml config of the model (default: the model's own)")
    parser.add_argument("--model", default=None, help=f"parameters file (default: {DEMO_MODEL})")
    parser.add_argument("--output", default=None, help="output folder (default: output/demo)")
    parser.add_argument("--thresh", type=float, default=None, help="score threshold to draw (TEST.VIS_THRESH)")
    parser.add_argument("--seq-nms", action="store_true", help="Seq-NMS over the clip before drawing")
    parser.add_argument("--ctx", default=None, help="cpu, gpu, gpu:1 (default: CONTEXT of the config)")
    parser.add_argument("--fps", type=float, default=None,
                        help=f"frame rate of the MP4 (default: the input video's, else {DEFAULT_FPS:g})")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override a key of the model's config, e.g. TEST.K=4 (repeatable)")
    args = parser.parse_args(argv)
    run(args.input, args.cfg, args.model, args.output, args.thresh, args.seq_nms, args.ctx, args.overrides,
        args.fps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
