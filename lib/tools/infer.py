"""Run an exported detector on a video, a folder of frames or one image.

    python -m lib.tools.infer --model DIR --input VIDEO_OR_FOLDER --output OUT [--thresh 0.5]
                              [--runtime mxnet|onnx]

DIR is an artifact written by ``lib.tools.export`` or ``m2det-convert-model`` (docs/DESIGN.md).
Writes OUT/annotated.mp4, OUT/frames/*.jpg (with --save-frames) and OUT/detections.json (COCO results
format, one image_id per frame), and prints frames per second. Only mxnet or onnxruntime, numpy and
OpenCV are needed: none of the training code is imported.
"""
import argparse
import json
import os
import re
import sys
import time

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# meta.json input.resize values that resize to input.size [H, W] ignoring the aspect ("square": older artifacts)
FIXED_RESIZE = ("fixed", "square")


def load_ops_library():
    """Register this project's compiled operators (lib/libdetops.so) with MXNet, once per process:
    lib.ops may have loaded it already, and MXNet 1.9 fails on a third load of a library."""
    import mxnet as mx
    if not hasattr(mx.nd, "detops_flow_warp"):
        lib_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "libdetops.so")
        mx.library.load(lib_path, verbose=False)


def _numeric_key(path):
    # frame10 after frame9: sort by the numbers in the name
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def iterate_frames(source):
    """Yield (name, BGR frame) from a video file, an image, or a folder of images in numeric order."""
    if os.path.isdir(source):
        files = sorted((os.path.join(source, f) for f in os.listdir(source)
                        if f.lower().endswith(IMAGE_EXTENSIONS)), key=_numeric_key)
        if not files:
            raise SystemExit(f"error: {source}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        for path in files:
            frame = cv2.imread(path, cv2.IMREAD_COLOR)
            if frame is None:
                print(f"warning: {path}: unreadable image, skipped", file=sys.stderr)
                continue
            yield os.path.splitext(os.path.basename(path))[0], frame
        return
    if not os.path.exists(source):
        raise SystemExit(f"error: {source}: no such file or folder")
    if source.lower().endswith(IMAGE_EXTENSIONS):
        frame = cv2.imread(source, cv2.IMREAD_COLOR)
        if frame is None:
            raise SystemExit(f"error: {source}: unreadable image")
        yield os.path.splitext(os.path.basename(source))[0], frame
        return
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"error: {source}: OpenCV cannot open this video")
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        yield f"{index:06d}", frame
        index += 1
    capture.release()
    if index == 0:
        raise SystemExit(f"error: {source}: the video has no readable frames")


class ExportedDetector:
    """An exported artifact (symbol+params or ONNX) with its pre- and post-processing."""

    def __init__(self, folder, runtime="mxnet"):
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise SystemExit(f"error: {folder}: no meta.json; export a model with python -m lib.tools.export")
        with open(meta_path, "r", encoding="utf-8") as f:
            self.meta = json.load(f)
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
            with open(symbol, "r", encoding="utf-8") as f:
                graph = json.load(f)
            heads = [graph["nodes"][h[0]]["name"] for h in graph["heads"]]
            if sorted(heads) == sorted(names):
                return heads
        return names

    def preprocess(self, frame_bgr):
        """BGR frame -> (1,3,H,W) float32 input and the (sx, sy) scale from input to frame pixels."""
        spec = self.meta["input"]
        h, w = frame_bgr.shape[:2]
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        if spec["resize"] in FIXED_RESIZE:
            th, tw = spec["size"]
        else:
            scale = spec["short_side"] / min(h, w)
            if max(h, w) * scale > spec["max_size"]:
                scale = spec["max_size"] / max(h, w)
            th, tw = int(round(h * scale)), int(round(w * scale))
        resized = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        data = ((resized - self.mean) / self.std).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(data), (w / tw, h / th)

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


def run(model, source, output, thresh=0.5, runtime="mxnet", fps=25.0, save_frames=False, progress=True):
    """Detect on every frame; returns a summary dict (frames, fps, detections, paths)."""
    detector = ExportedDetector(model, runtime)
    os.makedirs(output, exist_ok=True)
    if save_frames:
        os.makedirs(os.path.join(output, "frames"), exist_ok=True)
    results, writer, frames, elapsed = [], None, 0, 0.0
    video_path = os.path.join(output, "annotated.mp4")
    for name, frame in iterate_frames(source):
        start = time.perf_counter()
        boxes, scores, labels = detector(frame)
        elapsed += time.perf_counter() - start
        keep = scores >= thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        for box, score, label in zip(boxes, scores, labels):
            results.append({"image_id": name, "category_id": int(label),
                            "category": detector.classes[label] if label < len(detector.classes) else str(label),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                            "score": float(score)})
        annotated = draw(frame.copy(), boxes, scores, labels, detector.classes)
        if writer is None:
            h, w = annotated.shape[:2]
            writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        writer.write(annotated)
        if save_frames:
            cv2.imwrite(os.path.join(output, "frames", f"{name}.jpg"), annotated)
        frames += 1
        if progress and frames % 25 == 0:
            print(f"{frames} frames, {frames / elapsed:.1f} fps", file=sys.stderr)
    if writer is not None:
        writer.release()
    json_path = os.path.join(output, "detections.json")
    with open(json_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f)
    os.replace(json_path + ".tmp", json_path)
    summary = {"frames": frames, "fps": frames / elapsed if elapsed else 0.0, "detections": len(results),
               "video": video_path, "json": json_path}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run an exported detector on a video or frame folder.")
    parser.add_argument("--model", required=True, help="exported artifact folder (meta.json inside)")
    parser.add_argument("--input", required=True, help="video file, image, or folder of numbered frames")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--thresh", type=float, default=0.5, help="score threshold for drawing and JSON")
    parser.add_argument("--runtime", choices=["mxnet", "onnx"], default="mxnet")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the written MP4")
    parser.add_argument("--save-frames", action="store_true", help="also write annotated JPEGs")
    args = parser.parse_args(argv)
    summary = run(args.model, args.input, args.output, args.thresh, args.runtime, args.fps, args.save_frames)
    print(f"{summary['frames']} frames at {summary['fps']:.1f} fps (model only); "
          f"{summary['detections']} detections >= {args.thresh}; wrote {summary['video']} and {summary['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
