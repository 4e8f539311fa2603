"""lib.streaming.merge_tracked / TrackedFusion / fused_runner (TEST.FUSE): a box-level memory for any runner.

Oracles: merges written out by hand; a real frame translated by a known amount (cv2.warpAffine), so the
carried box must move by it; a runner that answers one frame late, whose results must still meet their
own frames; the same streaming detector without fusion."""
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset import read_image
from lib.flow import BoxTracker
from lib.streaming import StreamRunner, TrackedFusion, fused_runner, merge_tracked
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import build_detector
from lstm_ssd.streaming import StreamingDetector

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")


def _dets(boxes, scores, labels):
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(labels, np.int64))


def test_merge_lifts_matched_detections_adds_the_rest_and_keeps_classes_apart():
    own = _dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.3, 0.9], [0, 0])
    carried = _dets([[1, 0, 11, 10],        # IoU 9/11 with the first detection: lifts it to 0.6
                     [50, 50, 60, 60],      # matches the second, lower: changes nothing
                     [100, 0, 110, 10],     # overlaps nothing: added
                     [0, 0, 10, 10],        # another class: added, not matched across classes
                     [200, 0, 210, 10]],    # below MIN_SCORE: dropped
                    [0.6, 0.5, 0.4, 0.7, 0.01], [0, 0, 0, 1, 0])
    boxes, scores, labels = merge_tracked(own, carried, iou_threshold=0.5, min_score=0.05)
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6, 0.4])
    np.testing.assert_array_equal(labels, [0, 1, 0, 0])
    np.testing.assert_array_equal(boxes, [[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 10], [100, 0, 110, 10]])
    # the lifted detection keeps its own box; the threshold decides what matches
    boxes, scores, _ = merge_tracked(own, carried, iou_threshold=0.9, min_score=0.05)
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6, 0.4, 0.3])      # IoU 9/11 < 0.9: carried box added
    np.testing.assert_array_equal(boxes[[2, 4]], [[1, 0, 11, 10], [0, 0, 10, 10]])
    boxes, scores, _ = merge_tracked(own, carried, max_boxes=2)
    np.testing.assert_allclose(scores, [0.9, 0.7])
    empty = _dets(np.zeros((0, 4)), [], [])
    np.testing.assert_allclose(merge_tracked(empty, carried)[1], [0.7, 0.6, 0.5, 0.4])
    np.testing.assert_allclose(merge_tracked(own, empty)[1], [0.9, 0.3])


class _Scripted(StreamRunner):
    """Answers frame t with ``script[t]``, ``delay`` frames late (as FGFA's window does)."""

    def __init__(self, script, delay=0):
        self.script, self.delay = script, delay
        self.last_extractor = "large"

    def reset(self):
        self.seen = 0

    def step(self, image):
        self.seen += 1
        t = self.seen - 1 - self.delay
        return [(t, self.script[t])] if t >= 0 else []

    def flush(self):
        return [(t, self.script[t]) for t in range(max(self.seen - self.delay, 0), self.seen)]


@pytest.fixture(scope="module")
def frames():
    """A real frame, the same moved 6 px right and 3 down, and that again (a camera panning)."""
    base = np.ascontiguousarray(read_image(os.path.join(SPEEDTRAP, "images", "frame150.jpg"))[200:520, 200:760])
    shift = lambda image: cv2.warpAffine(image, np.float32([[1, 0, 6], [0, 1, 3]]), (image.shape[1], image.shape[0]),  # noqa: E731
                                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return [base, shift(base), shift(shift(base))]


BOX = [200, 100, 300, 200]
SCRIPT = [_dets([BOX], [0.8], [0]),                                 # found on a sharp frame
          _dets(np.zeros((0, 4)), [], []),                          # lost on the next
          _dets([[212, 106, 312, 206], [400, 20, 440, 60]], [0.3, 0.9], [0, 0])]   # weakly found again + a new one


@pytest.mark.parametrize("delay", [0, 2])
def test_a_box_outlives_a_frame_it_is_lost_on_moved_by_the_motion(frames, delay):
    fused = TrackedFusion(_Scripted(SCRIPT, delay), BoxTracker("medium", scale=1.0, decay=0.7))
    results = fused.detect_video(frames)
    np.testing.assert_array_equal(results[0][0], [BOX])
    np.testing.assert_allclose(results[0][1], [0.8])
    boxes, scores, labels = results[1]                   # carried along the 6, 3 px pan, at 0.8 * 0.7
    np.testing.assert_allclose(boxes, [np.add(BOX, [6, 3, 6, 3])], atol=1.0)
    np.testing.assert_allclose(scores, [0.56], rtol=1e-6)
    boxes, scores, labels = results[2]                   # the weak detection lifted to 0.56 * 0.7, own box
    np.testing.assert_allclose(scores, [0.9, 0.392], rtol=1e-6)
    np.testing.assert_array_equal(boxes, [[400, 20, 440, 60], [212, 106, 312, 206]])
    assert fused.last_extractor == "large"               # the inner runner's attributes show through
    again = fused.detect_video(frames)                   # reset: nothing carried in from the last video
    np.testing.assert_allclose(again[1][1], [0.56], rtol=1e-6)


def test_fused_runner_reads_test_fuse_and_names_bad_keys():
    cfg = lstm_config.load(None, [])
    inner = _Scripted(SCRIPT)
    assert fused_runner(inner, cfg.TEST) is inner                        # off by default
    on = lstm_config.load(None, ["TEST.FUSE.ENABLED=true", "TEST.FUSE.DECAY=0.5", "TEST.MAX_PER_IMAGE=7"])
    runner = fused_runner(inner, on.TEST)
    assert isinstance(runner, TrackedFusion) and runner.tracker.decay == 0.5 and runner.max_boxes == 7
    for key, value, message in (("DECAY", 0, r"TEST.FUSE.DECAY must be in \(0, 1\], got 0"),
                                ("IOU", 1.5, r"TEST.FUSE.IOU must be in \(0, 1\], got 1.5"),
                                ("MIN_SCORE", -1, r"TEST.FUSE.MIN_SCORE is a score in \[0, 1\], got -1"),
                                ("MIN_VISIBLE", 2, r"TEST.FUSE: track min_visible")):
        bad = lstm_config.load(None, ["TEST.FUSE.ENABLED=true", f"TEST.FUSE.{key}={value}"])
        with pytest.raises(ConfigError, match=f"my.yaml: {message}"):
            fused_runner(inner, bad.TEST, "my.yaml")


BASE = ["INPUT.SIZE=[128, 160]", "MODEL.NUM_CLASSES=2", "MODEL.LARGE.WIDTH=0.25", "MODEL.LARGE.OUTPUT_STRIDE=16",
        "MODEL.LSTM.UNITS=16", "MODEL.PYRAMID.DEPTHS=[16,8]", "TEST.SCORE_THRESH=0.0", "TEST.MAX_PER_IMAGE=20"]


def test_fusion_on_a_streaming_lstm_ssd_only_adds_or_lifts(frames):
    """Against the same detector unfused: the first frame is identical; later, every own detection is there
    with its box and at least its score, and the rest are carried boxes."""
    mx.random.seed(3)
    cfg = lstm_config.load(None, BASE + ["MODEL.TYPE=lstm_ssd"])
    net = build_detector(cfg)
    plain = StreamingDetector(net, cfg, hybridize=False).detect_video(frames)
    fused_cfg = lstm_config.load(None, BASE + ["MODEL.TYPE=lstm_ssd", "TEST.FUSE.ENABLED=true"])
    fused = fused_runner(StreamingDetector(net, fused_cfg, hybridize=False), fused_cfg.TEST).detect_video(frames)
    for a, b in zip(plain[0], fused[0]):
        np.testing.assert_array_equal(a, b)
    for (boxes, scores, labels), (f_boxes, f_scores, f_labels) in zip(plain[1:], fused[1:]):
        assert len(f_boxes) >= min(len(boxes), 20) and len(f_boxes) <= 20
        for box, score, label in zip(boxes, scores, labels):
            same = np.flatnonzero(np.all(f_boxes == box, axis=1) & (f_labels == label))
            if len(same):
                assert f_scores[same].max() >= score - 1e-7
            else:        # cut by MAX_PER_IMAGE: only for boxes below every kept score
                assert score <= f_scores.min() + 1e-7


def test_a_frame_of_another_size_starts_the_memory_afresh(frames):
    """No flow between frames of two sizes (a folder of mixed frames): nothing is carried into the first
    frame of the new size, and carrying resumes after it."""
    bigger = [cv2.resize(f, (f.shape[1] * 5 // 4, f.shape[0] * 5 // 4)) for f in frames[1:]]
    script = [_dets([BOX], [0.8], [0]), _dets(np.zeros((0, 4)), [], []), _dets(np.zeros((0, 4)), [], [])]
    results = TrackedFusion(_Scripted(script), BoxTracker("medium", scale=1.0, decay=0.7)).detect_video(
        [frames[0]] + bigger)
    assert len(results[1][1]) == 0 and len(results[2][1]) == 0
    script[1] = _dets([BOX], [0.8], [0])
    results = TrackedFusion(_Scripted(script), BoxTracker("medium", scale=1.0, decay=0.7)).detect_video(
        [frames[0]] + bigger)
    np.testing.assert_allclose(results[2][1], [0.56], rtol=1e-6)
