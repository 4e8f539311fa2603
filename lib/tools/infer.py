"""Run an exported detector on a video, a folder of frames or one image.

    python -m lib.tools.infer --model DIR --input VIDEO_OR_FOLDER --output OUT [--thresh 0.5]
                              [--runtime mxnet|onnx]

DIR is an artifact written by ``lib.tools.export`` or ``m2det-convert-model`` (docs/DESIGN.md).
Writes OUT/annotated.mp4 (every frame: at the input video's frame rate, 25 fps for a folder of frames,
or --fps; frames of another size than the first are scaled into it, aspect kept, and the run says so),
OUT/frames/*.jpg (with --save-frames) and OUT/detections.json (COCO results format, one image_id per
frame), and prints frames per second. A user error is one 'error:' line and exit status 2. Only mxnet
or onnxruntime, numpy and OpenCV are needed: none of the training code is imported.

``--fuse auto|on|off``: the box-level memory over the video (lib.streaming.TrackedFusion, a run's
TEST.FUSE): each frame's detections merged with the last frame's, moved along DIS flow. ``auto`` (the
default) fuses when the artifact's meta.json holds a "fuse" entry (exported from a run with
TEST.FUSE.ENABLED), with its settings; ``on`` fuses with them or, without one, the shared defaults.
"""
import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

from lib.cli import user_errors_exit_2
from lib.fileio import atomic_open
from lib.frames import (  # noqa: F401
    DEFAULT_FPS,
    IMAGE_EXTENSIONS,
    FrameSourceError,
    read_frames,
    source_fps,
)

# meta.json input.resize values that resize to input.size [H, W] ignoring the aspect ("square": older artifacts)
FIXED_RESIZE = ("fixed", "square")
# meta.json "fuse" (lib.streaming.fusion_settings, recorded by lib.export.record_fusion): key -> (lowest, highest, lowest allowed itself)
FUSE_RANGES = {"decay": (0.0, 1.0, False), "iou": (0.0, 1.0, False), "min_score": (0.0, 1.0, True),
               "scale": (0.0, 1.0, False), "min_visible": (0.0, 1.0, True)}
FUSE_PRESETS = ("ultrafast", "fast", "medium")


def load_ops_library():
    """Register this project's compiled operators (lib/libdetops.so) with MXNet, once per process:
    lib.ops may have loaded it already, and MXNet 1.9 fails on a third load of a library."""
    import mxnet as mx
    if not hasattr(mx.nd, "detops_flow_warp"):
        lib_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "libdetops.so")
        mx.library.load(lib_path, verbose=False)


def iterate_frames(source):
    """Yield (name, BGR frame) of a video, an image or a folder of images (lib.frames), a source that
    cannot be read being the tools' one-line user error."""
    try:
        yield from read_frames(source, "bgr")
    except FrameSourceError as err:
        raise SystemExit(f"error: {err}") from None


def read_meta(path):
    """meta.json of an exported artifact (docs/DESIGN.md), checked: every error names the file and the
    key (raised as SystemExit with an 'error:' line, what the tools print)."""
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            meta = json.load(f)
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: {path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                         f"export the model again") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: {path}: cannot read ({err})") from None

    def bad(key, what):
        return SystemExit(f"error: {path}: {key} {what}")
    if not isinstance(meta, dict):
        raise bad("the file", f"must hold a JSON object, got {type(meta).__name__}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad('"classes"', f"must be a non-empty list of names, got {classes!r}")
    spec = meta.get("input")
    if not isinstance(spec, dict):
        raise bad('"input"', f"must be an object (resize, size or short_side/max_size, mean, std), got {spec!r}")

    def number_list(key, n, positive=False):
        value = spec.get(key)
        if not isinstance(value, list) or len(value) != n or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and (v > 0 or not positive)
                for v in value):
            raise bad(f'"input.{key}"', f"must be {n} {'positive ' if positive else ''}numbers, got {value!r}")
    if spec.get("resize") in FIXED_RESIZE:
        number_list("size", 2, positive=True)
    elif spec.get("resize") == "keep_ratio":
        for key in ("short_side", "max_size"):
            value = spec.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise bad(f'"input.{key}"', f"must be a positive number, got {value!r}")
    else:
        raise bad('"input.resize"', f"must be one of {', '.join(FIXED_RESIZE + ('keep_ratio',))}, "
                                    f"got {spec.get('resize')!r}")
    if "mean" in spec:
        number_list("mean", 3)
    if "std" in spec:
        number_list("std", 3, positive=True)
    if "fuse" in meta:
        check_fuse_meta(meta["fuse"], bad)
    return meta


def check_fuse_meta(fuse, bad):
    """meta.json's "fuse" entry: every key there with a value in its range (``bad(key, what)`` -> the error)."""
    if not isinstance(fuse, dict):
        raise bad('"fuse"', f"must be an object (decay, iou, min_score, preset, scale, min_visible, max_boxes), "
                            f"got {fuse!r}")
    for key, (low, high, closed) in FUSE_RANGES.items():
        value = fuse.get(key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and
                (low <= value if closed else low < value) and value <= high):
            raise bad(f'"fuse.{key}"', f"must be a number in {'[' if closed else '('}{low:g}, {high:g}], got {value!r}")
    if fuse.get("preset") not in FUSE_PRESETS:
        raise bad('"fuse.preset"', f"must be one of {', '.join(FUSE_PRESETS)}, got {fuse.get('preset')!r}")
    boxes = fuse.get("max_boxes")
    if not isinstance(boxes, int) or isinstance(boxes, bool) or boxes < 1:
        raise bad('"fuse.max_boxes"', f"must be a whole number >= 1, got {boxes!r}")


class ExportedDetector:
    """An exported artifact (symbol+params or ONNX) with its pre- and post-processing."""

    def __init__(self, folder, runtime="mxnet"):
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise SystemExit(f"error: {folder}: no meta.json; export a model with python -m lib.tools.export")
        self.meta = read_meta(meta_path)
        self.classes = self.meta["classes"]
        spec = self.meta["input"]
        self.mean = np.array(spec.get("mean", [0, 0, 0]), np.float32)
        self.std = np.array(spec.get("std", [1, 1, 1]), np.float32)
        self.runtime = runtime
        if runtime == "onnx":
            import onnxruntime
            path = os.path.join(folder, "model.onnx")
            if not os.path.isfile(path):
                raise SystemExit(f"error: {path} missing: export with --format onnx")
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.output_names = self._onnx_output_order(folder)
        else:
            import mxnet as mx
            if self.meta.get("ops_library"):
                load_ops_library()
            symbol = os.path.join(folder, "model-symbol.json")
            params = os.path.join(folder, "model-0000.params")
            for path in (symbol, params):
                if not os.path.isfile(path):
                    raise SystemExit(f"error: {path} missing: the export is incomplete")
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.net = mx.gluon.SymbolBlock.imports(symbol, ["data"], params)
            if mx.runtime.Features().is_enabled("MKLDNN"):
                self.net.hybridize(backend="MKLDNN", static_alloc=True, static_shape=True)
            self.mx = mx

    def _onnx_output_order(self, folder):
        """ONNX output names in ids, scores, boxes order.

        MXNet's ONNX exporter does not keep the symbol's output order, so take the order from the
        symbol file's heads (plain JSON, no MXNet needed) or from meta.json's "onnx_outputs".
        """
        if "onnx_outputs" in self.meta:
            return self.meta["onnx_outputs"]
        names = [o.name for o in self.session.get_outputs()]
        symbol = os.path.join(folder, "model-symbol.json")
        if os.path.isfile(symbol):
            with open(symbol, "r", encoding="utf-8-sig") as f:
                graph = json.load(f)
            heads = [graph["nodes"][h[0]]["name"] for h in graph["heads"]]
            if sorted(heads) == sorted(names):
                return heads
        return names

    def preprocess(self, frame_bgr):
        """BGR frame -> (1,3,H,W) float32 input and the (sx, sy) scale from input to frame pixels."""
        spec = self.meta["input"]
        h, w = frame_bgr.shape[:2]
        if spec["resize"] in FIXED_RESIZE:
            th, tw = spec["size"]
        else:
            scale = spec["short_side"] / min(h, w)
            if max(h, w) * scale > spec["max_size"]:
                scale = spec["max_size"] / max(h, w)
            th, tw = int(round(h * scale)), int(round(w * scale))
        # resize first: the channel swap and the normalisation then touch the input's pixels, not the
        # frame's (3x fewer for 1280x720 -> 768x432; a linear resize commutes with both)
        resized = cv2.resize(frame_bgr, (tw, th), interpolation=cv2.INTER_LINEAR)
        data = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32)
        data -= self.mean
        data *= 1.0 / self.std
        return np.ascontiguousarray(data.transpose(2, 0, 1)[None]), (w / tw, h / th)

    def __call__(self, frame_bgr):
        """-> boxes (K,4) in frame pixels, scores (K,), labels (K,) with padding removed."""
        data, (sx, sy) = self.preprocess(frame_bgr)
        if self.runtime == "onnx":
            ids, scores, boxes = self.session.run(self.output_names, {self.input_name: data})
        else:
            ids, scores, boxes = (o.asnumpy() for o in self.net(self.mx.nd.array(data)))
        ids, scores, boxes = ids.reshape(-1), scores.reshape(-1), boxes.reshape(-1, 4)
        valid = (ids >= 0) & (scores >= 0)
        boxes = boxes[valid] * np.array([sx, sy, sx, sy], np.float32)
        h, w = frame_bgr.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h])
        return boxes, scores[valid], np.rint(ids[valid]).astype(np.int64)


def choose_fusion(meta, mode="auto"):
    """The box memory's settings for ``--fuse`` ``mode`` (auto | on | off) -> meta.json's "fuse" entry
    (checked by read_meta), the shared TEST.FUSE defaults (``on`` without one) or None (no fusion)."""
    if mode == "off" or (mode == "auto" and "fuse" not in meta):
        return None
    if "fuse" in meta:
        return dict(meta["fuse"])
    from lib.config import SHARED_DEFAULTS
    from lib.streaming import fusion_settings
    defaults = SHARED_DEFAULTS["TEST"]
    return fusion_settings(dict(defaults, FUSE=dict(defaults["FUSE"], ENABLED=True)))


def fused_stream(detect, fuse):
    """``detect(frame) -> (boxes, scores, labels)`` as a lib.streaming runner inside the box memory with
    ``fuse``'s settings (``choose_fusion``). Imported only here: an unfused run needs none of the project's
    modules. Frames come in BGR (OpenCV): the flow's grey image weighs the channels a little differently,
    the motion is the same."""
    from lib.streaming import FrameRunner, tracked_fusion
    stream = tracked_fusion(FrameRunner(detect), fuse)
    stream.reset()
    return stream


def draw(frame_bgr, boxes, scores, labels, classes):
    """Boxes with class name and score, colour per class (BGR image, drawn in place)."""
    for box, score, label in zip(boxes, scores, labels):
        hue = int(label) * 47 % 180
        color = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(frame_bgr, (x1, y1), (x2, y2), color, 2)
        name = classes[label] if 0 <= label < len(classes) else str(label)
        text = f"{name} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.rectangle(frame_bgr, (x1, max(0, y1 - th - 4)), (x1 + tw + 2, y1), color, -1)
        cv2.putText(frame_bgr, text, (x1 + 1, max(th, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    return frame_bgr


def check_fps(fps, flag="--fps"):
    """A frame rate to write at: a finite number > 0 (SystemExit with the flag named otherwise)."""
    if fps is None or not np.isfinite(fps) or fps <= 0:
        raise SystemExit(f"error: {flag} {fps:g}: the frame rate of the MP4 must be > 0")
    return float(fps)


def run(model, source, output, thresh=0.5, runtime="mxnet", fps=None, save_frames=False, progress=True,
        fuse="auto"):
    """Detect on every frame; returns a summary dict (frames, fps, detections, paths, and how the
    MP4's frame rate was chosen: ``video_fps`` and ``fps_from`` = "--fps", "video" (the source's
    own rate) or "default" (DEFAULT_FPS for frames without a rate); ``resized_frames``: frames of
    another size than the first, scaled into the video (lib.viz.VideoWriter); ``fuse``: the box
    memory's settings or None (``--fuse``, ``choose_fusion``))."""
    from lib.viz import VideoWriter
    if fps is not None:
        fps, fps_from = check_fps(fps), "--fps"
    else:
        fps = source_fps(source)
        fps_from = "video" if fps else "default"
        fps = fps or DEFAULT_FPS
    detector = ExportedDetector(model, runtime)
    fusion = choose_fusion(detector.meta, fuse)
    stream = fused_stream(detector, fusion) if fusion else None
    try:
        os.makedirs(output, exist_ok=True)
        if save_frames:
            os.makedirs(os.path.join(output, "frames"), exist_ok=True)
    except OSError as err:
        raise SystemExit(f"error: --output {output}: cannot create the folder ({err.strerror})") from None
    results, frames, elapsed = [], 0, 0.0
    video_path = os.path.join(output, "annotated.mp4")
    notes = []
    with VideoWriter(video_path, fps, mismatch="resize", color="bgr", warn=notes.append) as writer:
        for name, frame in iterate_frames(source):
            start = time.perf_counter()
            if stream is None:
                boxes, scores, labels = detector(frame)
            else:
                (_, (boxes, scores, labels)), = stream.step(frame)
            elapsed += time.perf_counter() - start
            keep = scores >= thresh
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            for box, score, label in zip(boxes, scores, labels):
                results.append({"image_id": name, "category_id": int(label),
                                "category": detector.classes[label] if label < len(detector.classes) else str(label),
                                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                         float(box[3] - box[1])],
                                "score": float(score)})
            annotated = draw(frame.copy(), boxes, scores, labels, detector.classes)
            writer.write(annotated)
            while notes:  # the writer says it once, when the first frame of another size comes
                print(f"note: {notes.pop()}", file=sys.stderr)
            if save_frames:
                cv2.imwrite(os.path.join(output, "frames", f"{name}.jpg"), annotated)
            frames += 1
            if progress and frames % 25 == 0:
                print(f"{frames} frames, {frames / elapsed:.1f} fps", file=sys.stderr)
    json_path = os.path.join(output, "detections.json")
    with atomic_open(json_path) as f:
        json.dump(results, f)
    summary = {"frames": frames, "fps": frames / elapsed if elapsed else 0.0, "detections": len(results),
               "video": video_path, "json": json_path, "video_fps": fps, "fps_from": fps_from,
               "video_frames": writer.frames_written, "resized_frames": writer.resized_frames, "fuse": fusion}
    return summary


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(description="Run an exported detector on a video or frame folder.")
    parser.add_argument("--model", required=True, help="exported artifact folder (meta.json inside)")
    parser.add_argument("--input", required=True, help="video file, image, or folder of numbered frames")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--thresh", type=float, default=0.5, help="score threshold for drawing and JSON (0..1)")
    parser.add_argument("--runtime", choices=["mxnet", "onnx"], default="mxnet")
    parser.add_argument("--fps", type=float, default=None,
                        help=f"frame rate of the written MP4 (default: the input video's own; {DEFAULT_FPS:g} for "
                             f"a folder of frames)")
    parser.add_argument("--save-frames", action="store_true", help="also write annotated JPEGs")
    parser.add_argument("--fuse", choices=["auto", "on", "off"], default="auto",
                        help="box memory over the video (the last frame's boxes moved by DIS flow, merged with this "
                             "frame's): auto = as the artifact's meta.json says (a run with TEST.FUSE.ENABLED)")
    args = parser.parse_args(argv)
    try:
        if not 0 <= args.thresh <= 1:
            raise SystemExit(f"error: --thresh {args.thresh:g}: a score threshold must be in [0, 1]")
        if args.fps is not None:
            check_fps(args.fps)
        summary = run(args.model, args.input, args.output, args.thresh, args.runtime, args.fps, args.save_frames,
                      fuse=args.fuse)
    except SystemExit as exc:  # user errors are raised as SystemExit("error: ..."): one line, status 2
        if not isinstance(exc.code, str):
            raise
        print(exc.code if exc.code.startswith("error:") else f"error: {exc.code}", file=sys.stderr)
        return 2
    rate = {"--fps": "--fps", "video": "the input video's rate",
            "default": "default for frames without a rate; --fps sets it"}[summary["fps_from"]]
    print(f"{summary['frames']} frames at {summary['fps']:.1f} fps "
          f"({'model and box memory' if summary['fuse'] else 'model only'}); "
          f"{summary['detections']} detections >= {args.thresh}; wrote {summary['video']} "
          f"({summary['video_frames']} frames at {summary['video_fps']:g} fps: {rate}) and {summary['json']}")
    if summary["resized_frames"]:
        print(f"note: {summary['resized_frames']} frame(s) of another size than the first were scaled into the "
              f"video (aspect kept); detections.json holds their boxes in their own pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
