"""Frame degradations of the cases FGFA was built for: motion blur, defocus, partial occlusion.

A frame detector fails on such frames while their neighbours in the video are sharp, which is what
temporal methods (FGFA's aggregation, LSTM-SSD's memory) are for. ``python -m lib.tools.degrade``
applies them to a seeded share of a dataset's frames (boxes kept) to measure exactly that.

Kinds (drawn uniformly per frame) and strengths (uniform in the ranges of ``RANGES``; lengths are
fractions of the frame's longer side, so a 1280x720 and a 1920x1080 copy of the same footage
degrade alike; the pixel values at 1280x720 are given in brackets):
- ``motion_blur``: convolution with a line kernel, length 1-3 % of the longer side (13-38 px),
  direction uniform in [0, 180) degrees (camera shake or fast motion along any direction);
- ``defocus``: convolution with a disk (pillbox) kernel, radius 0.4-1.2 % (5-15 px);
- ``occlusion``: a solid rectangle of a random colour over 30-60 % of one object box (its
  left/right/top/bottom part, the side drawn at random), or, on a frame without boxes, over 4-12 %
  of the frame (aspect 1:2 to 2:1, anywhere inside).

Convolutions use OpenCV's ``cv2.filter2D`` (a DFT for large kernels) with the kernel flipped, so
they are true convolutions: an impulse comes out as the kernel itself. Borders are reflected.
Every function is deterministic given its parameters; ``draw_degradation`` draws the parameters
from a ``numpy.random.Generator`` and ``apply_degradation`` replays them (``degrade.json`` holds them).
"""
import math

import cv2
import numpy as np

KINDS = ("motion_blur", "defocus", "occlusion")

RANGES = {
    "motion_blur": {"length": (0.01, 0.03), "angle": (0.0, 180.0)},
    "defocus": {"radius": (0.004, 0.012)},
    "occlusion": {"box_cover": (0.3, 0.6), "frame_area": (0.04, 0.12), "frame_aspect": (0.5, 2.0)},
}

SIDES = ("left", "right", "top", "bottom")


def motion_blur_kernel(length, angle):
    """(k, k) float32 kernel summing to 1: a segment of ``length`` pixels through the centre,
    along the direction (cos angle, sin angle) in image (x right, y down) coordinates, ``angle`` in
    degrees. The segment is box-filtered on the pixel grid (a 5.5 px segment has end pixels of
    weight 0.25) and rotated with bilinear interpolation (cv2.warpAffine) about the centre."""
    length = float(length)
    if not length >= 1.0:
        raise ValueError(f"motion blur length must be >= 1 pixel, got {length}")
    half = length / 2.0
    size = 2 * int(math.ceil(half + 1.0)) + 1      # room for the rotated segment and its interpolation
    centre = (size - 1) / 2.0
    xs = np.arange(size, dtype=np.float64) - centre
    # coverage of each pixel [x - 1/2, x + 1/2] by the segment [-L/2, L/2]
    row = np.clip(np.minimum(xs + 0.5, half) - np.maximum(xs - 0.5, -half), 0.0, 1.0)
    kernel = np.zeros((size, size), np.float32)
    kernel[int(centre)] = row
    # getRotationMatrix2D turns counter-clockwise on screen (y down) for a positive angle: -angle
    # puts the segment along (cos angle, sin angle) in x-right, y-down coordinates
    rotation = cv2.getRotationMatrix2D((centre, centre), -float(angle), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return (kernel / kernel.sum()).astype(np.float32)


def defocus_kernel(radius, supersample=16):
    """(2 ceil(r) + 1,)*2 float32 disk (pillbox) kernel summing to 1: each pixel weighs the share of
    its area inside the circle of ``radius`` pixels about the centre pixel's centre (measured on a
    ``supersample`` x ``supersample`` sub-grid), so the edge is anti-aliased."""
    radius = float(radius)
    if not radius >= 0.5:
        raise ValueError(f"defocus radius must be >= 0.5 pixel, got {radius}")
    half = int(math.ceil(radius))
    size = 2 * half + 1
    sub = (np.arange(size * supersample, dtype=np.float64) + 0.5) / supersample - 0.5 - half
    inside = (sub[:, None] ** 2 + sub[None, :] ** 2) <= radius * radius
    coverage = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return (coverage / coverage.sum()).astype(np.float32)


def convolve(image, kernel):
    """``image`` (H,W[,C], uint8 or float) convolved with ``kernel`` (true convolution, reflected
    borders), same dtype (uint8 rounded and saturated by OpenCV)."""
    return cv2.filter2D(image, -1, cv2.flip(np.asarray(kernel, np.float32), -1), borderType=cv2.BORDER_REFLECT_101)


def occlusion_rect_on_box(box, cover, side, width, height):
    """Integer (x1, y1, x2, y2) rectangle (x2/y2 exclusive) covering ``cover`` of ``box``'s pixel
    extent from its ``side`` (left|right|top|bottom): the box rounded to whole pixels and clipped to
    the frame, then ``round(cover * extent)`` (at least 1) of its columns or rows."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if not 0.0 < cover <= 1.0:
        raise ValueError(f"cover must be in (0, 1], got {cover}")
    x1, y1 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    x2, y2 = min(int(width), int(round(box[2]))), min(int(height), int(round(box[3])))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {list(box)} covers no pixel of the {width}x{height} frame")
    if side in ("left", "right"):
        cut = max(1, int(round(cover * (x2 - x1))))
        return (x1, y1, x1 + cut, y2) if side == "left" else (x2 - cut, y1, x2, y2)
    cut = max(1, int(round(cover * (y2 - y1))))
    return (x1, y1, x2, y1 + cut) if side == "top" else (x1, y2 - cut, x2, y2)


def occlude(image, rect, color):
    """A copy of ``image`` with the integer rectangle (x1, y1, x2, y2; exclusive) filled with ``color``."""
    out = np.array(image, copy=True)
    x1, y1, x2, y2 = (int(v) for v in rect)
    out[y1:y2, x1:x2] = np.asarray(color, dtype=out.dtype)
    return out


def _box_in_frame(box, width, height):
    return min(width, round(box[2])) > max(0, round(box[0])) and min(height, round(box[3])) > max(0, round(box[1]))


def draw_degradation(rng, width, height, boxes=(), kind=None, ranges=None):
    """Parameters of one degradation, drawn from ``rng`` (a numpy Generator): a JSON-ready dict with
    ``kind`` and, in pixels of this frame, ``length``/``angle`` (motion_blur), ``radius`` (defocus),
    or ``rect``/``color``/``target`` (occlusion; target is the box index, or -1 for the frame)."""
    ranges = ranges or RANGES
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    longer = float(max(width, height))
    if kind == "motion_blur":
        r = ranges["motion_blur"]
        return {"kind": kind, "length": round(max(1.0, float(rng.uniform(*r["length"])) * longer), 3),
                "angle": round(float(rng.uniform(*r["angle"])), 3)}
    if kind == "defocus":
        return {"kind": kind, "radius": round(max(0.5, float(rng.uniform(*ranges["defocus"]["radius"])) * longer), 3)}
    if kind != "occlusion":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    r = ranges["occlusion"]
    color = [int(v) for v in rng.integers(0, 256, size=3)]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    candidates = [k for k, b in enumerate(boxes) if _box_in_frame(b, width, height)]
    if candidates:
        target = candidates[int(rng.integers(len(candidates)))]
        cover = float(rng.uniform(*r["box_cover"]))
        side = SIDES[int(rng.integers(len(SIDES)))]
        rect = occlusion_rect_on_box(boxes[target], cover, side, width, height)
        return {"kind": kind, "target": target, "cover": round(cover, 4), "side": side, "rect": list(rect),
                "color": color}
    area = float(rng.uniform(*r["frame_area"])) * width * height
    aspect = float(np.exp(rng.uniform(*np.log(r["frame_aspect"]))))     # width / height, log-uniform
    w = int(min(width, max(1, round(math.sqrt(area * aspect)))))
    h = int(min(height, max(1, round(area / w))))
    x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return {"kind": kind, "target": -1, "rect": [x1, y1, x1 + w, y1 + h], "color": color}


def apply_degradation(image, params):
    """``image`` (RGB uint8 HxWx3) degraded as ``params`` (from draw_degradation) say."""
    kind = params["kind"]
    if kind == "motion_blur":
        return convolve(image, motion_blur_kernel(params["length"], params["angle"]))
    if kind == "defocus":
        return convolve(image, defocus_kernel(params["radius"]))
    if kind == "occlusion":
        return occlude(image, params["rect"], params["color"])
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
