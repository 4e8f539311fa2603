"""Optical flow from OpenCV's DIS (Dense Inverse Search, Kroeger et al., ECCV 2016), in FGFA's convention.

Convention (as lib.dataset.flow_pairs): ``flow[y, x] = (dx, dy)`` means the content at (x, y) of
the first frame is at (x + dx, y + dy) in the second, so ``lib.ops.flow_warp(second, flow)``
reproduces the first frame wherever its content is visible in both. This is what OpenCV's
``DISOpticalFlow.calc(first, second)`` returns; FGFA's FlowNet(key frame, neighbour) predicts the
same thing at the feature stride.

Used as the teacher of FGFA's FlowNet on the user's own footage (lib.dataset.teacher_flow) and as a
CPU alternative to the FlowNet at test time (``DISFlow.grid``: frames in, flow on the feature grid
out). DIS works on grey levels; colour frames are converted first. ``scale`` < 1 runs it on frames
resized by that factor (INTER_AREA): at 0.5, 2.7-4.3 times faster (below).

Measured once (``python -m bench.dis_flow``: 6 speedtrap pairs of 1280x720, 2 OpenCV threads on a
2-core machine shared with other jobs, OpenCV 4.8.1), median ms for frames in -> flow on the
stride-16 grid out (``DISFlow.grid``), and its distance on that grid from medium at full resolution:
  ultrafast  9.0 ms (half resolution  2.1 ms), 0.07 (0.13) feature px
  fast      13.9 ms (half resolution  4.1 ms), 0.06 (0.11) feature px
  medium    47.9 ms (half resolution 17.6 ms), 0    (0.05) feature px
A teacher flow (forward + backward + consistency check at full resolution, ``with_mask``) took 31 /
42 / 129 ms.
"""
import cv2
import numpy as np

from lib.dataset.flow_pairs import consistent_mask

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _gray(frame):
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"DIS flow needs uint8 frames, got {frame.dtype}")
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected an HxW or HxWx3 frame, got shape {frame.shape}")


def grid_shape(height, width, factor):
    """(rows, cols) of the grid of ``factor`` x ``factor`` cells over an image (partial cells count)."""
    return -(-int(height) // int(factor)), -(-int(width) // int(factor))


def _cell_mean(array, factor):
    """Mean of each factor x factor cell of an (H, W[, C]) array; the last row/column of cells may be
    partial (mean over the pixels present)."""
    height, width = array.shape[:2]
    rows, cols = np.arange(0, height, factor), np.arange(0, width, factor)
    sums = np.add.reduceat(np.add.reduceat(array.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.minimum(rows + factor, height) - rows, np.minimum(cols + factor, width) - cols)
    return sums / (counts[..., None] if array.ndim == 3 else counts)


def _fit(grid, shape):
    """Crop or pad (edge values) a grid array to ``shape`` (rows, cols)."""
    if shape is None:
        return grid
    rows, cols = int(shape[0]), int(shape[1])
    grid = grid[:rows, :cols]
    pad = [(0, rows - grid.shape[0]), (0, cols - grid.shape[1])] + [(0, 0)] * (grid.ndim - 2)
    return np.pad(grid, pad, mode="edge") if any(p[1] for p in pad) else grid


def flow_to_grid(flow, factor, shape=None):
    """(H, W, 2) pixel flow -> (ceil(H/f), ceil(W/f), 2) float32 flow in grid cells (cell means
    divided by ``factor``); ``shape`` crops or edge-pads it to a network's (rows, cols), e.g. the
    feature map of a padded input."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"grid factor must be a positive integer, got {factor}")
    return _fit((_cell_mean(np.asarray(flow), factor) / factor).astype(np.float32), shape)


def mask_to_grid(mask, factor, shape=None):
    """(H, W) bool -> (ceil(H/f), ceil(W/f)) float32 share of each cell's pixels that are set."""
    return _fit(_cell_mean(np.asarray(mask, np.float32), int(factor)).astype(np.float32), shape)


class DISFlow:
    """OpenCV DIS flow with a preset ('ultrafast' | 'fast' | 'medium') at ``scale`` of the frames'
    resolution. One instance holds one OpenCV object: use one per thread."""

    def __init__(self, preset="medium", scale=1.0):
        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset must be one of {'|'.join(DIS_PRESETS)}, got {preset!r}")
        scale = float(scale)
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"DIS scale must be in (0, 1], got {scale}")
        self.preset, self.scale = preset, scale
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def settings(self):
        """What the flow depends on besides the frames (cache keys)."""
        d = self._dis
        return {"method": "dis", "preset": self.preset, "scale": self.scale, "opencv": cv2.__version__,
                "finest_scale": d.getFinestScale(), "patch_size": d.getPatchSize(), "patch_stride": d.getPatchStride(),
                "gd_iterations": d.getGradientDescentIterations(),
                "variational_iterations": d.getVariationalRefinementIterations(),
                "spatial_propagation": bool(d.getUseSpatialPropagation()),
                "mean_normalization": bool(d.getUseMeanNormalization())}

    def prepare(self, frame):
        """The grey frame DIS reads (at ``scale``): prepare a frame once when it is compared with many
        others (``grid_prepared``), e.g. the frame a streaming detector's memory was written at."""
        gray = _gray(frame)
        if self.scale < 1.0:
            size = (max(1, int(round(gray.shape[1] * self.scale))), max(1, int(round(gray.shape[0] * self.scale))))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray

    def _small(self, first, second):
        a, b = _gray(first), _gray(second)
        if a.shape != b.shape:
            raise ValueError(f"frames differ in size: {a.shape} and {b.shape}")
        return self.prepare(a), self.prepare(b)

    def _calc(self, a, b):
        return self._dis.calc(a, b, None)

    def _to_frame(self, flow, height, width):
        """Small-frame flow -> (height, width, 2) flow in frame pixels (bilinear upsampling)."""
        if flow.shape[:2] == (height, width):
            return flow
        small_h, small_w = flow.shape[:2]
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= width / small_w
        flow[..., 1] *= height / small_h
        return flow

    def __call__(self, first, second):
        """(H, W, 2) float32 flow in pixels of the given frames (upsampled bilinearly when scale < 1)."""
        a, b = self._small(first, second)
        height, width = np.shape(first)[:2]
        return self._to_frame(self._calc(a, b), height, width)

    def with_mask(self, first, second, tolerance=1.0):
        """(forward flow (H, W, 2), consistent (H, W) bool): pixels whose forward flow, followed by the
        backward flow (second -> first) at its end, comes back within ``tolerance`` pixels."""
        forward, backward = self(first, second), self(second, first)
        return forward, consistent_mask(forward, backward, tolerance)

    def grid(self, first, second, stride, shape=None):
        """(ceil(H/stride), ceil(W/stride), 2) float32 flow in feature pixels of a network with this
        ``stride`` (FGFA's FlowNet output, transposed), from frames of H x W pixels; ``shape`` fits
        it to the feature map (rows, cols). When ``stride * scale`` is a whole number the cells are
        averaged on the small flow directly (no upsampling)."""
        height, width = np.shape(first)[:2]
        return self.grid_prepared(*self._small(first, second), (height, width), stride, shape)

    def grid_prepared(self, first, second, frame_hw, stride, shape=None):
        """``grid`` on frames already through ``prepare``; ``frame_hw`` is the (H, W) they were
        prepared from (the grid's stride counts pixels of that size)."""
        a, b = first, second
        if a.shape != b.shape:
            raise ValueError(f"prepared frames differ in size: {a.shape} and {b.shape}")
        flow = self._calc(a, b)
        height, width = frame_hw
        rows, cols = grid_shape(height, width, stride)
        cell = float(stride) * self.scale          # a grid cell in pixels of the small frames
        exact = (abs(cell - round(cell)) < 1e-9 and abs(width * self.scale - a.shape[1]) < 1e-9
                 and abs(height * self.scale - a.shape[0]) < 1e-9)
        if exact and grid_shape(a.shape[0], a.shape[1], int(round(cell))) == (rows, cols):
            return _fit((_cell_mean(flow, int(round(cell))) / cell).astype(np.float32), shape)
        return flow_to_grid(self._to_frame(flow, height, width), stride, shape)


def move_boxes(boxes, flow, points=7, max_scale_step=1.25):
    """Boxes of the first frame -> where the flow ``(H, W, 2)`` (this module's convention, pixels of the
    boxes' frame) carries them in the second: per box, the flow at ``points`` x ``points`` positions spread
    over its inner 80 % gives their positions p' = p + flow(p), and the box follows the least-squares
    fit p' = c' + s (p - c) (c, c': the points' centres; one scale s, so a sign the camera drives at
    grows as it comes nearer). ``s`` is kept within [1 / max_scale_step, max_scale_step]: one frame's
    motion, not a bad flow patch, decides the size. Returns (K, 4) float32 boxes, not clipped."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        return boxes.copy()
    height, width = flow.shape[:2]
    steps = (np.arange(points, dtype=np.float32) + 0.5) / points * 0.8 + 0.1      # inside 10 %..90 %
    x1, y1, x2, y2 = (boxes[:, i:i + 1] for i in range(4))
    # all boxes at once: (K, points * points) sample positions, each box's grid row by row
    xs, ys = x1 + steps * (x2 - x1), y1 + steps * (y2 - y1)                         # (K, points)
    cols = np.clip(np.rint(np.tile(xs, points)).astype(np.int64), 0, width - 1)  # the flow's own pixels
    rows = np.clip(np.rint(np.repeat(ys, points, axis=1)).astype(np.int64), 0, height - 1)
    px, py = cols.astype(np.float64), rows.astype(np.float64)
    qx, qy = px + flow[rows, cols, 0], py + flow[rows, cols, 1]
    cx, cy = px.mean(1, keepdims=True), py.mean(1, keepdims=True)
    qcx, qcy = qx.mean(1, keepdims=True), qy.mean(1, keepdims=True)
    spread = np.sum((px - cx) ** 2 + (py - cy) ** 2, axis=1, keepdims=True)
    moved = np.sum((px - cx) * (qx - qcx) + (py - cy) * (qy - qcy), axis=1, keepdims=True)
    s = np.where(spread > 0, moved / np.where(spread > 0, spread, 1.0), 1.0)
    s = np.clip(s, 1.0 / max_scale_step, max_scale_step)
    return np.concatenate([qcx + s * (x1 - cx), qcy + s * (y1 - cy), qcx + s * (x2 - cx), qcy + s * (y2 - cy)],
                          axis=1).astype(np.float32)


class BoxTracker:
    """Detections carried over frames a detector skips, along DIS flow (tracking by flow, as the
    interleaved video detectors' cheap steps): ``remember(frame, detections)`` after a frame the detector
    saw, ``track(frame)`` for the next one it skips -> the last frame's detections moved by the flow
    between the two frames (``move_boxes``; frame to frame, so each flow spans one frame's motion), their
    scores times ``decay`` per tracked frame (fresh detections rank above old ones), clipped to the frame
    and dropped when less than ``min_visible`` of the moved box stays inside it (a sign leaving the view).
    DIS runs at ``scale`` of the frames' resolution."""

    def __init__(self, preset="ultrafast", scale=0.5, decay=1.0, min_visible=0.3):
        if not 0.0 < float(decay) <= 1.0:
            raise ValueError(f"track decay must be in (0, 1], got {decay}")
        if not 0.0 <= float(min_visible) <= 1.0:
            raise ValueError(f"track min_visible must be in [0, 1], got {min_visible}")
        self.dis = DISFlow(preset, scale)
        self.decay, self.min_visible = float(decay), float(min_visible)
        self.forget()

    def forget(self):
        self.last_frame, self.last = None, None

    @property
    def ready(self):
        return self.last is not None

    def best_score(self):
        """The highest score among the boxes held (0 when none)."""
        scores = self.last[1] if self.ready else ()
        return float(np.max(scores)) if len(scores) else 0.0

    def remember(self, frame, detections):
        boxes, scores, labels = detections
        self.last_frame = self.dis.prepare(frame)
        self.last = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
                     np.asarray(labels, np.int64).reshape(-1))

    def hold(self, detections):
        """Replace the boxes held for the frame last seen (e.g. by the detections merged with them)."""
        if not self.ready:
            raise ValueError("BoxTracker.hold before any remember(frame, detections)")
        boxes, scores, labels = detections
        self.last = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
                     np.asarray(labels, np.int64).reshape(-1))

    def track(self, frame):
        """(boxes, scores, labels) of ``frame`` from the last frame's; then remembers them as its own."""
        if not self.ready:
            raise ValueError("BoxTracker.track before any remember(frame, detections)")
        current = self.dis.prepare(frame)
        boxes, scores, labels = self.last
        height, width = np.shape(frame)[:2]
        if len(boxes):
            sx, sy = current.shape[1] / width, current.shape[0] / height       # frame -> DIS pixels
            to_small = np.array([sx, sy, sx, sy], np.float32)
            moved = move_boxes(boxes * to_small, self.dis._calc(self.last_frame, current)) / to_small
            clipped = np.clip(moved, 0, [width, height, width, height])
            area = lambda b: np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)  # noqa: E731
            keep = area(clipped) >= self.min_visible * np.maximum(area(moved), 1e-6)
            keep &= (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
            boxes, scores, labels = clipped[keep], scores[keep] * self.decay, labels[keep]
        self.last_frame, self.last = current, (boxes, scores.astype(np.float32), labels)
        return self.last


def dis_flow(first, second, preset="medium", scale=1.0):
    """(H, W, 2) float32 DIS flow from ``first`` to ``second`` (RGB or grey uint8), FGFA's convention."""
    return DISFlow(preset, scale)(first, second)
