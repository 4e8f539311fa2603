"""lib.anchors: RPN anchors against MXNet's MultiProposal (values and layout), SSD/M2Det priors
against gluoncv's SSDAnchorGenerator and hand-computed values, TF-OD multiscale anchors by hand."""
import math

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo.ssd.anchor import SSDAnchorGenerator

from lib.anchors import multiscale_anchors, rpn_base_anchors, shift_anchors, sizes_from_pattern, ssd_priors
from lib.bbox import decode_boxes

# The classic Faster R-CNN table for base 16, ratios (0.5, 1, 2), scales (8, 16, 32), +1 convention.
CLASSIC_ANCHORS = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                   [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                   [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]


def test_rpn_base_anchors_classic_table():
    anchors = rpn_base_anchors(16, (8, 16, 32), (0.5, 1, 2))
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, CLASSIC_ANCHORS)


def test_shift_anchors_layout_h_w_a():
    base = rpn_base_anchors(16, (8, 16), (1, 2))
    shifted = shift_anchors(base, 3, 5, 16)
    assert shifted.shape == (3 * 5 * 4, 4)
    for h, w, a in [(0, 0, 0), (0, 1, 3), (2, 4, 1), (1, 3, 2)]:
        np.testing.assert_array_equal(shifted[(h * 5 + w) * 4 + a], base[a] + [16 * w, 16 * h, 16 * w, 16 * h])


@pytest.mark.parametrize("stride,scales,ratios", [(16, (8, 16, 32), (0.5, 1, 2)),
                                                  (8, (2, 5), (0.7, 1.3, 3.0))])
def test_anchors_and_plus1_decode_match_multiproposal(stride, scales, ratios):
    """MultiProposal with NMS disabled returns every decoded anchor sorted by score: give each
    (h, w, a) a unique score to recover the order, and compare with our anchors decoded by the
    +1 coder and clipped to [0, size - 1] like MultiProposal."""
    rng = np.random.RandomState(0)
    base = rpn_base_anchors(stride, scales, ratios)
    num_anchors, height, width = len(base), 12, 15
    n = height * width * num_anchors
    unique_scores = (rng.permutation(n).astype(np.float32) + 1) / (n + 1)
    cls_prob = np.zeros((1, 2 * num_anchors, height, width), np.float32)
    cls_prob[0, num_anchors:] = unique_scores.reshape(height, width, num_anchors).transpose(2, 0, 1)
    deltas_hwa = (rng.randn(height, width, num_anchors, 4) * 0.2).astype(np.float32)
    bbox_pred = deltas_hwa.reshape(height, width, num_anchors * 4).transpose(2, 0, 1)[None].copy()
    im_h, im_w = height * stride, width * stride
    rois, scores = mx.nd.contrib.MultiProposal(
        mx.nd.array(cls_prob), mx.nd.array(bbox_pred), mx.nd.array([[im_h, im_w, 1.0]]),
        rpn_pre_nms_top_n=n, rpn_post_nms_top_n=n, threshold=1.0, rpn_min_size=0, scales=scales,
        ratios=ratios, feature_stride=stride, output_score=True)
    order = np.argsort(-unique_scores, kind="stable")
    np.testing.assert_array_equal(scores.asnumpy()[:, 0], unique_scores[order])
    anchors = shift_anchors(base, height, width, stride)
    expected = decode_boxes(deltas_hwa.reshape(-1, 4), anchors, offset=1, clip_log=None)
    expected = np.clip(expected, 0, [im_w - 1, im_h - 1, im_w - 1, im_h - 1])
    np.testing.assert_allclose(rois.asnumpy()[:, 1:], expected[order], atol=1e-3)
    # zero deltas: the proposals are the (clipped) anchors themselves
    rois0 = mx.nd.contrib.MultiProposal(
        mx.nd.array(cls_prob), mx.nd.zeros(bbox_pred.shape), mx.nd.array([[im_h, im_w, 1.0]]),
        rpn_pre_nms_top_n=n, rpn_post_nms_top_n=n, threshold=1.0, rpn_min_size=0, scales=scales,
        ratios=ratios, feature_stride=stride)
    np.testing.assert_array_equal(rois0.asnumpy()[:, 1:],
                                  np.clip(anchors, 0, [im_w - 1, im_h - 1, im_w - 1, im_h - 1])[order])


def test_rpn_anchor_errors():
    with pytest.raises(ValueError, match="non-empty scales"):
        rpn_base_anchors(16, (), (1,))
    with pytest.raises(ValueError, match=r"\(A, 4\)"):
        shift_anchors(np.zeros((3, 5)), 2, 2, 16)


# ---------------------------------------------------------------- SSD / M2Det priors
M2DET_320 = dict(image_size=320, feature_sizes=[40, 20, 10, 5, 3, 1], steps=[8, 16, 32, 64, 107, 320],
                 pattern=[0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05])
M2DET_512 = dict(image_size=512, feature_sizes=[64, 32, 16, 8, 4, 2], steps=[8, 16, 32, 64, 128, 256],
                 pattern=[0.06, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05])


def m2det_priors(cfg, clip=True):
    min_sizes, max_sizes = sizes_from_pattern(cfg["image_size"], cfg["pattern"])
    return ssd_priors(cfg["image_size"], cfg["feature_sizes"], cfg["steps"], min_sizes, max_sizes,
                      [[2, 3]] * 6, clip=clip)


def test_m2det_prior_counts():
    assert m2det_priors(M2DET_320).shape == (12810, 4)
    assert m2det_priors(M2DET_512).shape == (32760, 4)
    assert m2det_priors(M2DET_320).dtype == np.float32


def test_m2det_priors_hand_computed():
    priors = m2det_priors(M2DET_320)
    c = 4 / 320  # first cell centre: (0 + 0.5) * 8 / 320
    s = 0.08
    s_prime = math.sqrt(0.08 * 0.15)
    r2, r3 = math.sqrt(2), math.sqrt(3)
    first_cell = [(s, s), (s_prime, s_prime), (s * r2, s / r2), (s / r2, s * r2), (s * r3, s / r3), (s / r3, s * r3)]
    for k, (w, h) in enumerate(first_cell):
        np.testing.assert_allclose(priors[k], [c - w / 2, c - h / 2, c + w / 2, c + h / 2], atol=1e-6)
    # second cell of layer 0 is x + 1 (order: y, x, k)
    np.testing.assert_allclose(priors[6], [12 / 320 - s / 2, c - s / 2, 12 / 320 + s / 2, c + s / 2], atol=1e-6)
    # layer 4 (3x3, step 107): cell (y=1, x=2) prior 0; corners may leave [0, 1] (centre-form clamp)
    start = 6 * (1600 + 400 + 100 + 25)
    cx, cy, s4 = 2.5 * 107 / 320, 1.5 * 107 / 320, 0.69
    np.testing.assert_allclose(priors[start + (1 * 3 + 2) * 6],
                               [cx - s4 / 2, cy - s4 / 2, cx + s4 / 2, cy + s4 / 2], atol=1e-6)
    # last prior: 1x1 layer, ratio 1/3: w = 0.87 / sqrt(3), h = 0.87 * sqrt(3) clamped to 1 (centre form)
    w = 0.87 / r3
    np.testing.assert_allclose(priors[-1], [0.5 - w / 2, 0.0, 0.5 + w / 2, 1.0], atol=1e-6)


@pytest.mark.parametrize("clip", [False, True])
def test_ssd_priors_match_gluoncv_anchor_generator(clip):
    cfg = M2DET_320
    ours = m2det_priors(cfg, clip=clip)
    min_sizes, max_sizes = sizes_from_pattern(cfg["image_size"], cfg["pattern"])
    expected = []
    for layer, (size, step) in enumerate(zip(cfg["feature_sizes"], cfg["steps"])):
        gen = SSDAnchorGenerator(layer, (320, 320), (min_sizes[layer], max_sizes[layer]),
                                 [1, 2, 0.5, 3, 1.0 / 3], step, alloc_size=(size, size), clip=clip)
        gen.initialize()
        centre = gen(mx.nd.zeros((1, 1, size, size))).asnumpy()[0] / 320.0
        expected.append(np.concatenate([centre[:, :2] - centre[:, 2:] / 2, centre[:, :2] + centre[:, 2:] / 2], 1))
    np.testing.assert_allclose(ours, np.concatenate(expected), atol=1e-5)


def test_ssd_priors_rectangular_and_errors():
    priors = ssd_priors((200, 400), [(2, 4)], [100], [50], [100], [[2]], clip=False)
    assert priors.shape == (2 * 4 * 4, 4)
    # cell (y=1, x=3): centre (350/400, 150/200), size 50 px -> 0.125 wide, 0.25 high
    np.testing.assert_allclose(priors[(1 * 4 + 3) * 4], [0.875 - 0.0625, 0.75 - 0.125, 0.875 + 0.0625, 0.875],
                               atol=1e-6)
    with pytest.raises(ValueError, match="one entry per layer"):
        ssd_priors(320, [40, 20], [8], [10, 20], [20, 30], [2])


# ---------------------------------------------------------------- TF-OD multiscale anchors
def test_multiscale_anchor_counts_and_lowest_layer():
    sizes = [16, 8, 4, 2, 1]
    anchors = multiscale_anchors(sizes)
    assert anchors.shape == ((16 * 16 * 3) + (64 + 16 + 4 + 1) * 6, 4)
    c = 0.5 / 16
    r2 = math.sqrt(2)
    # lowest layer: (0.1 @ 1), (0.2 @ 2), (0.2 @ 0.5); height = s / sqrt(a), width = s * sqrt(a)
    expected = [(0.1, 0.1), (0.2 * r2, 0.2 / r2), (0.2 / r2, 0.2 * r2)]
    for k, (w, h) in enumerate(expected):
        np.testing.assert_allclose(anchors[k], [c - w / 2, c - h / 2, c + w / 2, c + h / 2], atol=1e-6)
    # order (y, x, k): the next cell is x + 1
    np.testing.assert_allclose(anchors[3, [0, 2]], [1.5 / 16 - 0.05, 1.5 / 16 + 0.05], atol=1e-6)
    assert multiscale_anchors(sizes, reduce_lowest=False).shape == ((256 + 64 + 16 + 4 + 1) * 6, 4)


def test_multiscale_anchor_scales_and_interpolated_anchor():
    sizes = [16, 8, 4, 2, 1]
    anchors = multiscale_anchors(sizes, min_scale=0.2, max_scale=0.95)
    scales = [0.2 + 0.75 * i / 4 for i in range(5)] + [1.0]
    # layer 1 (8x8), cell (y=2, x=5): ratios 1, 2, 0.5, 3, 1/3 at scale s1, then sqrt(s1 * s2) @ 1
    start = 16 * 16 * 3
    cx, cy = 5.5 / 8, 2.5 / 8
    cell = anchors[start + (2 * 8 + 5) * 6: start + (2 * 8 + 5) * 6 + 6]
    specs = [(scales[1], a) for a in (1, 2, 0.5, 3, 1 / 3)] + [(math.sqrt(scales[1] * scales[2]), 1.0)]
    for box, (s, a) in zip(cell, specs):
        w, h = s * math.sqrt(a), s / math.sqrt(a)
        np.testing.assert_allclose(box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-6)
    # last layer (1x1): interpolated scale sqrt(0.95 * 1.0)
    s_last = math.sqrt(0.95)
    np.testing.assert_allclose(anchors[-1], [0.5 - s_last / 2] * 2 + [0.5 + s_last / 2] * 2, atol=1e-6)


def test_multiscale_anchors_non_square_image():
    anchors = multiscale_anchors([2], min_scale=0.3, image_size=(100, 200), reduce_lowest=False,
                                 aspect_ratios=(1.0,), interpolated_scale_aspect_ratio=0)
    # min(h, w) / w = 0.5 scales widths; heights unchanged; one layer: scale = min_scale
    np.testing.assert_allclose(anchors[0], [0.25 - 0.075, 0.25 - 0.15, 0.25 + 0.075, 0.25 + 0.15], atol=1e-6)
    assert anchors.shape == (4, 4)
