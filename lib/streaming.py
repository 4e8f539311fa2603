"""The streaming contract every detector's runner follows, frame detectors and video detectors alike.

A runner sees one video at a time, frame by frame::

    runner.reset()                       # a new video starts
    for image in frames:                 # HxWx3 uint8 RGB
        for t, (boxes, scores, labels) in runner.step(image):
            ...                          # the results that became ready with this frame
    for t, result in runner.flush():     # the video ended: the frames still pending
        ...

``step`` returns a list of ``(frame_index, (boxes (K,4) float32 image pixels, scores (K,) float32,
labels (K,) int64 0-based))``, frame indices counted from the last ``reset``. A frame detector or a
memory detector (LSTM-SSD) returns its frame at once; a window detector (FGFA, a window of 2K+1
frames centred on the output frame) returns frame t when frame t + K arrives, and the last K at
``flush``. Every frame gets exactly one result, in order. ``detect_video`` runs a whole list.

``TrackedFusion`` wraps any runner with a box-level memory (``TEST.FUSE``): each frame's detections
merged with the previous frame's, moved along DIS flow.
"""
import numpy as np

from lib.bbox import box_iou
from lib.config import ConfigError


def as_detections(boxes, scores, labels):
    """(boxes, scores, labels) as the contract's numpy arrays (K,4) float32, (K,) float32, (K,) int64."""
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
            np.asarray(labels, np.int64).reshape(-1))


class StreamRunner:
    """Base class: subclasses implement ``reset`` and ``step`` (and ``flush`` when they delay frames)."""

    def reset(self):
        raise NotImplementedError

    def step(self, image):
        raise NotImplementedError

    def flush(self):
        """End of the video: the results still pending (none for a runner that answers at once)."""
        return []

    def detect_video(self, images):
        """Results of every frame of one video, in order (the runner is reset first)."""
        self.reset()
        out = []
        for image in images:
            out.extend(self.step(image))
        out.extend(self.flush())
        results = [None] * len(out)
        for t, result in out:
            results[t] = result
        if any(r is None for r in results):
            raise RuntimeError(f"{type(self).__name__} returned frames {sorted(t for t, _ in out)} for "
                               f"{len(out)} inputs: the streaming contract is one result per frame")
        return results


class FrameRunner(StreamRunner):
    """A still-image detector as a runner: ``detect(image) -> (boxes, scores, labels)`` per frame."""

    def __init__(self, detect):
        self._detect = detect
        self.reset()

    def reset(self):
        self.index = 0

    def step(self, image):
        t, self.index = self.index, self.index + 1
        return [(t, as_detections(*self._detect(image)))]


def merge_tracked(detections, tracked, iou_threshold=0.5, min_score=0.05, max_boxes=100):
    """A frame's own detections merged with boxes carried over from the frame before (both
    (boxes, scores, labels)): a tracked box that overlaps a detection of its class by ``iou_threshold``
    or more lifts that detection's score to its own if higher (the detection keeps its box: it is this
    frame's evidence); one that overlaps none is added, if it scores ``min_score`` or more. At most
    ``max_boxes``, best first."""
    boxes, scores, labels = (np.array(a) for a in as_detections(*detections))
    t_boxes, t_scores, t_labels = as_detections(*tracked)
    keep = t_scores >= min_score
    t_boxes, t_scores, t_labels = t_boxes[keep], t_scores[keep], t_labels[keep]
    added = np.ones(len(t_boxes), bool)
    for label in np.unique(t_labels):
        own, carried = np.flatnonzero(labels == label), np.flatnonzero(t_labels == label)
        if not len(own):
            continue
        iou = box_iou(t_boxes[carried], boxes[own])
        best = iou.argmax(axis=1)
        matched = iou[np.arange(len(carried)), best] >= iou_threshold
        for j, k in zip(carried[matched], own[best[matched]]):
            scores[k] = max(scores[k], t_scores[j])
        added[carried[matched]] = False
    boxes = np.concatenate([boxes, t_boxes[added]])
    scores = np.concatenate([scores, t_scores[added]])
    labels = np.concatenate([labels, t_labels[added]])
    order = np.argsort(-scores, kind="stable")[:max_boxes]
    return as_detections(boxes[order], scores[order], labels[order])


class TrackedFusion(StreamRunner):
    """Any runner with a box-level memory: the detections it gave for the frame before (as fused here)
    move along DIS flow to this frame (``lib.flow.BoxTracker``, scores times ``decay``) and merge with
    this frame's own (``merge_tracked``). An object found on a sharp frame so outlives one blurred or
    occluded frame, at a lower score each frame it is not found again. Works with runners that delay
    frames (FGFA's window): a frame is kept until its result arrives. Other attributes are the inner
    runner's."""

    def __init__(self, inner, tracker, iou_threshold=0.5, min_score=0.05, max_boxes=100):
        self.inner, self.tracker = inner, tracker
        self.iou_threshold, self.min_score, self.max_boxes = float(iou_threshold), float(min_score), int(max_boxes)
        self.pending, self.index, self.frame_hw = {}, 0, None

    def __getattr__(self, name):               # last_extractor, close, ... of the wrapped runner
        if name in ("inner", "tracker"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def reset(self):
        self.inner.reset()
        self.tracker.forget()
        self.pending, self.index, self.frame_hw = {}, 0, None

    def step(self, image):
        self.pending[self.index] = image
        self.index += 1
        return [self._fuse(t, result) for t, result in self.inner.step(image)]

    def flush(self):
        return [self._fuse(t, result) for t, result in self.inner.flush()]

    def _fuse(self, t, detections):
        frame = self.pending.pop(t)
        if np.shape(frame)[:2] != self.frame_hw:      # a frame of another size: no flow to it, start afresh
            self.tracker.forget()
            self.frame_hw = np.shape(frame)[:2]
        if not self.tracker.ready:
            detections = as_detections(*detections)
            self.tracker.remember(frame, detections)
            return t, detections
        detections = merge_tracked(detections, self.tracker.track(frame), self.iou_threshold, self.min_score,
                                   self.max_boxes)
        self.tracker.hold(detections)          # track() saw this frame already: only the boxes change
        return t, detections


def fusion_settings(test_cfg):
    """TEST.FUSE (a family's TEST section, a mapping) as plain settings: its keys in lower case plus
    ``max_boxes`` (TEST.MAX_PER_IMAGE), as an exported artifact's meta.json "fuse" holds them; None when
    the fusion is off."""
    fuse = test_cfg.get("FUSE")
    if not fuse or not fuse.get("ENABLED"):
        return None
    settings = {key.lower(): value for key, value in fuse.items() if key != "ENABLED"}
    settings["max_boxes"] = int(test_cfg["MAX_PER_IMAGE"])
    return settings


def tracked_fusion(runner, settings):
    """``runner`` in ``TrackedFusion`` with ``fusion_settings``' plain settings (a bad preset or range is
    the tracker's ValueError)."""
    from lib.flow import BoxTracker          # OpenCV: only when fusing
    tracker = BoxTracker(settings["preset"], settings["scale"], settings["decay"], settings["min_visible"])
    return TrackedFusion(runner, tracker, settings["iou"], settings["min_score"], settings["max_boxes"])


def checked_fusion_settings(test_cfg, name="config"):
    """``fusion_settings`` with every value checked (None when the fusion is off): a bad one is a
    ConfigError naming its TEST.FUSE key. Export records only settings that pass, so an artifact never
    carries a fusion ``lib.tools.infer`` would refuse."""
    settings = fusion_settings(test_cfg)
    if settings is None:
        return None
    for key in ("decay", "iou"):
        if not 0.0 < float(settings[key]) <= 1.0:
            raise ConfigError(f"{name}: TEST.FUSE.{key.upper()} must be in (0, 1], got {settings[key]}")
    if not 0.0 <= float(settings["min_score"]) <= 1.0:
        raise ConfigError(f"{name}: TEST.FUSE.MIN_SCORE is a score in [0, 1], got {settings['min_score']}")
    try:
        tracked_fusion(None, settings)          # the tracker checks its preset, scale and min_visible
    except ValueError as err:
        raise ConfigError(f"{name}: TEST.FUSE: {err}") from None
    return settings


def fused_runner(runner, test_cfg, name="config"):
    """``runner`` wrapped in ``TrackedFusion`` when ``TEST.FUSE.ENABLED`` (else itself); a bad key is a
    ConfigError naming it."""
    settings = checked_fusion_settings(test_cfg, name)
    return runner if settings is None else tracked_fusion(runner, settings)
