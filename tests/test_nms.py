"""lib.nms: hard NMS (compiled vs numpy reference vs mx.nd.contrib.box_nms), class-aware NMS,
soft-NMS, multiclass NMS and Seq-NMS (compiled vs numpy reference and hand-built videos)."""
import math

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.bbox import box_iou_np
from lib.nms import (batched_nms, multiclass_nms, nms, nms_np, seq_nms, seq_nms_np, seq_nms_videos, vote_merge,
                     soft_nms, soft_nms_np)


def random_dets(rng, n, size=200.0, coarse=False, distinct_scores=False):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 3, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if coarse:  # snap to a grid so identical boxes, exact IoU ties and zero-area boxes happen
        boxes = np.round(boxes / 10) * 10
    scores = (rng.permutation(n) + 1.0) / (n + 1) if distinct_scores else np.round(rng.rand(n), 1)
    return np.concatenate([boxes, scores[:, None]], axis=1)


def box_nms_kept(dets, thresh, labels=None):
    """Indices kept by mx.nd.contrib.box_nms. It returns the sorted data with suppressed rows set to
    -1, so the row index travels along as an extra column."""
    n = len(dets)
    cols = [dets[:, 4:5], dets[:, :4], np.arange(n, dtype=np.float64)[:, None]]  # score, x1..y2, index
    if labels is not None:
        cols.insert(0, labels[:, None].astype(np.float64))
    data = np.concatenate(cols, axis=1).astype(np.float32)
    offset = 1 if labels is not None else 0
    out = mx.nd.contrib.box_nms(mx.nd.array(data), overlap_thresh=thresh, valid_thresh=0, topk=-1,
                                coord_start=offset + 1, score_index=offset, id_index=0 if labels is not None else -1,
                                force_suppress=False, in_format="corner", out_format="corner").asnumpy()
    out = out[out[:, offset] >= 0]
    return np.rint(out[:, -1]).astype(np.int64)


# ---------------------------------------------------------------- hard NMS
def test_nms_hand_cases():
    assert nms(np.zeros((0, 5)), 0.5).dtype == np.int64 and len(nms(np.zeros((0, 5)), 0.5)) == 0
    assert nms(np.zeros(0), 0.5).shape == (0,)
    np.testing.assert_array_equal(nms(np.array([[0, 0, 1, 1, 0.3]]), 0.5), [0])
    dets = np.array([[0, 0, 10, 10, 0.5],
                     [1, 0, 11, 10, 0.9],    # IoU with 0: 90/110 > 0.5
                     [20, 20, 30, 30, 0.5],  # far away, same score as 0
                     [5, 0, 15, 10, 0.7]])   # IoU with 1: 60/140 < 0.5; with 0: 50/150
    np.testing.assert_array_equal(nms(dets, 0.5), [1, 3, 2])
    np.testing.assert_array_equal(nms(dets, 0.3), [1, 2])  # 3 overlaps 1 by 0.43 > 0.3
    np.testing.assert_array_equal(nms(dets, 0.5, max_output=2), [1, 3])


def test_nms_ties_keep_lower_index_and_identical_boxes():
    same = np.array([[0, 0, 10, 10, 0.8]] * 4)
    np.testing.assert_array_equal(nms(same, 0.5), [0])
    np.testing.assert_array_equal(nms(same, 0.99), [0])  # IoU 1 > 0.99
    separate = np.array([[0, 0, 1, 1, 0.5], [5, 5, 6, 6, 0.5], [9, 9, 10, 10, 0.5]])
    np.testing.assert_array_equal(nms(separate, 0.5), [0, 1, 2])


def test_nms_exact_threshold_is_not_suppressed():
    dets = np.array([[0, 0, 10, 10, 0.9], [5, 0, 15, 10, 0.8], [0, 0, 10, 5, 0.7]], np.float32)
    # IoU(0,1) = 1/3, IoU(0,2) = 0.5: strictly greater suppresses, equal does not
    np.testing.assert_array_equal(nms(dets, 0.5), [0, 1, 2])
    np.testing.assert_array_equal(nms(dets, 0.49), [0, 1])


def test_nms_zero_area_boxes_never_suppress():
    dets = np.array([[3, 3, 3, 3, 0.9], [3, 3, 3, 3, 0.8], [0, 0, 10, 10, 0.7], [2, 2, 2, 8, 0.6]])
    np.testing.assert_array_equal(nms(dets, 0.1), [0, 1, 2, 3])
    np.testing.assert_array_equal(nms_np(dets, 0.1), [0, 1, 2, 3])


def test_nms_rejects_nan_and_bad_shape():
    with pytest.raises(ValueError, match="NaN"):
        nms(np.array([[0, 0, 1, 1, np.nan]]), 0.5)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        nms(np.zeros((3, 4)), 0.5)


@pytest.mark.parametrize("n,thresh", [(300, 0.5), (1000, 0.7), (2000, 0.3)])
def test_nms_matches_mxnet_box_nms(n, thresh):
    rng = np.random.RandomState(n)
    dets = random_dets(rng, n, size=500.0, distinct_scores=True).astype(np.float32)
    kept = nms(dets, thresh)
    np.testing.assert_array_equal(kept, box_nms_kept(dets, thresh))
    np.testing.assert_array_equal(kept, nms_np(dets, thresh))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(0, 80), coarse=st.booleans(),
       thresh=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), use_f32=st.booleans())
def test_nms_property_matches_reference(seed, n, coarse, thresh, use_f32):
    rng = np.random.RandomState(seed)
    dets = random_dets(rng, n, coarse=coarse).astype(np.float32 if use_f32 else np.float64)
    kept = nms(dets, thresh)
    np.testing.assert_array_equal(kept, nms_np(dets, thresh))
    # properties: scores non-increasing; no kept pair above the threshold; every dropped box is
    # covered by a kept box with a score at least as high
    assert np.all(np.diff(dets[kept, 4]) <= 0)
    iou = box_iou_np(dets[kept, :4], dets[kept, :4])
    np.fill_diagonal(iou, 0)
    assert np.all(iou <= np.asarray(thresh, dets.dtype))
    dropped = np.setdiff1d(np.arange(n), kept)
    if len(dropped):
        cover = box_iou_np(dets[dropped, :4], dets[kept, :4]) > np.asarray(thresh, dets.dtype)
        higher = dets[kept, 4][None, :] >= dets[dropped, 4][:, None]
        assert np.all((cover & higher).any(axis=1))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(0, 400), coarse=st.booleans(),
       thresh=st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0]), use_f32=st.booleans(),
       max_output=st.sampled_from([None, 1, 7]))
def test_nms_grid_equals_plain_and_reference(seed, n, coarse, thresh, use_f32, max_output):
    """The centre grid must give exactly the plain result, also with very mixed box sizes (a huge
    kept box suppressing a small one far from its centre cell) and degenerate boxes."""
    rng = np.random.RandomState(seed)
    xy = rng.uniform(0, 500, (n, 2))
    wh = 500 * np.exp(rng.uniform(-5, 0, (n, 2)))  # sides from ~3 to 500 px
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if coarse:
        boxes = np.round(boxes / 20) * 20
    dets = np.concatenate([boxes, np.round(rng.rand(n, 1), 1)], axis=1).astype(np.float32 if use_f32 else np.float64)
    grid = nms(dets, thresh, max_output=max_output, algorithm="grid")
    np.testing.assert_array_equal(grid, nms(dets, thresh, max_output=max_output, algorithm="plain"))
    np.testing.assert_array_equal(grid, nms_np(dets, thresh, max_output=max_output))


def test_nms_grid_large_box_over_small_ones():
    # A 400x400 box with 3 small boxes inside: IoU tiny, nothing suppressed at 0.1; a near-copy of
    # the big box (centre 60 px away, in another cell) is suppressed.
    dets = np.array([[0, 0, 400, 400, 0.9]] + [[x, x, x + 5, x + 5, 0.5] for x in (10, 200, 390)]
                    + [[30, 30, 430, 430, 0.8]], np.float64)
    for algorithm in ("grid", "plain"):
        np.testing.assert_array_equal(nms(dets, 0.1, algorithm=algorithm), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="threshold > 0"):
        nms(dets, 0.0, algorithm="grid")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        nms(dets, 0.5, algorithm="fast")


# ---------------------------------------------------------------- class-aware
def test_batched_nms_matches_box_nms_with_ids():
    rng = np.random.RandomState(11)
    dets = random_dets(rng, 600, size=300.0, distinct_scores=True).astype(np.float32)
    labels = rng.randint(0, 5, 600)
    kept = batched_nms(dets[:, :4], dets[:, 4], labels, 0.45)
    np.testing.assert_array_equal(kept, box_nms_kept(dets, 0.45, labels=labels))


def test_batched_nms_hand_case_and_empty():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.9], np.float32)
    np.testing.assert_array_equal(batched_nms(boxes, scores, [0, 1, 0], 0.5), [0, 1])
    np.testing.assert_array_equal(batched_nms(boxes, scores, [1, 0, 2], 0.5), [0, 2, 1])  # tie: lower index
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="batched_nms expects"):
        batched_nms(boxes, scores[:2], [0, 1, 0], 0.5)


# ---------------------------------------------------------------- soft-NMS
def test_soft_nms_hand_computed():
    dets = np.array([[0, 0, 10, 10, 0.9], [5, 0, 15, 10, 0.8], [0, 0, 10, 5, 0.7], [50, 50, 60, 60, 0.1]])
    # IoU(0,1) = 1/3, IoU(0,2) = 0.5, IoU(1,2) = 25/125 = 0.2
    out, kept = soft_nms(dets, "linear", iou_threshold=0.3, score_threshold=0.001)
    # after 0: s1 = 0.8 * (2/3) = 0.5333, s2 = 0.7 * 0.5 = 0.35; then 1 (IoU 0.2 <= 0.3: no decay)
    np.testing.assert_array_equal(kept, [0, 1, 2, 3])
    np.testing.assert_allclose(out[:, 4], [0.9, 0.8 * 2 / 3, 0.35, 0.1])
    out, kept = soft_nms(dets, "gaussian", sigma=0.5, score_threshold=0.001)
    s1 = 0.8 * math.exp(-(1 / 9) / 0.5)
    s2 = 0.7 * math.exp(-0.25 / 0.5) * math.exp(-0.04 / 0.5)
    np.testing.assert_array_equal(kept, [0, 1, 2, 3])
    np.testing.assert_allclose(out[:, 4], [0.9, s1, s2, 0.1])
    # boxes decayed below the score threshold are removed; boxes below it from the start too
    out, kept = soft_nms(dets, "linear", iou_threshold=0.3, score_threshold=0.4)
    np.testing.assert_array_equal(kept, [0, 1])
    np.testing.assert_array_equal(out[:, :4], dets[[0, 1], :4])


@pytest.mark.parametrize("impl", [soft_nms, soft_nms_np])
def test_soft_nms_decay_reorders_the_selection(impl):
    # A [0,0,10,10] 0.9, B [1,0,11,10] 0.8, C [50,50,60,60] 0.5. IoU(A,B) = 90 / 110 = 9/11, C overlaps
    # nothing. Linear (9/11 > 0.3): B -> 0.8 * (1 - 9/11) = 0.8 * 2/11 = 0.145454..., below C:
    # selection A, C, B. Gaussian: B -> 0.8 * exp(-(81/121) / 0.5) = 0.8 * exp(-1.338843) = 0.8 * 0.262149
    # = 0.209719, still below C.
    dets = np.array([[0, 0, 10, 10, 0.9], [1, 0, 11, 10, 0.8], [50, 50, 60, 60, 0.5]])
    out, kept = impl(dets, "linear", iou_threshold=0.3)
    np.testing.assert_array_equal(kept, [0, 2, 1])
    np.testing.assert_allclose(out[:, 4], [0.9, 0.5, 0.8 * 2 / 11])
    out, kept = impl(dets, "gaussian", sigma=0.5)
    np.testing.assert_array_equal(kept, [0, 2, 1])
    np.testing.assert_allclose(out[:, 4], [0.9, 0.5, 0.8 * math.exp(-(81 / 121) / 0.5)])
    assert out[2, 4] == pytest.approx(0.209719, abs=1e-6)


@pytest.mark.parametrize("impl", [soft_nms, soft_nms_np])
def test_soft_nms_decays_compound_over_selections(impl):
    # A [0,0,10,10] 0.9 and B [20,0,30,10] 0.8 do not overlap; C [5,0,25,10] 0.7 overlaps each by
    # 5x10 = 50 over a union of 100 + 200 - 50 = 250: IoU 0.2 with both.
    dets = np.array([[0, 0, 10, 10, 0.9], [20, 0, 30, 10, 0.8], [5, 0, 25, 10, 0.7]])
    # linear, threshold 0.1: after A, C = 0.7 * 0.8 = 0.56 (< B 0.8); after B, C = 0.56 * 0.8 = 0.448
    out, kept = impl(dets, "linear", iou_threshold=0.1)
    np.testing.assert_array_equal(kept, [0, 1, 2])
    np.testing.assert_allclose(out[:, 4], [0.9, 0.8, 0.448])
    # linear, threshold 0.3: IoU 0.2 is not above it, so nothing decays
    out, kept = impl(dets, "linear", iou_threshold=0.3)
    np.testing.assert_allclose(out[:, 4], [0.9, 0.8, 0.7])
    # gaussian, sigma 0.5: C = 0.7 * exp(-0.04 / 0.5) ** 2 = 0.7 * exp(-0.16) = 0.596500...
    out, kept = impl(dets, "gaussian", sigma=0.5)
    np.testing.assert_array_equal(kept, [0, 1, 2])
    np.testing.assert_allclose(out[:, 4], [0.9, 0.8, 0.7 * math.exp(-0.16)])
    assert out[2, 4] == pytest.approx(0.596501, abs=1e-6)


def test_soft_nms_empty_and_errors():
    out, kept = soft_nms(np.zeros((0, 5)), "gaussian")
    assert out.shape == (0, 5) and kept.shape == (0,)
    with pytest.raises(ValueError, match="'linear' or 'gaussian'"):
        soft_nms(np.zeros((1, 5)), "hard")


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(0, 50), coarse=st.booleans(),
       method=st.sampled_from(["linear", "gaussian"]), score_threshold=st.sampled_from([0.001, 0.1, 0.3]))
def test_soft_nms_matches_reference(seed, n, coarse, method, score_threshold):
    rng = np.random.RandomState(seed)
    dets = random_dets(rng, n, coarse=coarse)
    out, kept = soft_nms(dets, method, sigma=0.5, iou_threshold=0.3, score_threshold=score_threshold)
    ref_out, ref_kept = soft_nms_np(dets, method, sigma=0.5, iou_threshold=0.3, score_threshold=score_threshold)
    np.testing.assert_array_equal(kept, ref_kept)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12)
    assert np.all(out[:, 4] >= score_threshold) and np.all(out[:, 4] <= dets[kept, 4])


# ---------------------------------------------------------------- multiclass
def multiclass_reference(boxes, scores, thresholds, iou, max_per_class, max_total):
    """Straightforward per-class loop over nms_np."""
    rows = []
    for c in range(scores.shape[1]):
        idx = np.flatnonzero(scores[:, c] > thresholds[c])
        b = boxes[idx] if boxes.ndim == 2 else boxes[idx, c]
        dets = np.concatenate([b, scores[idx, c][:, None]], axis=1)
        for k in nms_np(dets, iou)[:max_per_class]:
            rows.append((-dets[k, 4], c, idx[k], dets[k]))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    rows = rows[:max_total]
    return (np.array([r[3][:4] for r in rows]).reshape(-1, 4), np.array([r[3][4] for r in rows]),
            np.array([r[1] for r in rows], np.int64))


@pytest.mark.parametrize("per_class_boxes", [False, True])
def test_multiclass_nms_matches_reference(per_class_boxes):
    rng = np.random.RandomState(21)
    num, classes = 400, 4
    base = random_dets(rng, num, size=300.0)[:, :4]
    boxes = base[:, None, :] + rng.uniform(-3, 3, (num, classes, 4)) if per_class_boxes else base
    scores = rng.rand(num, classes)
    thresholds = np.array([0.05, 0.5, 0.2, 0.9])
    out = multiclass_nms(boxes, scores, thresholds, 0.45, max_per_class=30, max_total=70)
    ref = multiclass_reference(boxes, scores, thresholds, 0.45, 30, 70)
    for ours, theirs in zip(out, ref):
        np.testing.assert_allclose(ours, theirs)
    assert len(out[0]) == 70 and np.all(np.bincount(out[2], minlength=classes) <= 30)


def test_multiclass_nms_soft_and_empty():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.9, 0.01], [0.8, 0.02], [0.3, 0.6]], np.float32)
    b, s, l = multiclass_nms(boxes, scores, 0.05, 0.5, method="linear")
    # class 0: box 1 decayed by 1 - 90/110; class 1: only box 2 passes the threshold
    np.testing.assert_array_equal(l, [0, 1, 0, 0])
    np.testing.assert_allclose(s, [0.9, 0.6, 0.3, 0.8 * (1 - 90 / 110)], rtol=1e-6)
    b, s, l = multiclass_nms(boxes, scores, 0.99, 0.5)
    assert b.shape == (0, 4) and s.shape == (0,) and l.dtype == np.int64
    with pytest.raises(ValueError, match=r"\(P,4\) or \(P,C,4\)"):
        multiclass_nms(boxes[:2], scores, 0.05, 0.5)


# ---------------------------------------------------------------- Seq-NMS
def box(x, y, w=10.0, h=10.0):
    return [x, y, x + w, y + h]


def frame(boxes, scores, labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return boxes, np.asarray(scores, np.float32), labels


def as_dict(result):
    return [{tuple(np.round(b, 3)): (round(float(s), 5), int(l)) for b, s, l in zip(*f)} for f in result]


@pytest.mark.parametrize("impl", [seq_nms, seq_nms_np])
def test_seq_nms_hand_built_video(impl):
    frames = [
        frame([box(0, 0), box(100, 100)], [0.9, 0.2]),
        frame([box(1, 0), box(2, 1)], [0.3, 0.25]),      # second box: IoU >= 0.3 with the path box
        frame([box(2, 0)], [0.6]),
        frame([], []),                                     # empty frame breaks the chain
        frame([box(100, 100), box(101, 100)], [0.5, 0.45]),  # last frame: a new 2-frame track
        frame([box(100, 101)], [0.4]),
    ]
    out = as_dict(impl(frames, rescore="avg"))
    path_avg = round((0.9 + 0.3 + 0.6) / 3, 5)
    assert out[0] == {(0, 0, 10, 10): (path_avg, 0), (100, 100, 110, 110): (0.2, 0)}  # isolated: unchanged
    assert out[1] == {(1, 0, 11, 10): (path_avg, 0)}  # the overlapping 0.25 box was suppressed
    assert out[2] == {(2, 0, 12, 10): (path_avg, 0)}
    assert out[3] == {}
    assert out[4] == {(100, 100, 110, 110): (0.45, 0)}  # (0.5 + 0.4) / 2; its neighbour suppressed
    assert out[5] == {(100, 101, 110, 111): (0.45, 0)}
    out_max = as_dict(impl(frames, rescore="max"))
    assert out_max[1] == {(1, 0, 11, 10): (0.9, 0)} and out_max[5] == {(100, 101, 110, 111): (0.5, 0)}


@pytest.mark.parametrize("impl", [seq_nms, seq_nms_np])
def test_seq_nms_picks_max_sum_path_first(impl):
    # Track 1: A 0.9 -> C 0.1 (sum 1.0); track 2: B 0.2 -> D 0.8 -> E 0.8 (sum 1.8). The max-sum path
    # is track 2 although A is the best box; then track 1 is the next path.
    frames = [frame([box(0, 0), box(100, 0)], [0.9, 0.2]),
              frame([box(1, 0), box(100, 1)], [0.1, 0.8]),
              frame([box(100, 2)], [0.8])]
    d = as_dict(impl(frames))
    assert d[0] == {(0, 0, 10, 10): (0.5, 0), (100, 0, 110, 10): (0.6, 0)}
    assert d[1] == {(1, 0, 11, 10): (0.5, 0), (100, 1, 110, 11): (0.6, 0)}
    assert d[2] == {(100, 2, 110, 12): (0.6, 0)}


@pytest.mark.parametrize("impl", [seq_nms, seq_nms_np])
def test_seq_nms_branching_and_classes(impl):
    # A 0.8 and B 0.5 (IoU 2/3) both link to C; C links to D. Path A -> C -> D (sum 2.2) wins; B is
    # not suppressed at suppress_iou 0.9 and has no live link left, so it keeps its score. A box of
    # another class at C's position never links with class 0.
    frames = [frame([box(0, 0), box(0, 2)], [0.8, 0.5], [0, 0]),
              frame([box(0, 1), box(0, 1)], [0.7, 0.95], [0, 1]),
              frame([box(0, 1)], [0.7], [0])]
    d = as_dict(impl(frames, suppress_iou=0.9, nms_iou=0.95))
    path = round((0.8 + 0.7 + 0.7) / 3, 5)
    assert d[0] == {(0, 0, 10, 10): (path, 0), (0, 2, 10, 12): (0.5, 0)}
    assert d[2] == {(0, 1, 10, 11): (path, 0)}
    frame1 = impl(frames, suppress_iou=0.9, nms_iou=0.95)[1]
    assert dict(zip(frame1[2].tolist(), [round(float(v), 5) for v in frame1[1]])) == {0: path, 1: 0.95}


@pytest.mark.parametrize("impl", [seq_nms, seq_nms_np])
def test_seq_nms_max_sum_path_lifts_a_weak_box_then_the_next_path(impl):
    # frame 0: P [0,0,10,10] 0.6
    # frame 1: Q [1,0,11,10] 0.5 (IoU(P,Q) = 90/110 = 0.82: linked), R [40,0,50,10] 0.9 (no link back)
    # frame 2: S [41,0,51,10] 0.2 (linked to R), T [2,0,12,10] 0.1 (linked to Q)
    # Path sums: P-Q-T = 0.6 + 0.5 + 0.1 = 1.2 beats R-S = 0.9 + 0.2 = 1.1, although R is the best box.
    # Path 1 (avg 1.2 / 3 = 0.4) suppresses nothing (R and S do not overlap it); path 2 is R-S
    # (avg 0.55). rescore 'max': 0.6 and 0.9. Final per-frame NMS: Q and R, T and S do not overlap.
    frames = [frame([box(0, 0)], [0.6]),
              frame([box(1, 0), box(40, 0)], [0.5, 0.9]),
              frame([box(41, 0), box(2, 0)], [0.2, 0.1])]
    d = as_dict(impl(frames, link_iou=0.5, suppress_iou=0.3, rescore="avg"))
    assert d[0] == {(0, 0, 10, 10): (0.4, 0)}
    assert d[1] == {(1, 0, 11, 10): (0.4, 0), (40, 0, 50, 10): (0.55, 0)}
    assert d[2] == {(2, 0, 12, 10): (0.4, 0), (41, 0, 51, 10): (0.55, 0)}
    d = as_dict(impl(frames, link_iou=0.5, suppress_iou=0.3, rescore="max"))
    assert d[2] == {(2, 0, 12, 10): (0.6, 0), (41, 0, 51, 10): (0.9, 0)}
    # link_iou above 0.82 cuts every link: nothing is rescored
    d = as_dict(impl(frames, link_iou=0.85))
    assert d[1] == {(1, 0, 11, 10): (0.5, 0), (40, 0, 50, 10): (0.9, 0)}


@pytest.mark.parametrize("impl", [seq_nms, seq_nms_np])
def test_seq_nms_edge_cases(impl):
    assert impl([]) == []
    single = impl([frame([box(0, 0), box(1, 0)], [0.9, 0.8])])
    assert len(single) == 1 and len(single[0][0]) == 1  # only per-frame NMS applies
    empty = impl([frame([], []), frame([], [])])
    assert len(empty) == 2 and all(len(f[0]) == 0 for f in empty)
    # the last frame of the video is processed and returned
    out = impl([frame([box(0, 0)], [0.2]), frame([box(0, 0)], [0.8])])
    assert len(out) == 2 and np.allclose(out[1][1], 0.5) and np.allclose(out[0][1], 0.5)
    with pytest.raises(ValueError, match="frame 1"):
        impl([frame([box(0, 0)], [0.2]), (np.zeros((2, 4)), np.zeros(1), np.zeros(2))])
    with pytest.raises(ValueError, match="rescore"):
        impl([], rescore="median")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), num_frames=st.integers(1, 12), rescore=st.sampled_from(["avg", "max"]))
def test_seq_nms_compiled_matches_numpy_reference(seed, num_frames, rescore):
    rng = np.random.RandomState(seed)
    tracks = rng.uniform(0, 200, (6, 2))
    frames = []
    for _ in range(num_frames):
        n = rng.randint(0, 10)
        centres = tracks[rng.randint(0, 6, n)] + rng.randn(n, 2) * 4
        wh = rng.uniform(20, 40, (n, 2))
        frames.append(frame(np.concatenate([centres - wh / 2, centres + wh / 2], axis=1),
                            np.round(rng.rand(n), 2), rng.randint(0, 2, n)))
    fast = seq_nms(frames, rescore=rescore)
    ref = seq_nms_np(frames, rescore=rescore)
    assert len(fast) == len(ref) == num_frames
    for (b1, s1, l1), (b2, s2, l2), (b0, s0, _) in zip(fast, ref, frames):
        np.testing.assert_array_equal(b1, b2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6)
        np.testing.assert_array_equal(l1, l2)
        assert len(b1) <= len(b0)
        assert np.all(np.diff(s1) <= 1e-7)  # sorted by score


def test_seq_nms_videos_groups_sorts_and_keeps_the_last_frame():
    rng = np.random.RandomState(31)

    def random_frame():
        n = rng.randint(1, 6)
        xy = rng.uniform(0, 50, (n, 2))
        return frame(np.concatenate([xy, xy + 30], axis=1), np.round(rng.rand(n), 2), rng.randint(0, 2, n))

    videos = {"a": [random_frame() for _ in range(5)], "b": [random_frame() for _ in range(4)]}
    still = random_frame()
    entries = [("a", t, f) for t, f in enumerate(videos["a"])] + [("b", t, f) for t, f in enumerate(videos["b"])]
    entries.append((None, -1, still))
    order = rng.permutation(len(entries))  # shuffled: the last video's last frame lands anywhere
    shuffled = [entries[i] for i in order]
    out = seq_nms_videos([e[0] for e in shuffled], [e[1] for e in shuffled], [e[2] for e in shuffled])
    expected = {name: seq_nms(frames) for name, frames in videos.items()}
    for (video, t, _), result in zip(shuffled, out):
        reference = still if video is None else expected[video][t]
        for ours, theirs in zip(result, reference):
            np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="frame 1 more than once"):
        seq_nms_videos(["a", "a"], [1, 1], [random_frame(), random_frame()])
    with pytest.raises(ValueError, match="differ in length"):
        seq_nms_videos(["a"], [0, 1], [random_frame()])


def test_multiclass_nms_pre_nms_top_k():
    # A (0.9) suppresses B (0.8, IoU 0.81); C (0.7) is disjoint. With only the best 2 candidates
    # entering NMS, C never gets there (hand-computed); without the limit it survives.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.9], [0.8], [0.7]], np.float32)
    b, s, _ = multiclass_nms(boxes, scores, 0.1, 0.5)
    np.testing.assert_allclose(s, [0.9, 0.7])
    b, s, _ = multiclass_nms(boxes, scores, 0.1, 0.5, pre_nms_top_k=2)
    np.testing.assert_allclose(s, [0.9])
    np.testing.assert_array_equal(b, boxes[:1])
    b, s, _ = multiclass_nms(boxes, scores, 0.1, 0.5, pre_nms_top_k=5)   # more than the candidates: all
    np.testing.assert_allclose(s, [0.9, 0.7])


def test_vote_merge_hand_computed():
    """Two passes: an object both find (scores 0.9 and 0.6, IoU 0.82) and a false positive only pass 1
    finds (0.8); another class at the same place stays apart. Union NMS would rank the false positive
    above the object's second detection; the vote gives the object (0.9 + 0.6) / 2 = 0.75 with the
    score-weighted box, and the lone detection 0.8 / 2 = 0.4."""
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10],          # the object, pass 0 and pass 1
                      [50, 50, 60, 60],                         # pass 1 only
                      [0, 0, 10, 10]], np.float32)              # class 1, pass 0
    scores = np.array([0.9, 0.6, 0.8, 0.5], np.float32)
    labels = np.array([0, 0, 0, 1])
    passes = np.array([0, 1, 1, 0])
    out_boxes, out_scores, out_labels = vote_merge(boxes, scores, labels, passes, 2, 0.5)
    np.testing.assert_allclose(out_scores, [0.75, 0.4, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(out_labels, [0, 0, 1])
    np.testing.assert_allclose(out_boxes[0], [0.6 / 1.5, 0, 10 + 0.6 / 1.5, 10], rtol=1e-6)
    np.testing.assert_allclose(out_boxes[1:], boxes[[2, 3]])
    # one pass: the vote is plain NMS
    b, s, lab = vote_merge(boxes[[0, 2]], scores[[0, 2]], labels[[0, 2]], [0, 0], 1, 0.5)
    np.testing.assert_allclose(s, [0.9, 0.8], rtol=1e-6)
    assert vote_merge(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros(0, int), 2, 0.5)[0].shape == (0, 4)
