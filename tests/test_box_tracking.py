"""lib.flow.move_boxes / BoxTracker and fast-slow's tracked small steps (TEST.TRACK).

Oracles: flows written down by hand (a translation, a zoom about a point: the moved box is known in
closed form), a real frame translated / zoomed by a known amount (cv2.warpAffine) for DIS, and the
same streaming detector without tracking for the large steps."""
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset import read_image
from lib.flow import BoxTracker, move_boxes
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import build_detector
from lstm_ssd.streaming import AsyncStreamingDetector, StreamingDetector

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")


def _zoom_flow(height, width, k, ox, oy):
    """The flow of a zoom by k about (ox, oy): the point p goes to o + k (p - o)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([(k - 1) * (xs - ox), (k - 1) * (ys - oy)], axis=-1)


def test_move_boxes_follows_a_translation_and_a_zoom_exactly():
    boxes = np.array([[10, 20, 30, 50], [40, 5, 60, 15]], np.float32)
    shift = np.zeros((80, 100, 2), np.float32)
    shift[..., 0], shift[..., 1] = 3.0, -2.0
    np.testing.assert_allclose(move_boxes(boxes, shift), boxes + [3, -2, 3, -2], atol=1e-5)
    k, ox, oy = 1.1, 50.0, 40.0
    expected = np.stack([ox + k * (boxes[:, 0] - ox), oy + k * (boxes[:, 1] - oy),
                         ox + k * (boxes[:, 2] - ox), oy + k * (boxes[:, 3] - oy)], axis=1)
    np.testing.assert_allclose(move_boxes(boxes, _zoom_flow(80, 100, k, ox, oy)), expected, atol=1e-3)
    # one frame's motion cannot double a box: the scale stops at max_scale_step
    doubled = move_boxes(boxes[:1], _zoom_flow(80, 100, 2.0, ox, oy), max_scale_step=1.25)
    assert doubled[0, 2] - doubled[0, 0] == pytest.approx(1.25 * 20, rel=1e-4)
    assert move_boxes(np.zeros((0, 4)), shift).shape == (0, 4)


@pytest.fixture(scope="module")
def frame():
    return np.ascontiguousarray(read_image(os.path.join(SPEEDTRAP, "images", "frame150.jpg"))[200:520, 200:760])


def _warp(image, matrix):
    return cv2.warpAffine(image, np.float32(matrix), (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def test_tracker_moves_boxes_with_a_real_frame_translated_and_zoomed(frame):
    boxes = np.array([[200, 100, 300, 200], [350, 150, 450, 260]], np.float32)
    dets = (boxes, np.array([0.9, 0.6], np.float32), np.array([0, 1]))
    tracker = BoxTracker("medium", scale=1.0, decay=0.5)
    tracker.remember(frame, dets)
    moved, scores, labels = tracker.track(_warp(frame, [[1, 0, 6], [0, 1, 3]]))
    np.testing.assert_allclose(moved, boxes + [6, 3, 6, 3], atol=1.0)
    np.testing.assert_allclose(scores, [0.45, 0.3])             # decay per tracked frame
    np.testing.assert_array_equal(labels, [0, 1])
    k, ox, oy = 1.08, 280.0, 160.0                                # the camera drives towards (ox, oy)
    tracker.remember(frame, dets)
    zoomed, _, _ = tracker.track(_warp(frame, [[k, 0, (1 - k) * ox], [0, k, (1 - k) * oy]]))
    widths = (zoomed[:, 2] - zoomed[:, 0]) / (boxes[:, 2] - boxes[:, 0])
    np.testing.assert_allclose(widths, k, atol=0.02)
    np.testing.assert_allclose(zoomed[0], [ox + k * (200 - ox), oy + k * (100 - oy),
                                           ox + k * (300 - ox), oy + k * (200 - oy)], atol=1.5)


def test_tracker_drops_a_box_that_leaves_the_frame_and_needs_a_start(frame):
    tracker = BoxTracker("medium", scale=1.0, min_visible=0.5)
    with pytest.raises(ValueError, match="before any remember"):
        tracker.track(frame)
    boxes = np.array([[2, 100, 42, 140], [250, 100, 290, 140]], np.float32)   # the first at the left edge
    tracker.remember(frame, (boxes, np.ones(2, np.float32), np.zeros(2, np.int64)))
    moved, _, _ = tracker.track(_warp(frame, [[1, 0, -30], [0, 1, 0]]))    # 30 px to the left
    assert len(moved) == 1 and moved[0, 0] == pytest.approx(220, abs=1.0)
    with pytest.raises(ValueError, match="decay"):
        BoxTracker(decay=0.0)


BASE = ["MODEL.IMAGE_SIZE=[128, 160]", "MODEL.NUM_CLASSES=2", "MODEL.LARGE.WIDTH=0.25",
        "MODEL.LARGE.OUTPUT_STRIDE=16", "MODEL.LSTM.UNITS=16", "MODEL.PYRAMID.DEPTHS=[16,8]",
        "TEST.SCORE_THRESH=0.0"]
FAST_SLOW = BASE + ["MODEL.TYPE=fast_slow", "MODEL.SMALL.NET=mobilenet_v1", "MODEL.SMALL.WIDTH=0.25",
                    "MODEL.SMALL.INPUT_SIZE=[64, 80]", "MODEL.SMALL.OUTPUT_STRIDE=8"]
TRACK = ["TEST.TRACK.ENABLED=true", "TEST.TRACK.PRESET=medium", "TEST.TRACK.SCALE=1.0"]


def _fast_slow(over):
    cfg = lstm_config.load(None, over)
    net = build_detector(cfg)
    net(mx.nd.zeros((1, 1, 3) + net.image_hw), None, ["large"])
    rng = np.random.RandomState(3)
    for name, p in net._collect_params_with_prefix().items():
        p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape) if name.endswith(("running_var", "gamma"))
                               else rng.normal(0, 0.3, p.shape)))
    return cfg, net


def test_tracked_small_steps_run_no_network_and_large_steps_are_unchanged(frame, tmp_path):
    cfg, net = _fast_slow(FAST_SLOW)
    tracked_cfg = lstm_config.load(None, FAST_SLOW + TRACK)
    plain = StreamingDetector(net, cfg, policy="fixed", tau=2, hybridize=False)
    tracked = StreamingDetector(net, tracked_cfg, policy="fixed", tau=2, hybridize=False)
    clip = [np.ascontiguousarray(_warp(frame[:256, :320], [[1, 0, 4 * t], [0, 1, 0]])) for t in range(7)]
    runs, original_step = [], net.step

    def counting_step(x, state, extractor):
        runs.append(extractor)
        return original_step(x, state, extractor)
    net.step = counting_step
    outputs = []
    for t, image in enumerate(clip):
        (_, a), = plain.step(image)
        before = len(runs)
        (_, b), = tracked.step(image)
        outputs.append(b)
        if t % 3 == 0:          # a large step: the network, the same state, the same detections
            assert runs[before:] == ["large"]
            for x, y in zip(a, b):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        else:                   # a small step: no network, the last frame's detections moved by its tracker
            assert len(runs) == before
            reference = BoxTracker("medium", scale=1.0)
            reference.remember(clip[t - 1], outputs[t - 1])
            for x, y in zip(reference.track(image), b):
                np.testing.assert_array_equal(x, y)
    assert tracked.history == plain.history
    # resumes exactly: the remembered frame and detections are part of the saved state
    _assert_resumes_exactly(tracked, clip, 2, str(tmp_path / "state.npz"))


def _assert_resumes_exactly(stream, clip, split, path):
    """A stream saved after clip[:split] and restored gives the same detections on the next 3 frames."""
    stream.reset()
    for image in clip[:split]:
        stream.step(image)
    stream.save_state(path)
    first = [stream.step(image)[0][1] for image in clip[split:split + 3]]
    stream.load_state(path)
    again = [stream.step(image)[0][1] for image in clip[split:split + 3]]
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_track_memory_reset_starts_each_large_step_after_tracked_frames_from_a_zero_state(frame, tmp_path):
    cfg, net = _fast_slow(FAST_SLOW)
    reset_cfg = lstm_config.load(None, FAST_SLOW + TRACK + ["TEST.TRACK.MEMORY=reset"])
    carry = StreamingDetector(net, lstm_config.load(None, FAST_SLOW + TRACK), policy="fixed", tau=2,
                              hybridize=False)
    reset = StreamingDetector(net, reset_cfg, policy="fixed", tau=2, hybridize=False)
    fresh = StreamingDetector(net, cfg, policy="large", hybridize=False)   # oracle: a zero state
    clip = [np.ascontiguousarray(_warp(frame[:256, :320], [[1, 0, 4 * t], [0, 1, 0]])) for t in range(7)]
    differs = False
    for t, image in enumerate(clip):
        (_, a), = carry.step(image)
        (_, b), = reset.step(image)
        if t % 3 == 0:
            fresh.reset()
            (_, z), = fresh.step(image)
            for x, y in zip(z, b):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
            differs |= t > 0 and not np.allclose(a[1], b[1], atol=1e-4)
    assert differs, "the carried memory should change the later large steps"
    # resumes exactly across the reset: the step history says the last frame was tracked
    _assert_resumes_exactly(reset, clip, 3, str(tmp_path / "state.npz"))


def test_search_tau_adds_large_steps_only_while_nothing_confident_is_tracked(frame, tmp_path):
    """TEST.TRACK.SEARCH_TAU 1 with TAU 4: a tracker holding nothing that scores CONFIDENT gets a large
    step after every small one; one holding a confident box follows the fixed schedule (hand-written
    step histories); in between, each step follows the rule from the scores the tracker held."""
    cfg, net = _fast_slow(FAST_SLOW)
    clip = [np.ascontiguousarray(_warp(frame[:256, :320], [[1, 0, 4 * t], [0, 1, 0]])) for t in range(9)]
    search = TRACK + ["TEST.TRACK.SEARCH_TAU=1"]

    def run(confident):
        stream = StreamingDetector(net, lstm_config.load(None, FAST_SLOW + search + [f"TEST.TRACK.CONFIDENT={confident}"]),
                                   policy="fixed", tau=4, hybridize=False)
        held = []
        for image in clip:
            held.append(stream.tracker.best_score() if stream.tracker.ready else None)
            stream.step(image)
        return stream, "".join("LS"[a] for a in stream.history), held

    stream, history, held = run(0.0)
    assert history == "LSSSSLSSS" and max(h for h in held if h is not None) > 0
    _, history, _ = run(1.0)
    assert history == "LSLSLLSLS"        # frame 5 is on the fixed grid as well: two large steps in a row
    threshold = float(np.median([h for h in held if h is not None]))
    stream, history, held = run(threshold)
    for t in range(1, len(clip)):
        on_grid = t % 5 == 0
        searching = history[t - 1] == "S" and held[t] < threshold
        assert history[t] == ("L" if on_grid or searching else "S"), (t, history, held, threshold)
    assert "LS" in history and "SS" in history, history      # both branches of the rule ran
    _assert_resumes_exactly(stream, clip, 2, str(tmp_path / "state.npz"))


def test_track_config_mistakes_are_one_line_errors():
    cfg = lstm_config.load(None, BASE + ["MODEL.TYPE=lstm_ssd"] + TRACK)
    with pytest.raises(ConfigError, match="TEST.TRACK replaces the small steps of fast_slow"):
        StreamingDetector(build_detector(cfg), cfg, hybridize=False)
    cfg = lstm_config.load(None, FAST_SLOW + TRACK + ["TEST.TRACK.DECAY=1.5"])
    with pytest.raises(ConfigError, match="TEST.TRACK: track decay"):
        StreamingDetector(build_detector(cfg), cfg, hybridize=False)
    cfg = lstm_config.load(None, FAST_SLOW + TRACK + ["TEST.TRACK.MEMORY=zero"])
    with pytest.raises(ConfigError, match="TEST.TRACK.MEMORY must be carry or reset, got 'zero'"):
        StreamingDetector(build_detector(cfg), cfg, hybridize=False)
    cfg = lstm_config.load(None, FAST_SLOW + TRACK + ["TEST.TRACK.SEARCH_TAU=-2"])
    with pytest.raises(ConfigError, match=r"TEST.TRACK.SEARCH_TAU must be -1 \(off\) or >= 0, got -2"):
        StreamingDetector(build_detector(cfg), cfg, hybridize=False)
    cfg = lstm_config.load(None, FAST_SLOW + TRACK + ["TEST.TRACK.CONFIDENT=2"])
    with pytest.raises(ConfigError, match=r"TEST.TRACK.CONFIDENT is a score in \[0, 1\], got 2.0"):
        StreamingDetector(build_detector(cfg), cfg, hybridize=False)
    cfg = lstm_config.load(None, FAST_SLOW + TRACK)
    with pytest.raises(ConfigError, match="synchronous"):
        AsyncStreamingDetector(build_detector(cfg), cfg, hybridize=False)
