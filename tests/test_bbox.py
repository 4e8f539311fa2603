"""lib.bbox: IoU (compiled vs numpy vs gluoncv), the box coder (vs gluoncv and MXNet's box_decode,
mx.nd and mx.sym graph versions), clipping and small-box filtering."""
import math

import mxnet as mx
import numpy as np
import pytest
from gluoncv.nn.coder import NormalizedBoxCenterDecoder, NormalizedBoxCenterEncoder
from gluoncv.utils.bbox import bbox_iou as gluoncv_bbox_iou
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.bbox import (box_iou, box_iou_np, clip_boxes, decode_boxes, decode_boxes_F, encode_boxes,
                      encode_boxes_F, filter_small)


def random_boxes(rng, n, size=100.0, integer=False):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0, size / 2, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    return np.round(boxes / 5) * 5 if integer else boxes  # coarse grid: ties, identical and empty boxes


# ---------------------------------------------------------------- IoU
def test_iou_hand_cases():
    a = np.array([[0, 0, 10, 10]], np.float64)
    b = np.array([[0, 0, 10, 10],     # identical
                  [5, 0, 15, 10],     # half overlap: 50 / 150
                  [10, 0, 20, 10],    # touching edge: 0
                  [2, 2, 4, 4],       # inside: 4 / 100
                  [30, 30, 40, 40],   # disjoint
                  [3, 3, 3, 8]],      # zero width
                 np.float64)
    expected = [1.0, 50 / 150, 0.0, 0.04, 0.0, 0.0]
    np.testing.assert_allclose(box_iou(a, b)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(box_iou_np(a, b)[0], expected, rtol=1e-12)


def test_iou_of_identical_zero_area_boxes_is_zero():
    z = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], np.float32)
    assert np.all(box_iou(z, z) == 0) and np.all(box_iou_np(z, z) == 0)


def test_iou_empty_inputs_and_dtypes():
    a = np.zeros((0, 4), np.float32)
    b = random_boxes(np.random.RandomState(0), 3).astype(np.float32)
    assert box_iou(a, b).shape == (0, 3) and box_iou(b, a).shape == (3, 0)
    assert box_iou(b, b).dtype == np.float32
    assert box_iou(b.astype(np.float64), b).dtype == np.float64
    assert box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]])).dtype == np.float64  # ints


def test_iou_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"boxes_a must have shape \(N, 4\)"):
        box_iou(np.zeros((3, 5)), np.zeros((2, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_iou_matches_numpy_reference_and_gluoncv(dtype):
    rng = np.random.RandomState(1)
    a = random_boxes(rng, 60).astype(dtype)
    b = random_boxes(rng, 45).astype(dtype)
    fast = box_iou(a, b)
    assert np.array_equal(fast, box_iou_np(a, b))  # same arithmetic: bit-identical
    np.testing.assert_allclose(fast, gluoncv_bbox_iou(a.astype(np.float64), b.astype(np.float64), offset=0),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(0, 30), m=st.integers(0, 30),
       integer=st.booleans(), use_f32=st.booleans())
def test_iou_property_random_boxes(seed, n, m, integer, use_f32):
    rng = np.random.RandomState(seed)
    dtype = np.float32 if use_f32 else np.float64
    a = random_boxes(rng, n, integer=integer).astype(dtype)
    b = random_boxes(rng, m, integer=integer).astype(dtype)
    iou = box_iou(a, b)
    assert np.array_equal(iou, box_iou_np(a, b))
    assert np.all((iou >= 0) & (iou <= 1 + 1e-6))
    np.testing.assert_allclose(iou, box_iou(b, a).T, rtol=1e-6, atol=1e-7)  # symmetric


# ---------------------------------------------------------------- coder
def test_encode_hand_case_and_offset_one():
    anchor = np.array([[0.0, 0.0, 10.0, 20.0]])
    gt = np.array([[5.0, 0.0, 25.0, 10.0]])
    # centre (15, 5) vs (5, 10); sizes (20, 10) vs (10, 20)
    expected = [(15 - 5) / 10, (5 - 10) / 20, math.log(2.0), math.log(0.5)]
    np.testing.assert_allclose(encode_boxes(gt, anchor)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(encode_boxes(gt, anchor, stds=(0.1, 0.1, 0.2, 0.2))[0],
                               np.array(expected) / [0.1, 0.1, 0.2, 0.2], rtol=1e-12)
    np.testing.assert_allclose(encode_boxes(gt, anchor, stds=(0.1, 0.2))[0],  # SSD variance pair
                               np.array(expected) / [0.1, 0.1, 0.2, 0.2], rtol=1e-12)
    # +1 convention: widths 11/21 (anchor) and 21/11 (gt), centres unchanged
    expected_plus1 = [10 / 11, -5 / 21, math.log(21 / 11), math.log(11 / 21)]
    np.testing.assert_allclose(encode_boxes(gt, anchor, offset=1)[0], expected_plus1, rtol=1e-12)


@pytest.mark.parametrize("offset", [0, 1])
def test_encode_decode_roundtrip(offset):
    rng = np.random.RandomState(2)
    anchors = random_boxes(rng, 200) + [0, 0, 2, 2]
    gt = random_boxes(rng, 200) + [0, 0, 2, 2]
    stds, means = (0.1, 0.1, 0.2, 0.2), (0.01, -0.02, 0.03, 0.0)
    deltas = encode_boxes(gt, anchors, stds, means, offset=offset)
    np.testing.assert_allclose(decode_boxes(deltas, anchors, stds, means, offset=offset), gt, atol=1e-9)


def test_encode_matches_gluoncv_encoder():
    rng = np.random.RandomState(3)
    anchors = (random_boxes(rng, 50) + [0, 0, 1, 1]).astype(np.float32)
    gt = (random_boxes(rng, 7) + [0, 0, 1, 1]).astype(np.float32)
    matches = rng.randint(0, 7, 50)
    encoder = NormalizedBoxCenterEncoder(stds=(0.1, 0.1, 0.2, 0.2))
    samples = mx.nd.ones((1, 50))
    oracle, _ = encoder(samples, mx.nd.array(matches[None]), mx.nd.array(anchors[None]), mx.nd.array(gt[None]))
    ours = encode_boxes(gt[matches], anchors, stds=(0.1, 0.1, 0.2, 0.2))
    np.testing.assert_allclose(ours, oracle.asnumpy()[0], rtol=1e-4, atol=1e-4)


def test_decode_matches_gluoncv_decoder_and_clip_log():
    rng = np.random.RandomState(4)
    anchors = (random_boxes(rng, 80) + [0, 0, 1, 1]).astype(np.float32)
    deltas = rng.randn(80, 4).astype(np.float32)
    deltas[:5, 2:] = 50.0  # clipped at log(1000/16)
    clip = math.log(1000.0 / 16)
    decoder = NormalizedBoxCenterDecoder(stds=(0.1, 0.1, 0.2, 0.2), convert_anchor=True, clip=clip)
    oracle = decoder(mx.nd.array(deltas[None]), mx.nd.array(anchors[None])).asnumpy()[0]
    ours = decode_boxes(deltas, anchors, stds=(0.1, 0.1, 0.2, 0.2))
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-3)
    assert np.isfinite(ours).all()


def test_decode_F_matches_numpy_on_nd_and_sym():
    rng = np.random.RandomState(5)
    anchors = (random_boxes(rng, 30) + [0, 0, 1, 1]).astype(np.float32)
    deltas = rng.randn(2, 30, 4).astype(np.float32)
    stds, means = (0.1, 0.1, 0.2, 0.2), (0.0, 0.1, 0.0, -0.1)
    expected = np.stack([decode_boxes(d, anchors, stds, means) for d in deltas])
    nd_out = decode_boxes_F(mx.nd, mx.nd.array(deltas), mx.nd.array(anchors[None]), stds, means).asnumpy()
    np.testing.assert_allclose(nd_out, expected, rtol=1e-5, atol=1e-4)
    sym = decode_boxes_F(mx.sym, mx.sym.var("deltas"), mx.sym.var("anchors"), stds, means)
    sym_out = sym.eval(ctx=mx.cpu(), deltas=mx.nd.array(deltas), anchors=mx.nd.array(anchors[None]))[0].asnumpy()
    np.testing.assert_allclose(sym_out, expected, rtol=1e-5, atol=1e-4)
    # offset=1 graph decode equals the numpy +1 decode
    nd_plus1 = decode_boxes_F(mx.nd, mx.nd.array(deltas), mx.nd.array(anchors[None]), stds, means, offset=1)
    np.testing.assert_allclose(nd_plus1.asnumpy()[0], decode_boxes(deltas[0], anchors, stds, means, offset=1),
                               rtol=1e-5, atol=1e-4)


def test_encode_F_matches_numpy():
    rng = np.random.RandomState(6)
    anchors = (random_boxes(rng, 20) + [0, 0, 1, 1]).astype(np.float32)
    gt = (random_boxes(rng, 20) + [0, 0, 1, 1]).astype(np.float32)
    out = encode_boxes_F(mx.nd, mx.nd.array(gt[None]), mx.nd.array(anchors[None]), (0.1, 0.1, 0.2, 0.2)).asnumpy()[0]
    np.testing.assert_allclose(out, encode_boxes(gt, anchors, (0.1, 0.1, 0.2, 0.2)), rtol=1e-4, atol=1e-4)


def test_decode_matches_mxnet_box_decode():
    rng = np.random.RandomState(7)
    anchors = (random_boxes(rng, 40) + [0, 0, 1, 1]).astype(np.float32)
    deltas = (rng.randn(40, 4) * 0.5).astype(np.float32)
    oracle = mx.nd.contrib.box_decode(mx.nd.array(deltas[None]), mx.nd.array(anchors[None]),
                                      0.1, 0.1, 0.2, 0.2, clip=-1, format="corner").asnumpy()[0]
    np.testing.assert_allclose(decode_boxes(deltas, anchors, (0.1, 0.1, 0.2, 0.2), clip_log=None), oracle,
                               rtol=1e-4, atol=1e-3)


def test_coder_errors():
    with pytest.raises(ValueError, match="row-aligned"):
        encode_boxes(np.zeros((2, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="positive width"):
        encode_boxes(np.array([[0, 0, 0, 5.0]]), np.array([[0, 0, 4, 4.0]]))
    with pytest.raises(ValueError, match="stds must be non-zero"):
        decode_boxes(np.zeros((1, 4)), np.array([[0, 0, 4, 4.0]]), stds=(0, 1, 1, 1))
    with pytest.raises(ValueError, match="4 values"):
        decode_boxes(np.zeros((1, 4)), np.array([[0, 0, 4, 4.0]]), stds=(1, 1, 1))


# ---------------------------------------------------------------- clip / filter
def test_clip_boxes_and_filter_small():
    boxes = np.array([[-5, -2, 50, 30], [10, 10, 200, 120], [3, 4, 5, 40]], np.float32)
    clipped = clip_boxes(boxes, 100, 80)
    np.testing.assert_array_equal(clipped, [[0, 0, 50, 30], [10, 10, 100, 80], [3, 4, 5, 40]])
    assert boxes[0, 0] == -5  # input untouched
    batched = clip_boxes(boxes[None].repeat(2, 0), 100, 80)
    np.testing.assert_array_equal(batched[1], clipped)
    np.testing.assert_array_equal(filter_small(clipped, 2), [0, 1, 2])
    np.testing.assert_array_equal(filter_small(clipped, 3), [0, 1])
    assert filter_small(np.zeros((0, 4)), 1).dtype == np.int64
