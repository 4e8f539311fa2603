"""FGFA demo: detect objects in a video or a folder of frames; write annotated JPEGs and an MP4.

    python fgfa/demo.py [--input VIDEO_OR_FRAME_FOLDER] [--cfg CFG] [--model PARAMS] [--output DIR]
                        [--thresh 0.5] [--seq-nms]

Frames of a folder are taken in numeric order (frame2 before frame10). With no arguments the demo
runs offline on the default synthetic clip (lib.dataset.synthetic, deterministic) with the default
model ``model/fgfa_rfcn_demo.params``. If that file is missing it is trained first with the project's
own command (a few minutes on 2 cores):

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

import mxnet as mx

from fgfa.config import get_config
from fgfa.data import make_preprocess
from fgfa.detector import FGFADetector
from fgfa.test import read_classes
from fgfa.train import materialize, output_dir
from fgfa.window import WindowRunner
from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset import list_frames, read_image, video_frames, video_info
from lib.dataset.synthetic import render_video
from lib.nms import seq_nms as run_seq_nms
from lib.runtime import get_context
from lib.train import CheckpointManager
from lib.train.checkpoint import CheckpointError, check_params_file
from lib.train.run import RunFolder
from lib.viz import VideoWriter, draw_detections, save_image

DEMO_CFG = os.path.join("experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_demo.yaml")
DEMO_MODEL = os.path.join("model", "fgfa_rfcn_demo.params")
# the default clip: a held-out synthetic video (training used other seeds), same size as training
DEMO_CLIP = {"seed": 7, "video_index": 0, "num_frames": 40, "width": 160, "height": 120, "num_classes": 2,
             "max_objects": 2, "fast_fraction": 0.3}


def _abs(path):
    return path if os.path.isabs(path) else os.path.join(PROJECT_ROOT, path)


def sidecar(model_path):
    return os.path.splitext(model_path)[0] + ".json"


def network_of(cfg_path):
    """The NETWORK section of a config as plain JSON data (what the default model is checked against)."""
    return json.loads(json.dumps(get_config(_abs(cfg_path)).NETWORK))


def default_model_is_current(model_path, cfg_path=DEMO_CFG):
    """False when the default model was trained for another NETWORK than the demo config has now
    (an older checkout's model, e.g. before the demo model became a half-width ResNet-18)."""
    meta_path = sidecar(model_path)
    if not os.path.isfile(meta_path):
        return False
    with open(meta_path, "r", encoding="utf-8") as f:
        return json.load(f).get("network") == network_of(cfg_path)


def train_default_model(model_path, cfg_path=DEMO_CFG, reason="not found"):
    """Train the demo model with the project's training command and copy it to ``model_path``."""
    cfg_path = _abs(cfg_path)
    command = [sys.executable, os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "train_test.py"),
               "--cfg", cfg_path, "--skip-test"]
    print(f"default model {model_path} {reason}: training it with\n  {' '.join(command)}", flush=True)
    start = time.time()
    subprocess.run(command, check=True, cwd=PROJECT_ROOT)
    cfg = get_config(cfg_path)
    out = output_dir(cfg)
    record = CheckpointManager(out).read()
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    shutil.copyfile(os.path.join(out, record["params"]), model_path + ".tmp")
    os.replace(model_path + ".tmp", model_path)
    classes = RunFolder.read(out).classes
    with open(sidecar(model_path), "w", encoding="utf-8") as f:
        json.dump({"classes": classes, "config": os.path.relpath(cfg_path, PROJECT_ROOT),
                   "network": network_of(cfg_path),
                   "command": " ".join(["python"] + [os.path.relpath(c, PROJECT_ROOT) if c.startswith(PROJECT_ROOT)
                                                     else c for c in command[1:]]),
                   "train_seconds": round(time.time() - start, 1)}, f, indent=1)
    print(f"trained in {time.time() - start:.0f} s, saved {model_path}")
    return model_path


def read_frames(path):
    """(names, iterator of RGB frames, fps) of a video file or a folder of frames (numeric order)."""
    if os.path.isdir(path):
        files = list_frames(path)
        if not files:
            raise FileNotFoundError(f"{path}: no image files in this folder")
        names = [os.path.splitext(os.path.basename(f))[0] for f in files]
        return names, (read_image(f) for f in files), 25.0
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input not found: {path}")
    info = video_info(path)
    fps = info["fps"] or 25.0
    frames = [img for _, _, img in video_frames(path)]
    return [f"{i:06d}" for i in range(len(frames))], iter(frames), fps


def default_clip():
    frames, _ = render_video(**DEMO_CLIP)
    return [f"{i:06d}" for i in range(len(frames))], iter(frames), 25.0


def run(input_path=None, cfg_path=None, model_path=None, output=None, thresh=None, seq_nms=False,
        ctx_name=None):
    """Annotate every frame; returns (number of frames, frames per second of detection)."""


    using_default = model_path is None
    model_path = _abs(model_path or DEMO_MODEL)
    if using_default and not (os.path.isfile(model_path) and default_model_is_current(model_path)):
        train_default_model(model_path, reason="not found" if not os.path.isfile(model_path) else
                            f"was trained for another network than {DEMO_CFG} now describes")
    if not os.path.isfile(model_path):
        raise CheckpointError(f"model file not found: {model_path}")
    meta_path = sidecar(model_path)
    meta = {}
    if os.path.isfile(meta_path):
        with open(meta_path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    cfg_path = cfg_path or meta.get("config") or DEMO_CFG
    cfg = get_config(_abs(cfg_path), [f"TEST.SEQ_NMS={str(bool(seq_nms)).lower()}"])
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

    names, frames, fps = read_frames(input_path) if input_path else default_clip()
    output = _abs(output or os.path.join("output", "demo"))
    os.makedirs(output, exist_ok=True)
    detector = WindowRunner(model, ctx, preprocess=make_preprocess(cfg))
    images, results = [], {}
    start = time.time()
    for image in frames:
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
    with VideoWriter(video_path, fps) as writer:
        for name, image, (boxes, scores, labels) in zip(names, images, per_frame):
            drawn = draw_detections(image, boxes, scores, labels, classes, thresh)
            save_image(os.path.join(output, f"{name}.jpg"), drawn)
            writer.write(drawn)
    speed = len(images) / max(seconds, 1e-9)
    print(f"{len(images)} frames, {speed:.2f} fps ({1000 * seconds / max(len(images), 1):.1f} ms/frame) "
          f"with {'FGFA K=%d' % cfg.TEST.K if cfg.NETWORK.AGGREGATE else 'R-FCN'}; "
          f"wrote {output}/*.jpg and {video_path}")
    return len(images), speed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.strip().split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="video file or folder of frames (default: synthetic clip)")
    parser.add_argument("--cfg", default=None, help="yaml config of the model (default: the model's own)")
    parser.add_argument("--model", default=None, help=f"parameters file (default: {DEMO_MODEL})")
    parser.add_argument("--output", default=None, help="output folder (default: output/demo)")
    parser.add_argument("--thresh", type=float, default=None, help="score threshold to draw (TEST.VIS_THRESH)")
    parser.add_argument("--seq-nms", action="store_true", help="Seq-NMS over the clip before drawing")
    parser.add_argument("--ctx", default=None, help="cpu, gpu, gpu:1 (default: CONTEXT of the config)")
    args = parser.parse_args(argv)
    try:
        run(args.input, args.cfg, args.model, args.output, args.thresh, args.seq_nms, args.ctx)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
