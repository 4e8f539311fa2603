"""Drawing detections / ground truth on RGB images and writing annotated JPEG/PNG/MP4 with OpenCV.

Images are HxWx3 uint8 RGB (as ``lib.dataset.read_image`` returns them); boxes follow the project
convention [x1, y1, x2, y2] (continuous pixels, x2/y2 exclusive). Detector outputs in the gluoncv
layout (ids (1,K,1), scores (1,K,1), boxes (1,K,4), padded with -1) and mx.nd arrays are accepted.
"""
import colorsys
import logging
import os

import cv2
import numpy as np

GT_COLOR = (0, 255, 0)


def _to_numpy(x, last_dim=None):
    if x is None:
        return None
    if hasattr(x, "asnumpy"):
        x = x.asnumpy()
    x = np.asarray(x)
    while x.ndim > (2 if last_dim else 1) and x.shape[0] == 1:
        x = x[0]  # batch of one -> its rows
    if last_dim:
        return x.reshape(-1, last_dim)
    return x.reshape(-1)


def class_color(label):
    """A stable, well-separated RGB colour per class index (golden-ratio hue steps)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(rgb):
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _style(image):
    scale = max(image.shape[0], image.shape[1]) / 1000.0
    return max(1, int(round(2 * scale))), max(0.4, 0.6 * scale)


def _draw_box(canvas, box, color, text, thickness, font_scale):
    height, width = canvas.shape[:2]
    x1, y1, x2, y2 = box
    # Pixel (i, j) covers [i, i+1): the last covered column of an exclusive x2 is x2 - 1.
    p1 = (int(np.floor(x1)), int(np.floor(y1)))
    p2 = (int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1)
    cv2.rectangle(canvas, p1, p2, color, thickness)  # crisp lines: antialiasing blurs thin boxes
    if not text:
        return
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, 1)
    label_h = th + baseline + 2
    # Above the box if there is room, else just inside its top edge; always inside the image.
    top = p1[1] - label_h if p1[1] - label_h >= 0 else min(max(p1[1], 0), max(height - label_h, 0))
    left = min(max(p1[0], 0), max(width - tw - 2, 0))
    cv2.rectangle(canvas, (left, top), (left + tw + 2, top + label_h), color, -1)
    cv2.putText(canvas, text, (left + 1, top + th + 1), font, font_scale, _text_color(color), 1,
                lineType=cv2.LINE_AA)


def _label_name(label, classes):
    if classes is not None and 0 <= label < len(classes):
        return str(classes[label])
    return str(label)


def draw_detections(image, boxes, scores, labels, classes=None, threshold=0.5, colors=None,
                    thickness=None):
    """Return a copy of ``image`` with the detections scoring >= ``threshold`` drawn, labelled
    "<class> <score>". Entries with a negative label (padding) are skipped. ``colors``: optional
    {label: (r, g, b)}."""
    _check_image(image)
    boxes = _to_numpy(boxes, 4)
    scores = _to_numpy(scores)
    labels = _to_numpy(labels).astype(np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"draw_detections: {len(boxes)} boxes, {len(scores)} scores and "
                         f"{len(labels)} labels must be the same number")
    canvas = np.ascontiguousarray(image.copy())
    line, font_scale = _style(canvas)
    line = thickness or line
    order = np.argsort(scores, kind="stable")  # highest score drawn last (on top)
    for i in order:
        if labels[i] < 0 or scores[i] < threshold:
            continue
        color = (colors or {}).get(int(labels[i]), class_color(labels[i]))
        _draw_box(canvas, boxes[i], color, f"{_label_name(int(labels[i]), classes)} {scores[i]:.2f}",
                  line, font_scale)
    return canvas


def draw_ground_truth(image, boxes, labels=None, classes=None, color=GT_COLOR, difficult=None,
                      thickness=None):
    """Return a copy of ``image`` with ground-truth boxes in one colour; difficult boxes thinner and
    marked '(difficult)'."""
    _check_image(image)
    boxes = _to_numpy(boxes, 4)
    labels = None if labels is None else _to_numpy(labels).astype(np.int64)
    difficult = np.zeros(len(boxes), bool) if difficult is None else _to_numpy(difficult).astype(bool)
    canvas = np.ascontiguousarray(image.copy())
    line, font_scale = _style(canvas)
    line = thickness or line
    for i, box in enumerate(boxes):
        text = _label_name(int(labels[i]), classes) if labels is not None else ""
        if difficult[i]:
            text = f"{text} (difficult)".strip()
        _draw_box(canvas, box, tuple(int(c) for c in color), text, max(1, line - 1) if difficult[i] else line,
                  font_scale)
    return canvas


def _check_image(image):
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got "
                         f"{getattr(image, 'shape', type(image).__name__)} "
                         f"{getattr(image, 'dtype', '')}")


def save_image(path, image):
    """Write an RGB image (format from the extension: .jpg, .png, ...); creates the folder."""
    _check_image(image)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        ok = cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error as err:
        raise ValueError(f"cannot write image {path}: {err}") from None
    if not ok:
        raise ValueError(f"cannot write image {path} (unsupported extension or unwritable folder)")
    return path


def letterbox(frame, size):
    """``frame`` scaled to fit ``size`` (width, height) with its aspect kept, centred on black."""
    width, height = size
    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((height, width) + frame.shape[2:], frame.dtype)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


class VideoWriter:
    """Write frames to an MP4 file (OpenCV, 'mp4v' codec): the one video writer of the project.

    The frame size is taken from the first frame. A later frame of another size is never dropped
    (OpenCV's writer silently skips it): ``mismatch='error'`` raises ValueError naming the frame,
    ``mismatch='resize'`` scales it into the first frame's size with its aspect kept
    (``letterbox``) and calls ``warn`` once with a message saying so (``resized_frames`` counts
    them). Frames are RGB (``color='bgr'`` for OpenCV images). The file is written under a
    temporary name and moved into place by ``close()``; when the ``with`` block fails the temporary
    file is removed and the path is left as it was. Use as a context manager or call ``close()``."""

    def __init__(self, path, fps=25.0, fourcc="mp4v", mismatch="error", color="rgb", warn=None):
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise ValueError(f"VideoWriter {path}: fps must be a number, got {fps!r}") from None
        if not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"VideoWriter {path}: fps must be > 0, got {fps:g}")
        if mismatch not in ("error", "resize"):
            raise ValueError(f"VideoWriter: mismatch must be error|resize, got {mismatch!r}")
        if color not in ("rgb", "bgr"):
            raise ValueError(f"VideoWriter: color must be rgb|bgr, got {color!r}")
        self.path = path
        self.fps = fps
        self.fourcc = fourcc
        self.mismatch = mismatch
        self.color = color
        self.warn = warn if warn is not None else _logger().warning
        self.size = None
        self.frames_written = 0
        self.resized_frames = 0
        self._writer = None
        stem, ext = os.path.splitext(os.path.abspath(path))
        self._tmp = f"{stem}.tmp{os.getpid()}{ext}"  # same extension: OpenCV picks the container by it

    def write(self, frame):
        _check_image(frame)
        height, width = frame.shape[:2]
        if self._writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           (width, height))
            if not self._writer.isOpened():
                self._writer = None
                raise IOError(f"cannot open video {self.path} for writing with codec "
                              f"'{self.fourcc}' (check the folder and the extension)")
            self.size = (width, height)
        elif (width, height) != self.size:
            if self.mismatch == "error":
                raise ValueError(f"{self.path}: frame {self.frames_written} is {width}x{height}, "
                                 f"the video is {self.size[0]}x{self.size[1]}")
            if not self.resized_frames:
                self.warn(f"{self.path}: frame {self.frames_written} is {width}x{height}, the video "
                          f"{self.size[0]}x{self.size[1]} (its first frame's size): frames of another size are "
                          f"scaled into it with their aspect kept")
            self.resized_frames += 1
            frame = letterbox(frame, self.size)
        self._writer.write(frame if self.color == "bgr" else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self):
        """Finish the file and move it into place."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._tmp, self.path)

    def discard(self):
        """Stop writing and remove the temporary file (the path keeps what it held before)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.discard()
        return False


# colours of lib.tools.draw / m2det-debug: a box with / without a matching anchor
GREEN, RED = (0, 200, 0), (230, 0, 0)



def _palette(k):
    rng = np.random.default_rng(k * 7919 + 1)
    return tuple(int(v) for v in rng.integers(60, 255, 3))



def draw_record(image, rec, classes, matched=None, best=None):
    canvas = np.ascontiguousarray(image.copy())
    thick = max(1, int(round(min(rec.width, rec.height) / 400)))
    for k, (b, l) in enumerate(zip(rec.boxes, rec.labels)):
        color = _palette(int(l)) if matched is None else (GREEN if matched[k] else RED)
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), color, thick)
        text = classes[int(l)] + (f" {best[k]:.2f}" if best is not None else "")
        cv2.putText(canvas, text, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, color, thick,
                    cv2.LINE_AA)
    return canvas


def _logger():
    return logging.getLogger("lib.viz")
