"""Run an exported artifact on a video with the recipe's tiling: sliding tiles merged with NMS.

    python experiments/custom/detect_video.py --model EXPORT_DIR --cfg CFG --input VIDEO_OR_FOLDER
                                              --output OUT [--thresh 0.5] [--tiling on|off|config]

The same outputs as ``python -m lib.tools.infer`` (OUT/annotated.mp4, OUT/detections.json in COCO
results format, frames per second), with TILING.INFER of the recipe config applied: each frame is cut
into SIZE tiles overlapping by OVERLAP px, each tile goes through the artifact at the artifact's input
size (so small objects keep their pixels), boxes cut by an inner tile border are dropped and the rest
merged with class-aware NMS (lib.tiling.detect_tiled); INCLUDE_FULL_FRAME adds the whole frame for
objects larger than a tile. Without tiling it is lib.tools.infer. ``--set OVERRIDES.TEST.FUSE.ENABLED=true``
(and the other TEST.FUSE keys, as for a training run) streams the frames through the box-level memory of
lib.streaming.TrackedFusion: the last frame's detections moved along DIS flow and merged with this frame's.
"""
import argparse
import json
import os
import sys
import time

from easydict import EasyDict

from experiments.custom.recipe import load_recipe_config
from lib.cli import check_fps, check_fraction, output_folder, user_errors_exit_2
from lib.config import SHARED_DEFAULTS, merge, to_plain
from lib.fileio import atomic_write_json
from lib.frames import DEFAULT_FPS, check_source, source_fps
from lib.streaming import FrameRunner, fused_runner
from lib.tiling import detect_tiled
from lib.tools.infer import ExportedDetector, draw, iterate_frames
from lib.viz import VideoWriter


def fuse_settings(cfg):
    """TEST.FUSE and TEST.MAX_PER_IMAGE for an exported artifact: the shared defaults with the recipe's
    OVERRIDES.TEST.FUSE / MAX_PER_IMAGE over them (the family's other keys are the artifact's own)."""
    given = (to_plain(cfg.OVERRIDES) or {}).get("TEST") or {}
    keys = {key: given[key] for key in ("FUSE", "MAX_PER_IMAGE") if key in given}
    defaults = {key: SHARED_DEFAULTS["TEST"][key] for key in ("FUSE", "MAX_PER_IMAGE")}
    return EasyDict(merge(defaults, keys, source=f"{cfg.CONFIG_FILE or 'config'} (OVERRIDES.TEST)",
                          prefix="TEST."))


def run(model_dir, cfg, source, output, thresh=0.5, tiling=None, fps=None):
    """Detect on every frame of ``source``; the MP4 at ``fps`` (default: the source video's rate, else
    lib.frames.DEFAULT_FPS), every frame kept (frames of another size are scaled into the first's)."""
    detector = ExportedDetector(model_dir, "mxnet")
    tile_cfg = cfg.TILING.INFER
    tiling = bool(tile_cfg.ENABLED) if tiling is None else tiling
    os.makedirs(output, exist_ok=True)
    fps = fps or source_fps(source) or DEFAULT_FPS
    video_path, json_path = os.path.join(output, "annotated.mp4"), os.path.join(output, "detections.json")
    results, frames, elapsed, notes = [], 0, 0.0, []

    def detect(frame):
        if tiling:
            return detect_tiled(detector, frame, tuple(int(v) for v in tile_cfg.SIZE), int(tile_cfg.OVERLAP),
                                float(tile_cfg.NMS_IOU), include_full_frame=bool(tile_cfg.INCLUDE_FULL_FRAME),
                                max_detections=int(tile_cfg.MAX_DETECTIONS))
        return detector(frame)
    # frames come in BGR (OpenCV): the flow's grey image weighs the channels a little differently, the motion
    # is the same
    stream = fused_runner(FrameRunner(detect), fuse_settings(cfg), cfg.CONFIG_FILE or "config")
    stream.reset()
    with VideoWriter(video_path, fps, mismatch="resize", color="bgr", warn=notes.append) as writer:
        for name, frame in iterate_frames(source):
            start = time.perf_counter()
            (_, (boxes, scores, labels)), = stream.step(frame)
            elapsed += time.perf_counter() - start
            keep = scores >= thresh
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            for box, score, label in zip(boxes, scores, labels):
                results.append({"image_id": name, "category_id": int(label), "category": detector.classes[label],
                                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                         float(box[3] - box[1])],
                                "score": float(score)})
            writer.write(draw(frame.copy(), boxes, scores, labels, detector.classes))
            while notes:   # said once, at the first frame of another size
                print(f"note: {notes.pop()}", file=sys.stderr)
            frames += 1
    atomic_write_json(json_path, results, indent=None, sort_keys=False)
    return {"frames": frames, "fps": frames / elapsed if elapsed else 0.0, "detections": len(results),
            "tiling": tiling, "video": video_path, "json": json_path, "video_fps": fps}


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="exported artifact folder (meta.json inside)")
    parser.add_argument("--cfg", required=True, help="recipe yaml (TILING.INFER)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--input", required=True, help="video file, image, or folder of numbered frames")
    parser.add_argument("--output", required=True)
    parser.add_argument("--thresh", type=float, default=0.5)
    parser.add_argument("--tiling", choices=("on", "off", "config"), default="config")
    parser.add_argument("--fps", type=float, default=None,
                        help=f"frame rate of the MP4 (default: the input video's, else {DEFAULT_FPS:g})")
    args = parser.parse_args(argv)
    cfg = load_recipe_config(args.cfg, args.overrides)
    check_fraction(args.thresh, "--thresh")
    if args.fps is not None:
        check_fps(args.fps)
    check_source(args.input)
    output_folder(args.output)
    tiling = None if args.tiling == "config" else args.tiling == "on"
    summary = run(args.model, cfg, args.input, args.output, args.thresh, tiling, args.fps)
    print(f"{summary['frames']} frames at {summary['fps']:.1f} fps (model only, tiling "
          f"{'on' if summary['tiling'] else 'off'}); {summary['detections']} detections >= {args.thresh}; "
          f"wrote {summary['video']} ({summary['video_fps']:g} fps) and {summary['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
