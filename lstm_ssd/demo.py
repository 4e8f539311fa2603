"""Streaming demo: detect objects frame by frame with LSTM-SSD / Looking Fast and Slow.

    python lstm_ssd/demo.py [--input VIDEO_OR_FOLDER] [--cfg CFG.yaml] [--model MODEL.params]
                            [--output DIR] [--policy fixed|large|small|async|adaptive] [--threshold 0.4]

Writes DIR/frames/<n>.jpg (annotated) and DIR/demo.mp4, and prints the streaming fps (network +
post-processing, batch 1, hybridized with MKLDNN). Without arguments it runs offline on a synthetic
clip with the default model (model/lstm_ssd/demo_synthetic_fast_slow.params); if that file is
missing it is trained first (about 3 minutes on 2 busy cores) with

    python experiments/lstm_ssd/train_test.py --cfg experiments/lstm_ssd/cfgs/demo_synthetic_fast_slow.yaml \
        --set OUTPUT_DIR=output/lstm_ssd/demo_default_model PHASE=[train]

and copied to model/lstm_ssd/.
"""
import argparse
import os
import shutil
import time

from lib.config import PROJECT_ROOT
from lib.dataset import list_frames, read_image, video_frames
from lib.dataset.synthetic import SYNTHETIC_CLASSES, render_video
from lib.viz import VideoWriter, draw_detections, save_image
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import load_model
from lstm_ssd.streaming import AsyncStreamingDetector, StreamingDetector

DEFAULT_CFG = os.path.join("experiments", "lstm_ssd", "cfgs", "demo_synthetic_fast_slow.yaml")
DEFAULT_MODEL = os.path.join("model", "lstm_ssd", "demo_synthetic_fast_slow.params")


def _root():
    return PROJECT_ROOT


def frames_from(source):
    """Yield RGB frames from a video file or a folder of images (in frame-number order)."""
    if os.path.isdir(source):
        paths = list_frames(source)
        if not paths:
            raise FileNotFoundError(f"--input {source}: no image files in this folder")
        for p in paths:
            yield read_image(p if os.path.isabs(p) else os.path.join(source, p))
    elif os.path.isfile(source):
        for _, _, image in video_frames(source):
            yield image
    else:
        raise FileNotFoundError(f"--input {source}: no such video file or folder")


def synthetic_frames(seed=2, num_frames=48, width=160, height=120):
    # seed 2 = the synthetic configs' test videos (never seen in training, which uses seed 1)
    """A synthetic test clip (objects moving over a textured background), rendered in memory."""
    frames, _ = render_video(seed, 0, num_frames, width, height, num_classes=4, max_objects=3)
    yield from frames


def ensure_default_model(cfg_path, model_path):
    """Train the default synthetic model on first use (and keep it in model/lstm_ssd/)."""
    if os.path.isfile(model_path):
        return model_path
    print(f"{model_path} not found: training the default model once (a few minutes on CPU) ...")
    import importlib.util
    script = os.path.join(_root(), "experiments", "lstm_ssd", "train_test.py")
    spec = importlib.util.spec_from_file_location("lstm_ssd_train_test", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run_dir = os.path.join(_root(), "output", "lstm_ssd", "demo_default_model")
    module.main(["--cfg", cfg_path, "--set", f"OUTPUT_DIR={run_dir}", "PHASE=[train]"])
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    shutil.copyfile(os.path.join(run_dir, "model.params"), model_path)
    shutil.copyfile(os.path.join(run_dir, "model.channels.json"), os.path.splitext(model_path)[0] + ".channels.json")
    return model_path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=None, help="video file or folder of frames (default: synthetic clip)")
    ap.add_argument("--cfg", default=None, help=f"yaml config (default {DEFAULT_CFG})")
    ap.add_argument("--model", default=None, help=f".params (default {DEFAULT_MODEL}, trained if missing)")
    ap.add_argument("--output", default=os.path.join("output", "lstm_ssd", "demo"))
    ap.add_argument("--policy", default=None, help="override INTERLEAVE.POLICY")
    ap.add_argument("--threshold", type=float, default=None, help="score threshold of drawn boxes")
    ap.add_argument("--fps", type=float, default=25.0, help="frame rate of the written MP4")
    args = ap.parse_args(argv)


    root = _root()
    cfg_path = args.cfg or os.path.join(root, DEFAULT_CFG)
    cfg = lstm_config.load(cfg_path)
    if args.model is None and args.cfg is None:
        model_path = ensure_default_model(cfg_path, os.path.join(root, DEFAULT_MODEL))
    elif args.model is None:
        raise SystemExit("--model is required together with --cfg")
    else:
        model_path = args.model
    net = load_model(cfg, model_path)
    classes = list(cfg.DATASET.CLASSES) or None
    if classes is None and cfg.DATASET.TRAIN.get("FORMAT") == "synthetic":
        classes = list(SYNTHETIC_CLASSES[:cfg.MODEL.NUM_CLASSES])
    policy = args.policy or cfg.INTERLEAVE.POLICY
    stream = AsyncStreamingDetector(net, cfg) if policy == "async" else StreamingDetector(net, cfg, policy=policy)
    threshold = cfg.TEST.DRAW_THRESH if args.threshold is None else args.threshold
    source = frames_from(args.input) if args.input else synthetic_frames()
    frame_dir = os.path.join(args.output, "frames")
    os.makedirs(frame_dir, exist_ok=True)
    seconds, count, large = 0.0, 0, 0
    try:
        with VideoWriter(os.path.join(args.output, "demo.mp4"), fps=args.fps) as writer:
            for image in source:
                t0 = time.perf_counter()
                (_, (boxes, scores, labels)), = stream.step(image)
                seconds += time.perf_counter() - t0
                count += 1
                large += stream.last_extractor == "large"
                drawn = draw_detections(image, boxes, scores, labels, classes, threshold)
                save_image(os.path.join(frame_dir, f"{count - 1:06d}.jpg"), drawn)
                writer.write(drawn)
    finally:
        if policy == "async":
            stream.close()
    if count == 0:
        raise SystemExit("no frames read from the input")
    print(f"{count} frames, policy {policy}: {count / seconds:.1f} fps streaming "
          f"({1000 * seconds / count:.1f} ms/frame, large extractor on {large}/{count} frames)")
    print(f"annotated frames in {frame_dir}, video {os.path.join(args.output, 'demo.mp4')}")


if __name__ == "__main__":
    main()
