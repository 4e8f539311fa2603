"""Data augmentation for clips: every transform takes a LIST of frames and draws its random
parameters ONCE per call, so all frames of a clip get the same crop, flip, colour change, ...
(per-frame random augmentation breaks temporal models such as LSTM-SSD; FGFA's neighbours share the
key frame's scale and flip). The exceptions are ``RandomDegrade`` and ``RandomFrameDrop``, per frame
on purpose: a blurred, occluded or missing frame between sharp ones is what a temporal model must learn
to bridge.

Call convention: ``frames, boxes = t(frames, boxes)``
- ``frames``: list of HxWx3 uint8 RGB images, all of the same size;
- ``boxes``: list (one per frame) of float arrays (N, 4 + k): the first four columns are boxes in the
  project convention ``[x1, y1, x2, y2]``, continuous pixels, x2/y2 exclusive; extra columns (label,
  difficult flag, track id, ...) are carried along and dropped together with their box.
``ToTensor`` ends a pipeline: it returns (3,H,W) float32 arrays instead of uint8 images.

Randomness comes from, in order: the ``rng`` passed to the call, the ``rng`` given to the
constructor (``np.random.RandomState``), else numpy's global generator, which ``lib.train.fit``
reseeds from (seed, epoch). With DataLoader worker processes (forked with identical global states),
pass a per-sample generator, e.g. ``t(frames, boxes, rng=sample_rng(seed, epoch, index))``: the
augmentation then depends only on (seed, epoch, index), whatever the number of workers.

``build_transforms([{"name": "RandomFlip", "p": 0.5}, ...])`` builds a ``Compose`` from config.
"""
import inspect
import math

import cv2
import numpy as np

from lib.dataset.degrade import KINDS, apply_degradation, draw_degradation

# SSD's pixel means (BGR 104, 117, 123) in RGB: the fill colour of Expand / RandomTile padding.
SSD_MEAN_RGB = (123.0, 117.0, 104.0)


# ----------------------------------------------------------------------------- helpers

def _check_clip(frames, boxes, who):
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ValueError(f"{who}: frames must be a non-empty list of HxWx3 images")
    if not isinstance(boxes, (list, tuple)) or len(boxes) != len(frames):
        raise ValueError(f"{who}: boxes must be a list with one (N,4+) array per frame "
                         f"({len(frames)} frames)")
    shape = frames[0].shape
    for i, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{who}: frame {i} must be an HxWx3 array, got "
                             f"{getattr(frame, 'shape', type(frame).__name__)}")
        if frame.shape != shape:
            raise ValueError(f"{who}: all frames of a clip must have one size; frame 0 is {shape}, "
                             f"frame {i} is {frame.shape}")
    out = []
    for i, b in enumerate(boxes):
        b = np.asarray(b)
        if b.size == 0:
            b = b.reshape(0, max(4, b.shape[-1] if b.ndim == 2 else 4)).astype(np.float32)
        if b.ndim != 2 or b.shape[1] < 4:
            raise ValueError(f"{who}: boxes of frame {i} must be (N, 4+), got shape {b.shape}")
        if not np.issubdtype(b.dtype, np.floating):
            b = b.astype(np.float32)
        out.append(b)
    return list(frames), out


def _all_boxes(boxes):
    coords = [b[:, :4] for b in boxes if len(b)]
    return np.concatenate(coords, 0).astype(np.float64) if coords else np.zeros((0, 4))


def _iou_with(rect, boxes):
    """IoU of one rect (x1,y1,x2,y2) with boxes (N,4); project convention (no +1)."""
    ix1 = np.maximum(boxes[:, 0], rect[0])
    iy1 = np.maximum(boxes[:, 1], rect[1])
    ix2 = np.minimum(boxes[:, 2], rect[2])
    iy2 = np.minimum(boxes[:, 3], rect[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_r = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return inter / np.maximum(area_b + area_r - inter, 1e-12)


def _crop_boxes(b, left, top, width, height, keep):
    """Shift boxes into the crop, clip them to it, keep rows where ``keep`` and area > 0."""
    out = b[keep].copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]] - left, 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]] - top, 0, height)
    nonempty = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[nonempty]


def _centre_inside(b, left, top, right, bottom):
    cx = (b[:, 0] + b[:, 2]) / 2
    cy = (b[:, 1] + b[:, 3]) / 2
    return (cx >= left) & (cx < right) & (cy >= top) & (cy < bottom)


def _pair(value, what):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"{what} must be an int or [width, height], got {value!r}")


def _check_prob(p, who):
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{who}: probability p must be in [0, 1], got {p}")
    return float(p)


class Transform:
    """Base class: ``rng`` is a np.random.RandomState or None (numpy's global generator)."""

    def __init__(self, rng=None):
        self.rng = rng

    @property
    def random(self):
        return self.rng if self.rng is not None else np.random

    def _random(self, rng):
        """The generator of one call: the call's ``rng``, else the transform's, else numpy's global."""
        return rng if rng is not None else self.random

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng")
        return f"{type(self).__name__}({params})"


def sample_rng(seed, epoch, index):
    """A RandomState determined by (seed, epoch, sample index), for per-sample augmentation."""
    return np.random.RandomState(np.random.SeedSequence([int(seed), int(epoch), int(index)])
                                 .generate_state(1)[0])


# ----------------------------------------------------------------------------- geometry

def hflip(frames, boxes):
    """Deterministic horizontal flip of a clip: x -> W - x (exact inverse of itself)."""
    width = frames[0].shape[1]
    out_boxes = []
    for b in boxes:
        b = b.copy()
        x1 = b[:, 0].copy()
        b[:, 0] = width - b[:, 2]
        b[:, 2] = width - x1
        out_boxes.append(b)
    return [np.ascontiguousarray(f[:, ::-1]) for f in frames], out_boxes


class RandomFlip(Transform):
    """Horizontal flip of the whole clip with probability ``p``."""

    def __init__(self, p=0.5, rng=None):
        super().__init__(rng)
        self.p = _check_prob(p, "RandomFlip")

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "RandomFlip")
        if self._random(rng).rand() < self.p:
            return hflip(frames, boxes)
        return frames, boxes


class SSDRandomCrop(Transform):
    """SSD's random crop (Liu et al. 2016): pick a constraint from ``min_ious`` -- None keeps the
    whole image, a number asks for a patch whose IoU with the objects is >= it (0 = unconstrained
    patch) -- then try up to ``max_trials`` patches of scale [min_scale, 1] per side and aspect
    (h/w) in [min_aspect, max_aspect]. ``iou_mode='any'`` (original Caffe SSD) needs one object to
    reach the IoU, 'all' every object (ssd.pytorch / M2Det). A patch must contain the centre of at
    least one box; boxes whose centre is outside are dropped, the others clipped to the patch.
    Constraints are checked on the boxes of all frames together; one patch is applied to every frame.
    """

    def __init__(self, min_ious=(None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0), min_scale=0.3, min_aspect=0.5,
                 max_aspect=2.0, max_trials=50, iou_mode="any", rng=None):
        super().__init__(rng)
        if not min_ious:
            raise ValueError("SSDRandomCrop: min_ious must list at least one choice")
        for v in min_ious:
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"SSDRandomCrop: min_ious entries must be null or in [0, 1], got {v!r}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"SSDRandomCrop: min_scale must be in (0, 1], got {min_scale}")
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"SSDRandomCrop: need 0 < min_aspect <= max_aspect, got "
                             f"{min_aspect}, {max_aspect}")
        if iou_mode not in ("any", "all"):
            raise ValueError(f"SSDRandomCrop: iou_mode must be 'any' or 'all', got {iou_mode!r}")
        self.min_ious = tuple(None if v is None else float(v) for v in min_ious)
        self.min_scale = float(min_scale)
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)
        self.max_trials = int(max_trials)
        self.iou_mode = iou_mode

    def sample_patch(self, height, width, gt, rng=None):
        """(left, top, w, h) of an accepted patch, or None to keep the whole image."""
        r = self._random(rng)
        min_iou = self.min_ious[r.randint(len(self.min_ious))]
        if min_iou is None:
            return None
        for _ in range(self.max_trials):
            w = int(r.uniform(self.min_scale * width, width))
            h = int(r.uniform(self.min_scale * height, height))
            if w < 1 or h < 1 or not self.min_aspect <= h / w <= self.max_aspect:
                continue
            left = int(r.uniform(0, width - w))
            top = int(r.uniform(0, height - h))
            if len(gt) == 0:
                return left, top, w, h
            rect = (left, top, left + w, top + h)
            iou = _iou_with(rect, gt)
            ok = iou.max() >= min_iou if self.iou_mode == "any" else iou.min() >= min_iou
            if ok and _centre_inside(gt, *rect).any():
                return left, top, w, h
        return None

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "SSDRandomCrop")
        height, width = frames[0].shape[:2]
        patch = self.sample_patch(height, width, _all_boxes(boxes), rng)
        if patch is None:
            return frames, boxes
        left, top, w, h = patch
        out_frames = [np.ascontiguousarray(f[top:top + h, left:left + w]) for f in frames]
        out_boxes = [_crop_boxes(b, left, top, w, h,
                                 _centre_inside(b, left, top, left + w, top + h)) for b in boxes]
        return out_frames, out_boxes


class Expand(Transform):
    """SSD's zoom-out: with probability ``p`` put the clip on a canvas ``ratio`` in [1, max_ratio]
    times larger, filled with ``fill`` (RGB), at a random offset (helps small objects)."""

    def __init__(self, max_ratio=4.0, p=0.5, fill=SSD_MEAN_RGB, rng=None):
        super().__init__(rng)
        if max_ratio < 1:
            raise ValueError(f"Expand: max_ratio must be >= 1, got {max_ratio}")
        if len(fill) != 3:
            raise ValueError(f"Expand: fill must be 3 RGB values, got {fill!r}")
        self.max_ratio = float(max_ratio)
        self.p = _check_prob(p, "Expand")
        self.fill = tuple(float(v) for v in fill)

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "Expand")
        r = self._random(rng)
        if r.rand() >= self.p:
            return frames, boxes
        height, width = frames[0].shape[:2]
        ratio = r.uniform(1.0, self.max_ratio)
        canvas_w, canvas_h = int(width * ratio), int(height * ratio)
        left = int(r.uniform(0, canvas_w - width))
        top = int(r.uniform(0, canvas_h - height))
        # copyMakeBorder fills the margins ~10x faster than assigning into a numpy canvas
        out_frames = [cv2.copyMakeBorder(f, top, canvas_h - height - top, left, canvas_w - width - left,
                                         cv2.BORDER_CONSTANT, value=self.fill) for f in frames]
        out_boxes = []
        for b in boxes:
            b = b.copy()
            b[:, [0, 2]] += left
            b[:, [1, 3]] += top
            out_boxes.append(b)
        return out_frames, out_boxes


class RandomTile(Transform):
    """Crop a fixed-size tile (``size`` int or [w, h]) from big frames, for small objects.

    With probability ``object_prob`` the tile contains a randomly chosen object (from any frame of
    the clip) at a random position; otherwise it is a random tile (mostly background). Frames smaller
    than the tile are padded right/bottom with ``fill``. Boxes are clipped to the tile and kept when
    at least ``min_visible`` of their area is inside it.
    """

    def __init__(self, size=512, object_prob=0.7, min_visible=0.5, fill=SSD_MEAN_RGB, rng=None):
        super().__init__(rng)
        self.size = _pair(size, "RandomTile: size")
        if min(self.size) < 1:
            raise ValueError(f"RandomTile: size must be positive, got {size!r}")
        self.object_prob = _check_prob(object_prob, "RandomTile (object_prob)")
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"RandomTile: min_visible must be in (0, 1], got {min_visible}")
        self.min_visible = float(min_visible)
        self.fill = tuple(float(v) for v in fill)

    def _offset(self, r, lo, hi, limit, box_lo, box_hi, tile):
        """Random integer offset in [lo, hi] clamped to [0, limit]; centred on the box if empty."""
        lo, hi = max(lo, 0), min(hi, limit)
        if lo > hi:  # the object is larger than the tile: centre the tile on it
            return int(np.clip(round((box_lo + box_hi) / 2 - tile / 2), 0, limit))
        return int(r.randint(lo, hi + 1))

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "RandomTile")
        r = self._random(rng)
        tile_w, tile_h = self.size
        height, width = frames[0].shape[:2]
        if height < tile_h or width < tile_w:
            pad_h, pad_w = max(tile_h - height, 0), max(tile_w - width, 0)
            frames = [cv2.copyMakeBorder(f, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.fill)
                      for f in frames]
            height, width = frames[0].shape[:2]
        gt = _all_boxes(boxes)
        max_left, max_top = width - tile_w, height - tile_h
        if len(gt) and r.rand() < self.object_prob:
            x1, y1, x2, y2 = gt[r.randint(len(gt))]
            left = self._offset(r, int(math.ceil(x2 - tile_w)), int(math.floor(x1)), max_left, x1, x2, tile_w)
            top = self._offset(r, int(math.ceil(y2 - tile_h)), int(math.floor(y1)), max_top, y1, y2, tile_h)
        else:
            left = int(r.randint(max_left + 1))
            top = int(r.randint(max_top + 1))
        out_frames = [np.ascontiguousarray(f[top:top + tile_h, left:left + tile_w]) for f in frames]
        out_boxes = []
        for b in boxes:
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            inside_x = np.clip(b[:, [0, 2]] - left, 0, tile_w)
            inside_y = np.clip(b[:, [1, 3]] - top, 0, tile_h)
            visible = (inside_x[:, 1] - inside_x[:, 0]) * (inside_y[:, 1] - inside_y[:, 0])
            keep = (visible > 0) & (visible >= self.min_visible * area)
            out_boxes.append(_crop_boxes(b, left, top, tile_w, tile_h, keep))
        return out_frames, out_boxes


_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA,
                   "cubic": cv2.INTER_CUBIC}


def _resize_clip(frames, boxes, new_w, new_h, interpolation):
    height, width = frames[0].shape[:2]
    sx, sy = new_w / width, new_h / height
    out_frames = [cv2.resize(f, (new_w, new_h), interpolation=interpolation) for f in frames]
    out_boxes = []
    for b in boxes:
        b = b.copy()
        b[:, [0, 2]] *= sx
        b[:, [1, 3]] *= sy
        out_boxes.append(b)
    return out_frames, out_boxes


def _interp(name, who):
    if name not in _INTERPOLATIONS:
        raise ValueError(f"{who}: interpolation must be one of {sorted(_INTERPOLATIONS)}, got {name!r}")
    return name


class Resize(Transform):
    """Keep the aspect ratio: short side -> ``short``, unless the long side would exceed
    ``max_size`` (then long side -> max_size). FGFA/R-FCN: short 600, max 1000."""

    def __init__(self, short=600, max_size=1000, interpolation="linear", rng=None):
        super().__init__(rng)
        if short < 1 or (max_size and max_size < short):
            raise ValueError(f"Resize: need short >= 1 and max_size >= short (0 = no limit), got "
                             f"{short}, {max_size}")
        self.short = int(short)
        self.max_size = int(max_size or 0)
        self.interpolation = _interp(interpolation, "Resize")

    def output_size(self, height, width):
        scale = self.short / min(height, width)
        if self.max_size and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return int(round(width * scale)), int(round(height * scale)), scale

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "Resize")
        new_w, new_h, _ = self.output_size(*frames[0].shape[:2])
        return _resize_clip(frames, boxes, new_w, new_h, _INTERPOLATIONS[self.interpolation])


class ResizeTo(Transform):
    """Resize to ``height`` x ``width`` regardless of the aspect ratio (SSD-style fixed input), boxes
    scaled per axis."""

    def __init__(self, height=320, width=320, interpolation="linear", rng=None):
        super().__init__(rng)
        if int(height) < 1 or int(width) < 1:
            raise ValueError(f"{type(self).__name__}: sizes must be >= 1, got {height} x {width}")
        self.height, self.width = int(height), int(width)
        self.interpolation = _interp(interpolation, type(self).__name__)

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, type(self).__name__)
        return _resize_clip(frames, boxes, self.width, self.height, _INTERPOLATIONS[self.interpolation])


class ResizeSquare(ResizeTo):
    """Resize to ``size`` x ``size`` (SSD / M2Det input), boxes scaled per axis."""

    def __init__(self, size=320, interpolation="linear", rng=None):
        super().__init__(size, size, interpolation, rng)
        self.size = int(size)


# ----------------------------------------------------------------------------- colour

class PhotometricDistort(Transform):
    """SSD's photometric distortion, each step with probability ``p``: brightness (+delta in
    [-brightness_delta, brightness_delta]), contrast (x alpha) before or after the HSV steps,
    saturation (S x factor), hue (H + delta degrees). Boxes are unchanged."""

    def __init__(self, brightness_delta=32.0, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta=18.0, p=0.5, rng=None):
        super().__init__(rng)
        for name, rng_ in (("contrast_range", contrast_range), ("saturation_range", saturation_range)):
            if len(rng_) != 2 or not 0 <= rng_[0] <= rng_[1]:
                raise ValueError(f"PhotometricDistort: {name} must be [low, high] with 0 <= low <= "
                                 f"high, got {rng_!r}")
        if brightness_delta < 0 or not 0 <= hue_delta <= 180:
            raise ValueError(f"PhotometricDistort: need brightness_delta >= 0 and hue_delta in "
                             f"[0, 180], got {brightness_delta}, {hue_delta}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = tuple(float(v) for v in contrast_range)
        self.saturation_range = tuple(float(v) for v in saturation_range)
        self.hue_delta = float(hue_delta)
        self.p = _check_prob(p, "PhotometricDistort")

    def sample(self, rng=None):
        """Draw the parameters once per clip: None means 'step skipped'."""
        r = self._random(rng)

        def maybe(draw):
            return draw() if r.rand() < self.p else None

        return {"brightness": maybe(lambda: r.uniform(-self.brightness_delta, self.brightness_delta)),
                "contrast_first": bool(r.rand() < 0.5),
                "contrast": maybe(lambda: r.uniform(*self.contrast_range)),
                "saturation": maybe(lambda: r.uniform(*self.saturation_range)),
                "hue": maybe(lambda: r.uniform(-self.hue_delta, self.hue_delta))}

    @staticmethod
    def apply(frame, params):
        image = frame.astype(np.float32)
        if params["brightness"] is not None:
            image += params["brightness"]
        if params["contrast_first"] and params["contrast"] is not None:
            image *= params["contrast"]
        if params["saturation"] is not None or params["hue"] is not None:
            # cv2's float HSV: H in degrees [0, 360), S in [0, 1], V in the input's range.
            hsv = cv2.cvtColor(np.clip(image, 0, 255), cv2.COLOR_RGB2HSV)
            if params["saturation"] is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * params["saturation"], 0, 1)
            if params["hue"] is not None:
                hsv[..., 0] = np.mod(hsv[..., 0] + params["hue"], 360.0)
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not params["contrast_first"] and params["contrast"] is not None:
            image *= params["contrast"]
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "PhotometricDistort")
        params = self.sample(rng)
        return [self.apply(f, params) for f in frames], boxes


class RandomDegrade(Transform):
    """Each frame of the clip, independently with probability ``p``, degraded by one of ``kinds``
    (lib.dataset.degrade: motion blur along a random direction, defocus, a partial occlusion of one
    box), strength drawn per frame from lib.dataset.degrade.RANGES; boxes kept. The training
    counterpart of the ``lib.tools.degrade`` probe: per frame, not per clip, because what a temporal
    model must learn is to carry a sharp neighbour's evidence over a bad frame. Put it before any
    crop: strengths are fractions of the frame's longer side, as in the probe."""

    def __init__(self, p=0.25, kinds=None, rng=None):
        super().__init__(rng)
        self.p = _check_prob(p, "RandomDegrade")
        self.kinds = tuple(kinds) if kinds else KINDS
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"RandomDegrade: unknown kind(s) {unknown}; known: {list(KINDS)}")

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "RandomDegrade")
        r = self._random(rng)
        out = []
        for frame, b in zip(frames, boxes):
            if r.rand() < self.p:
                kind = self.kinds[r.randint(len(self.kinds))]
                generator = np.random.default_rng(r.randint(2 ** 31))
                params = draw_degradation(generator, frame.shape[1], frame.shape[0], b[:, :4], kind=kind)
                frame = apply_degradation(frame, params)
            out.append(frame)
        return out, boxes


class RandomFrameDrop(Transform):
    """Each frame of the clip, independently with probability ``p``, replaced by a flat image of
    ``value`` (pixels; mid-grey by default); boxes kept. A dropped frame carries no evidence at all, so a
    temporal model can only detect on it from what it carried in from earlier frames. A frame detector can
    still fit RandomDegrade's blurred or occluded training frames (few training snippets are learned by
    heart); on a dropped one carrying evidence is the only way to lower the loss.
    Per frame, like RandomDegrade; training only."""

    def __init__(self, p=0.1, value=127, rng=None):
        super().__init__(rng)
        self.p = _check_prob(p, "RandomFrameDrop")
        if not 0 <= int(value) <= 255:
            raise ValueError(f"RandomFrameDrop: value must be a pixel value in [0, 255], got {value}")
        self.value = int(value)

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "RandomFrameDrop")
        r = self._random(rng)
        drop = r.rand(len(frames)) < self.p
        out = [np.full_like(f, self.value) if d else f for f, d in zip(frames, drop)]
        return out, boxes


# ----------------------------------------------------------------------------- to network input

class ToTensor(Transform):
    """HxWx3 uint8 RGB -> (3,H,W) float32, normalised.

    mode 'mean_std': (x - mean) / std with mean/std in pixel units (0..255), e.g. FGFA's
    mean (123.15, 115.90, 103.06) std (1, 1, 1), ImageNet mean (123.675, 116.28, 103.53)
    std (58.395, 57.12, 57.375); mode 'minus_one_one': x / 127.5 - 1 (LSTM-SSD / TF-OD).
    ``bgr=True`` swaps to BGR channel order first (networks trained on BGR, e.g. Caffe VGG for
    M2Det with means (104, 117, 123) given in BGR order).
    """

    def __init__(self, mode="mean_std", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), bgr=False, rng=None):
        super().__init__(rng)
        if mode not in ("mean_std", "minus_one_one"):
            raise ValueError(f"ToTensor: mode must be 'mean_std' or 'minus_one_one', got {mode!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"ToTensor: mean and std need 3 values, std > 0; got {mean!r}, {std!r}")
        self.mode = mode
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.bgr = bool(bgr)

    def __call__(self, frames, boxes, rng=None):
        frames, boxes = _check_clip(frames, boxes, "ToTensor")
        out = []
        for f in frames:
            x = f.astype(np.float32)
            if self.bgr:
                x = x[..., ::-1]
            if self.mode == "minus_one_one":
                x = x / 127.5 - 1.0
            else:
                x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
            out.append(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
        return out, boxes


class Compose(Transform):
    """Apply transforms in order."""

    def __init__(self, transforms):
        super().__init__(None)
        self.transforms = list(transforms)

    def __call__(self, frames, boxes, rng=None):
        for t in self.transforms:
            frames, boxes = t(frames, boxes, rng=rng)
        return frames, boxes

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


TRANSFORMS = {cls.__name__: cls for cls in (RandomFlip, SSDRandomCrop, Expand, PhotometricDistort, RandomDegrade,
                                            RandomFrameDrop, Resize, ResizeSquare, ResizeTo, RandomTile, ToTensor)}
# Short names accepted in configs (matched like class names: case and underscores ignored).
ALIASES = {"flip": "RandomFlip", "ssdcrop": "SSDRandomCrop", "randomcrop": "SSDRandomCrop",
           "photometric": "PhotometricDistort", "degrade": "RandomDegrade", "frame_drop": "RandomFrameDrop",
           "square": "ResizeSquare", "tile": "RandomTile"}
PARAM_ALIASES = {"prob": "p"}
_NAME_KEYS = ("name", "type")


def _canonical(name):
    return str(name).lower().replace("_", "").replace("-", "")


def _lookup(name):
    table = {_canonical(k): k for k in TRANSFORMS}
    table.update({_canonical(k): v for k, v in ALIASES.items()})
    return table.get(_canonical(name))


def transform_name(spec):
    """The class name a config spec ({name: ...} / {type: ...} or a bare name) stands for, aliases and
    spelling resolved as ``build_transforms`` does; None for an unknown name. Lets a family pick the
    entries it applies itself without its own list of spellings."""
    if isinstance(spec, dict):
        keys = {str(k).lower(): v for k, v in spec.items()}
        spec = next((keys[k] for k in _NAME_KEYS if k in keys), "")
    return _lookup(spec)


def lists_transform(specs, class_name):
    """Whether a list of config specs holds an entry for the transform ``class_name``."""
    return any(transform_name(spec) == class_name for spec in specs or ())


def build_transforms(specs, rng=None, source="transforms"):
    """Build a Compose from a list of specs: {"name": <transform>, <param>: value, ...} or just the
    transform's name. Names are the class names or ALIASES (case and underscores ignored, 'type'
    accepted for 'name'); parameter keys are case-insensitive ('prob' = 'p'). Unknown names or
    parameters raise ValueError naming the entry (``source`` is put in front, e.g. the config file
    and key)."""
    if specs is None:
        specs = []
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"{source}: must be a list of transform specs, got {type(specs).__name__}")
    built = []
    for index, spec in enumerate(specs):
        where = f"{source}[{index}]"
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: each entry must be a mapping with a 'name' key, got {spec!r}")
        lowered = {}
        for key, value in spec.items():
            key = str(key).lower()
            key = PARAM_ALIASES.get(key, key)
            if key in lowered:
                raise ValueError(f"{where}: key '{key}' is given twice (keys are case-insensitive)")
            lowered[key] = value
        name_keys = [k for k in _NAME_KEYS if k in lowered]
        if len(name_keys) != 1:
            raise ValueError(f"{where}: each entry needs one 'name' key, got {spec!r}")
        name = lowered.pop(name_keys[0])
        class_name = _lookup(name)
        if class_name is None:
            raise ValueError(f"{where}: unknown transform {name!r}. Known: "
                             f"{', '.join(sorted(TRANSFORMS))} (aliases: {', '.join(sorted(ALIASES))})")
        cls = TRANSFORMS[class_name]
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "rng")]
        unknown = sorted(set(lowered) - set(accepted))
        if unknown:
            raise ValueError(f"{where}: {class_name} has no parameter(s) {unknown}. Accepted: {accepted}")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in lowered.items()}
        try:
            built.append(cls(rng=rng, **params))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
    return Compose(built)
