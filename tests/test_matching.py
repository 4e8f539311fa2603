"""lib.matching: SSD matching against a loop reference and hand cases, SSD targets decoded back
with gluoncv's decoder, RPN anchor targets against the reference +1 algorithm (IoU by gluoncv),
R-CNN RoI sampling invariants."""
import mxnet as mx
import numpy as np
import pytest
from gluoncv.nn.coder import NormalizedBoxCenterDecoder
from gluoncv.utils.bbox import bbox_iou as gluoncv_iou
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.anchors import rpn_base_anchors, shift_anchors, ssd_priors
from lib.bbox import decode_boxes
from lib.matching import match_anchors, rpn_targets, sample_rois, ssd_targets


def random_boxes(rng, n, size):
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(size * 0.05, size * 0.4, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size)], axis=1)


def match_reference(gt, anchors, pos_iou, neg_iou):
    """Plain loops: threshold every anchor, then force each gt (in order) onto its best anchor."""
    iou = gluoncv_iou(anchors, gt) if len(gt) else np.zeros((len(anchors), 0))
    out = []
    for p in range(len(anchors)):
        if len(gt) == 0:
            out.append(-1)
            continue
        g = int(np.argmax(iou[p]))
        if iou[p, g] >= pos_iou:
            out.append(g)
        elif neg_iou is not None and iou[p, g] >= neg_iou:
            out.append(-2)
        else:
            out.append(-1)
    for g in range(len(gt)):
        p = int(np.argmax(iou[:, g]))
        if iou[p, g] > 0:
            out[p] = g
    return np.array(out)


# ---------------------------------------------------------------- SSD matching
def test_match_hand_cases():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60], [100, 100, 110, 110]], float)
    gt = np.array([[0, 0, 9, 9], [52, 52, 70, 70]], float)
    # gt0: IoU 0.81 with anchor 0 and 0.2025 with 1; gt1: best anchor 2 with IoU 64/424 (< 0.5): forced
    np.testing.assert_array_equal(match_anchors(gt, anchors, 0.5), [0, -1, 1, -1])
    np.testing.assert_array_equal(match_anchors(gt, anchors, 0.5, neg_iou=0.2), [0, -2, 1, -1])
    np.testing.assert_array_equal(match_anchors(np.zeros((0, 4)), anchors), [-1, -1, -1, -1])
    # two gts with the same best anchor: the later gt wins it
    same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    np.testing.assert_array_equal(match_anchors(same, anchors[:1]), [1])
    # a gt overlapping no anchor is not forced anywhere
    np.testing.assert_array_equal(match_anchors(np.array([[200, 200, 210, 210.0]]), anchors), [-1] * 4)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), num_gt=st.integers(0, 8), neg=st.sampled_from([None, 0.3, 0.4]))
def test_match_matches_loop_reference(seed, num_gt, neg):
    rng = np.random.RandomState(seed)
    anchors = random_boxes(rng, 120, 1.0)
    gt = random_boxes(rng, num_gt, 1.0)
    np.testing.assert_array_equal(match_anchors(gt, anchors, 0.5, neg), match_reference(gt, anchors, 0.5, neg))


def test_ssd_targets_decode_back_with_gluoncv():
    rng = np.random.RandomState(3)
    priors = ssd_priors(300, [10, 5, 3], [30, 60, 100], [30, 90, 150], [90, 150, 240], [[2]] * 3, clip=False)
    gt = random_boxes(rng, 5, 1.0)
    labels = np.array([0, 3, 1, 1, 2])
    cls, box = ssd_targets(gt, labels, priors, pos_iou=0.5, stds=(0.1, 0.1, 0.2, 0.2))
    matches = match_reference(gt, priors.astype(np.float64), 0.5, None)
    np.testing.assert_array_equal(cls, np.where(matches >= 0, labels[np.maximum(matches, 0)] + 1, 0))
    assert set(np.unique(matches[matches >= 0])) == set(range(5))  # every gt has an anchor
    decoder = NormalizedBoxCenterDecoder(stds=(0.1, 0.1, 0.2, 0.2), convert_anchor=True)
    decoded = decoder(mx.nd.array(box[None]), mx.nd.array(priors[None])).asnumpy()[0]
    pos = cls > 0
    np.testing.assert_allclose(decoded[pos], gt[matches[pos]], atol=1e-5)
    assert np.all(box[~pos] == 0)
    # no gt: everything background
    cls0, box0 = ssd_targets(np.zeros((0, 4)), np.zeros(0), priors)
    assert np.all(cls0 == 0) and np.all(box0 == 0)
    # ignore band
    cls_ign, _ = ssd_targets(gt, labels, priors, neg_iou=0.4)
    assert np.any(cls_ign == -1) and np.array_equal(cls_ign > 0, pos)
    with pytest.raises(ValueError, match="5 gt boxes but 4 labels"):
        ssd_targets(gt, labels[:4], priors)


# ---------------------------------------------------------------- RPN targets
def rpn_reference_labels(anchors_incl, gt_excl, im_hw, pos_iou, neg_iou, allowed_border):
    """The reference assign_anchor before sampling, in MXNet's +1 convention (IoU by gluoncv, offset 1)."""
    h, w = im_hw
    inside = np.flatnonzero((anchors_incl[:, 0] >= -allowed_border) & (anchors_incl[:, 1] >= -allowed_border)
                            & (anchors_incl[:, 2] < w + allowed_border) & (anchors_incl[:, 3] < h + allowed_border))
    labels = np.full(len(anchors_incl), -1)
    gt_incl = gt_excl - [0, 0, 1, 1]
    iou = gluoncv_iou(anchors_incl[inside].astype(np.float64), gt_incl, offset=1)
    max_iou = iou.max(axis=1)
    sub = np.full(len(inside), -1)
    sub[max_iou < neg_iou] = 0
    gt_max = iou.max(axis=0)
    sub[np.where(iou == gt_max)[0]] = 1
    sub[max_iou >= pos_iou] = 1
    labels[inside] = sub
    return labels, inside, iou


@pytest.mark.parametrize("allowed_border", [0, 40])
def test_rpn_targets_labels_match_reference_and_targets_decode_to_gt(allowed_border):
    rng = np.random.RandomState(4)
    im_hw = (320, 480)
    anchors = shift_anchors(rpn_base_anchors(16, (2, 4, 8), (0.5, 1, 2)), 20, 30, 16)
    gt = np.round(random_boxes(rng, 6, 300.0))
    labels, targets, weights = rpn_targets(anchors, gt, im_hw, batch_size=10 ** 6, fg_fraction=1.0,
                                           allowed_border=allowed_border, stds=(0.1, 0.1, 0.4, 0.4), rng=rng)
    ref, inside, iou = rpn_reference_labels(anchors.astype(np.float64), gt, im_hw, 0.7, 0.3, allowed_border)
    np.testing.assert_array_equal(labels, ref)
    pos = np.flatnonzero(labels == 1)
    assert len(pos) >= len(gt)
    assert np.all(weights[pos] == 1) and np.all(weights[labels != 1] == 0) and np.all(targets[labels != 1] == 0)
    # decoding the targets the way MultiProposal does (+1 convention) gives the gt's inclusive corners
    assigned = iou.argmax(axis=1)[np.searchsorted(inside, pos)]
    decoded = decode_boxes(targets[pos], anchors[pos], stds=(0.1, 0.1, 0.4, 0.4), offset=1)
    np.testing.assert_allclose(decoded, gt[assigned] - [0, 0, 1, 1], atol=1e-3)


def test_rpn_targets_sampling_budget_and_determinism():
    rng_boxes = np.random.RandomState(5)
    im_hw = (600, 800)
    anchors = shift_anchors(rpn_base_anchors(), 38, 50, 16)
    gt = random_boxes(rng_boxes, 40, 550.0)  # many gts: more than 128 positives before sampling
    full, _, _ = rpn_targets(anchors, gt, im_hw, batch_size=10 ** 6, fg_fraction=1.0, rng=np.random.RandomState(0))
    assert (full == 1).sum() > 128
    labels, _, weights = rpn_targets(anchors, gt, im_hw, rng=np.random.RandomState(1))
    assert (labels == 1).sum() == 128 and (labels == 0).sum() == 128
    assert np.all(full[labels == 1] == 1) and np.all(full[labels == 0] == 0)  # sampled from the right pools
    assert weights.sum() == 4 * 128
    again, _, _ = rpn_targets(anchors, gt, im_hw, rng=np.random.RandomState(1))
    other, _, _ = rpn_targets(anchors, gt, im_hw, rng=np.random.RandomState(2))
    np.testing.assert_array_equal(labels, again)
    assert not np.array_equal(labels, other)


def test_rpn_targets_without_gt_and_without_inside_anchors():
    anchors = shift_anchors(rpn_base_anchors(16, (1, 2), (1,)), 10, 10, 16)
    labels, targets, weights = rpn_targets(anchors, np.zeros((0, 4)), (160, 160), batch_size=64,
                                           rng=np.random.RandomState(0))
    assert (labels == 0).sum() == 64 and (labels == 1).sum() == 0 and np.all(weights == 0)
    # a gt overlapping no anchor marks no positive (not every IoU-0 anchor)
    far = shift_anchors(rpn_base_anchors(16, (1,), (1,)), 4, 4, 16)
    labels, _, _ = rpn_targets(far, np.array([[200, 200, 210, 210.0]]), (64, 64), rng=np.random.RandomState(0))
    assert (labels == 1).sum() == 0 and (labels == 0).sum() == 16
    huge = shift_anchors(rpn_base_anchors(16, (64,), (1,)), 2, 2, 16)
    labels, _, _ = rpn_targets(huge, np.array([[0, 0, 10, 10.0]]), (32, 32))
    assert np.all(labels == -1)


# ---------------------------------------------------------------- R-CNN sampling
def test_sample_rois_keep_all():
    rng = np.random.RandomState(6)
    gt = random_boxes(rng, 4, 400.0)
    gt_labels = np.array([2, 0, 1, 4])
    rois = np.concatenate([gt + rng.randn(4, 4) * 3, random_boxes(rng, 60, 400.0)])
    out_rois, labels, targets, weights = sample_rois(rois, gt, gt_labels, batch_size=-1,
                                                     stds=(0.1, 0.1, 0.2, 0.2), rng=rng)
    all_rois = np.concatenate([rois, gt])
    assert len(out_rois) == len(all_rois)  # bg range [0, 0.5) and fg >= 0.5 cover every roi
    iou = gluoncv_iou(out_rois.astype(np.float64), gt)
    fg = labels > 0
    np.testing.assert_array_equal(fg, iou.max(axis=1) >= 0.5)
    assert fg.sum() >= 8  # the gts themselves plus the jittered copies
    np.testing.assert_array_equal(labels[fg], gt_labels[iou[fg].argmax(axis=1)] + 1)
    assert np.all(fg[:fg.sum()])  # foregrounds first
    decoded = decode_boxes(targets[fg], out_rois[fg], stds=(0.1, 0.1, 0.2, 0.2))
    np.testing.assert_allclose(decoded, gt[iou[fg].argmax(axis=1)], atol=1e-2)
    assert np.all(weights[fg] == 1) and np.all(weights[~fg] == 0) and np.all(targets[~fg] == 0)


def test_sample_rois_fixed_batch_fraction_ranges_and_padding():
    rng = np.random.RandomState(7)
    gt = random_boxes(rng, 3, 400.0)
    rois = np.concatenate([np.repeat(gt, 20, axis=0) + rng.randn(60, 4) * 2, random_boxes(rng, 200, 400.0)])
    out_rois, labels, _, _ = sample_rois(rois, gt, [0, 1, 2], batch_size=64, fg_fraction=0.25,
                                         bg_iou=(0.1, 0.5), rng=rng)
    assert len(out_rois) == 64 and (labels > 0).sum() == 16
    iou = gluoncv_iou(out_rois.astype(np.float64), gt).max(axis=1)
    assert np.all(iou[labels > 0] >= 0.5)
    bg_iou = iou[labels == 0]
    assert np.all(bg_iou < 0.5) and np.all(bg_iou >= 0.1)
    # too few candidates: padded to the batch size with low-IoU rois labelled background
    few = np.concatenate([gt[:1] + 1, [[300, 300, 320, 320]]])
    out_rois, labels, _, weights = sample_rois(few, gt[:1], [0], batch_size=16, rng=rng)
    assert len(out_rois) == 16 and (labels > 0).sum() == 2 and weights.sum() == 8
    # no gt at all: everything background
    out_rois, labels, targets, _ = sample_rois(rois[:30], np.zeros((0, 4)), [], batch_size=8, rng=rng)
    assert len(out_rois) == 8 and np.all(labels == 0) and np.all(targets == 0)
    with pytest.raises(ValueError, match="3 gt boxes but 2 labels"):
        sample_rois(rois, gt, [0, 1])
