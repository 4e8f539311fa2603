"""Streaming demo: detect objects frame by frame with LSTM-SSD / Looking Fast and Slow.

    python lstm_ssd/demo.py [--input VIDEO_OR_FOLDER] [--cfg CFG.yaml --model MODEL.params] [--output DIR]
                            [--policy fixed|large|small|async] [--threshold 0.4] [--fps FPS] [--set KEY=VALUE ...]

Writes DIR/frames/<n>.jpg (annotated) and DIR/demo.mp4 (at the input video's frame rate; --fps sets
it, a folder of frames gets 25), and prints the streaming fps (network + post-processing, batch 1,
hybridized with MKLDNN). Frames are read with lib.frames (a video, one image, or a folder of frames in
numeric order). --set overrides a key of the model's config (e.g. --set INTERLEAVE.TAU=2). The input,
the output folder, --cfg, --model and the other values are checked before anything else runs.

Without --cfg / --model it runs offline on a synthetic clip with the default model
(model/lstm_ssd/demo_synthetic_fast_slow.params, + .channels.json and a .json sidecar: classes,
config, network). If that file is missing, or was trained for another network than the demo config
describes, it is trained first (about 3.5 minutes on 2 cores) with

    python experiments/lstm_ssd/train_test.py --cfg experiments/lstm_ssd/cfgs/demo_synthetic_fast_slow.yaml \
        --set OUTPUT_DIR=output/lstm_ssd/demo_default_model_<8 hex digits of the network> PHASE=[train]

and copied to model/lstm_ssd/ (the run folder is one per network: an interrupted first run resumes).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from lib.cli import UsageError, check_fps, check_fraction, output_folder, user_errors_exit_2
from lib.config import PROJECT_ROOT, ConfigError, project_path, to_plain
from lib.dataset.synthetic import SYNTHETIC_CLASSES, render_video
from lib.fileio import atomic_write_json
from lib.frames import DEFAULT_FPS, check_source, read_frames, source_fps
from lib.streaming import fused_runner
from lib.train.checkpoint import CheckpointError, read_model_sidecar
from lib.train.checkpoint import model_sidecar as sidecar
from lib.train.run import RUN_FILE, RunFolder
from lib.viz import VideoWriter, draw_detections, save_image
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import load_model
from lstm_ssd.streaming import POLICIES, AsyncStreamingDetector, StreamingDetector
from lstm_ssd.train import MODEL_FILE

DEFAULT_CFG = os.path.join("experiments", "lstm_ssd", "cfgs", "demo_synthetic_fast_slow.yaml")
DEFAULT_MODEL = os.path.join("model", "lstm_ssd", "demo_synthetic_fast_slow.params")
DEFAULT_RUN = os.path.join("output", "lstm_ssd", "demo_default_model")
DEFAULT_OUTPUT = os.path.join("output", "lstm_ssd", "demo")
# the default clip: seed 2 = the synthetic configs' test videos (never seen in training, which uses seed 1)
DEMO_CLIP = {"seed": 2, "video_index": 0, "num_frames": 48, "width": 160, "height": 120, "num_classes": 4,
             "max_objects": 3}


def network_of(cfg_path):
    """What the default model is checked against: the MODEL section and the input size of a config,
    as plain JSON data."""
    cfg = lstm_config.load(project_path(cfg_path))
    return json.loads(json.dumps(to_plain({"MODEL": cfg.MODEL, "INPUT.SIZE": cfg.INPUT.SIZE})))


def read_sidecar(model_path):
    return read_model_sidecar(model_path, ("classes", "network"))


def default_model_is_current(model_path, cfg_path=DEFAULT_CFG):
    """False when the default model is missing, has no sidecar, or was trained for another network than
    the demo config describes now (an older checkout's model): it is then trained again."""
    if not os.path.isfile(model_path):
        return False
    return read_sidecar(model_path).get("network") == network_of(cfg_path)


def default_run_dir(cfg_path=DEFAULT_CFG):
    """The run folder the default model is trained in, one per network (DEFAULT_RUN + '_' + 8 hex digits of
    its NETWORK): an interrupted first run resumes, and the checkpoints of an older network never meet a
    newer one."""
    digest = hashlib.sha1(json.dumps(network_of(cfg_path), sort_keys=True).encode()).hexdigest()[:8]
    return project_path(f"{DEFAULT_RUN}_{digest}")


def train_default_model(model_path, cfg_path=DEFAULT_CFG, reason="not found"):
    """Train the demo model with the project's training command and copy it (with its channel counts and
    a sidecar) to ``model_path``."""
    run_dir = default_run_dir(cfg_path)
    command = [sys.executable, os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "train_test.py"),
               "--cfg", project_path(cfg_path), "--set", f"OUTPUT_DIR={run_dir}", "PHASE=[train]"]
    print(f"default model {model_path} {reason}: training it once (a few minutes on a CPU) with\n  "
          f"{' '.join(command)}", flush=True)
    start = time.time()
    status = subprocess.run(command, cwd=PROJECT_ROOT).returncode
    if status:
        raise SystemExit(f"error: training the default model failed (exit status {status}; its messages are "
                         f"above): {' '.join(command)}")
    seconds = time.time() - start
    base = os.path.splitext(model_path)[0]
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    for source, target in ((os.path.join(run_dir, MODEL_FILE), model_path),
                           (os.path.join(run_dir, "model.channels.json"), base + ".channels.json")):
        shutil.copyfile(source, target + ".tmp")
        os.replace(target + ".tmp", target)
    atomic_write_json(sidecar(model_path), {
        "classes": RunFolder.read(run_dir).classes, "config": os.path.relpath(project_path(cfg_path), PROJECT_ROOT),
        "network": network_of(cfg_path), "train_seconds": round(seconds, 1),
        "command": " ".join(["python"] + [os.path.relpath(c, PROJECT_ROOT) if c.startswith(PROJECT_ROOT) else c
                                          for c in command[1:]])}, sort_keys=False)
    print(f"trained in {seconds:.0f} s, saved {model_path}")
    return model_path


def class_names(cfg, model_path, meta):
    """The class names to draw: the sidecar's, the run folder's beside the model, DATASET.CLASSES, or
    the synthetic set's names; None (numbers are drawn) when nothing says."""
    if meta.get("classes"):
        return list(meta["classes"])
    folder = os.path.dirname(os.path.abspath(model_path))
    if os.path.isfile(os.path.join(folder, RUN_FILE)):
        return RunFolder.read(folder).classes
    if cfg.DATASET.CLASSES:
        return list(cfg.DATASET.CLASSES)
    specs = cfg.DATASET.TRAIN or []
    if specs and all(spec.get("FORMAT") == "synthetic" for spec in specs):
        return list(SYNTHETIC_CLASSES[:cfg.MODEL.NUM_CLASSES])
    return None


def synthetic_frames():
    """(name, frame) of the default synthetic clip (objects moving over a textured background)."""
    frames, _ = render_video(**DEMO_CLIP)
    for index, frame in enumerate(frames):
        yield f"{index:06d}", frame


def run(input_path=None, cfg_path=None, model_path=None, output=None, policy=None, threshold=None, fps=None,
        overrides=None):
    """Stream every frame through the detector; returns a summary dict (frames, fps, video, frames_dir).
    Everything the user named is checked before the default model is trained (minutes)."""
    if cfg_path and not model_path:
        raise UsageError("--model is required together with --cfg (the weights trained with that config)")
    if input_path:
        check_source(input_path)
    output = output_folder(os.path.abspath(output) if output else project_path(DEFAULT_OUTPUT))
    frame_dir = output_folder(os.path.join(output, "frames"), "--output")
    if fps is not None:
        fps = check_fps(fps)
    if threshold is not None:
        check_fraction(threshold, "--threshold")
    if policy is not None and policy not in POLICIES:
        raise UsageError(f"--policy {policy}: must be one of {', '.join(POLICIES)}")
    if model_path and not os.path.isfile(model_path):
        raise CheckpointError(f"--model {model_path}: model file not found")
    if cfg_path and not os.path.isfile(cfg_path):
        raise ConfigError(f"--cfg {cfg_path}: config file not found")
    cfg = lstm_config.load(cfg_path or project_path(DEFAULT_CFG), overrides)   # the --set keys checked now
    if model_path is None:
        model_path = project_path(DEFAULT_MODEL)
        if not default_model_is_current(model_path):
            train_default_model(model_path, reason="not found" if not os.path.isfile(model_path) else
                                f"was trained for another network than {DEFAULT_CFG} now describes")
    meta = read_sidecar(model_path) if not cfg_path else {}
    net = load_model(cfg, model_path)
    classes = class_names(cfg, model_path, meta)
    policy = policy or cfg.INTERLEAVE.POLICY
    stream = AsyncStreamingDetector(net, cfg) if policy == "async" else StreamingDetector(net, cfg, policy=policy)
    stream = fused_runner(stream, cfg.TEST, cfg.get("CONFIG_FILE") or "config")    # TEST.FUSE, when enabled
    threshold = cfg.TEST.DRAW_THRESH if threshold is None else threshold
    source = read_frames(input_path) if input_path else synthetic_frames()
    fps = fps or (source_fps(input_path) if input_path else None) or DEFAULT_FPS
    video_path = os.path.join(output, "demo.mp4")
    notes = []
    seconds, count, large = 0.0, 0, 0
    try:
        with VideoWriter(video_path, fps, mismatch="resize", warn=notes.append) as writer:
            for _, image in source:
                t0 = time.perf_counter()
                (_, (boxes, scores, labels)), = stream.step(image)
                seconds += time.perf_counter() - t0
                count += 1
                large += stream.last_extractor == "large"
                drawn = draw_detections(image, boxes, scores, labels, classes, threshold)
                save_image(os.path.join(frame_dir, f"{count - 1:06d}.jpg"), drawn)
                writer.write(drawn)
                while notes:   # said once, at the first frame of another size
                    print(f"note: {notes.pop()}", file=sys.stderr)
    finally:
        if policy == "async":
            stream.close()
    print(f"{count} frames, policy {policy}: {count / seconds:.1f} fps streaming "
          f"({1000 * seconds / count:.1f} ms/frame, large extractor on {large}/{count} frames)")
    print(f"annotated frames in {frame_dir}, video {video_path} ({fps:g} fps)")
    return {"frames": count, "fps": count / seconds, "video": video_path, "frames_dir": frame_dir,
            "video_fps": fps, "policy": policy, "large_frames": large}


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="\n\n".join(__doc__.strip().split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="video file, image or folder of frames (default: synthetic clip)")
    ap.add_argument("--cfg", default=None, help=f"yaml config of --model (default {DEFAULT_CFG})")
    ap.add_argument("--model", default=None, help=f".params (default {DEFAULT_MODEL}, trained if missing)")
    ap.add_argument("--output", default=None, help=f"output folder (default {DEFAULT_OUTPUT})")
    ap.add_argument("--policy", default=None, help=f"override INTERLEAVE.POLICY ({', '.join(POLICIES)})")
    ap.add_argument("--threshold", type=float, default=None, help="score threshold of drawn boxes")
    ap.add_argument("--fps", type=float, default=None,
                    help=f"frame rate of the MP4 (default: the input video's, else {DEFAULT_FPS:g})")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override a key of the model's config, e.g. INTERLEAVE.TAU=2 (repeatable)")
    args = ap.parse_args(argv)
    run(args.input, args.cfg, args.model, args.output, args.policy, args.threshold, args.fps, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
