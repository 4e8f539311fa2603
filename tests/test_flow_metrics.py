"""lib.eval.flow (EPE, warped-feature cosine) and lib.flow_losses against hand-computed cases, numpy
reference code (bilinear warp, Charbonnier, finite differences) and feature maps shifted by a known flow."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from lib.eval.flow import cosine_map, end_point_error, inside_map, warp_alignment
from lib.flow_losses import charbonnier, epe_loss, flow_loss, photometric_loss, pool_to_grid, smoothness_loss


# ---------------------------------------------------------------- metrics

def test_end_point_error_hand_cases():
    flow = np.zeros((2, 3, 2))
    reference = np.zeros((2, 3, 2))
    reference[0, 0] = (3, 4)               # error 5
    reference[1, 2] = (1, 0)               # error 1
    assert end_point_error(flow, reference) == pytest.approx(6 / 6)
    mask = np.zeros((2, 3), bool)
    mask[0, 0] = mask[1, 2] = True
    assert end_point_error(flow, reference, mask) == pytest.approx(3.0)
    chw = reference.transpose(2, 0, 1)[None]                  # (N, 2, h, w) with axis=1
    assert end_point_error(np.zeros_like(chw), chw, mask[None], axis=1) == pytest.approx(3.0)
    assert math.isnan(end_point_error(flow, reference, np.zeros((2, 3), bool)))
    with pytest.raises(ValueError):
        end_point_error(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))


def features(*vectors):
    """(1, C, 1, len(vectors)) from per-position channel vectors."""
    return np.array(vectors, np.float64).T[None, :, None, :]


def test_cosine_hand_cases():
    a = features([1, 0, 0], [1, 1, 0], [1, 2, 2], [1, 0, 0], [0, 0, 0])
    b = features([0, 1, 0], [1, 0, 0], [2, 4, 4], [-3, 0, 0], [1, 1, 1])
    np.testing.assert_allclose(cosine_map(a, b)[0, 0], [0.0, 1 / math.sqrt(2), 1.0, -1.0, 0.0], atol=1e-12)


def test_warp_alignment_hand_case_one_pixel_shift():
    # reference: three positions with orthogonal features; neighbour: the same moved one to the right
    ref = features([1, 0, 0], [0, 1, 0], [0, 0, 1])
    neighbour = features([0, 0, 0], [1, 0, 0], [0, 1, 0])
    flow = np.zeros((1, 2, 1, 3))
    flow[:, 0] = 1.0                        # content at x is at x + 1 in the neighbour
    result = warp_alignment(ref, neighbour, flow)
    # the last position samples outside the map and is left out: positions 0 and 1 score 1 warped, 0 unwarped
    assert result["positions"] == 2
    assert result["cosine_warped"] == pytest.approx(1.0) and result["cosine_unwarped"] == pytest.approx(0.0)
    assert result["gain"] == pytest.approx(1.0)
    zero = warp_alignment(ref, neighbour, np.zeros_like(flow))
    assert zero["cosine_warped"] == pytest.approx(zero["cosine_unwarped"]) and zero["positions"] == 3


def test_feature_map_shifted_by_a_known_flow():
    rng = np.random.default_rng(0)
    ref = np.maximum(rng.normal(size=(2, 16, 20, 24)), 0)          # ReLU-like features: unwarped cosine ~0.5
    neighbour = np.roll(ref, (2, 3), axis=(2, 3))                  # content at (x, y) is at (x + 3, y + 2)
    flow = np.zeros((2, 2, 20, 24))
    flow[:, 0], flow[:, 1] = 3.0, 2.0
    result = warp_alignment(mx.nd.array(ref), mx.nd.array(neighbour), mx.nd.array(flow))
    assert result["positions"] == 2 * (20 - 2) * (24 - 3)
    assert result["cosine_warped"] == pytest.approx(1.0, abs=1e-5)
    assert result["cosine_unwarped"] < 0.7
    # a sub-pixel flow on a smooth map: bilinear warping still aligns far better than no flow
    ys, xs = np.mgrid[0:20, 0:24].astype(np.float64)
    channels = [np.sin(0.3 * xs + 0.2 * ys + k) + 1.5 for k in range(8)]
    smooth = np.stack(channels)[None]
    shifted = np.stack([np.sin(0.3 * (xs - 1.5) + 0.2 * (ys - 0.5) + k) + 1.5 for k in range(8)])[None]
    sub = np.zeros((1, 2, 20, 24))
    sub[:, 0], sub[:, 1] = 1.5, 0.5
    result = warp_alignment(smooth, shifted, sub)
    assert result["cosine_warped"] > 0.999 and result["cosine_warped"] - result["cosine_unwarped"] > 0.01
    # a mask restricts the positions
    mask = np.zeros((1, 20, 24), bool)
    mask[:, 5:10, 5:10] = True
    assert warp_alignment(smooth, shifted, sub, mask)["positions"] == 25


def test_inside_map_bounds():
    flow = np.zeros((1, 2, 3, 4))
    flow[0, 0, 0, 0] = -0.5      # x = -0.5: outside
    flow[0, 0, 0, 3] = 0.0       # x = 3 = w - 1: inside
    flow[0, 1, 2, 1] = 0.2       # y = 2.2 > h - 1: outside
    expected = np.ones((1, 3, 4), bool)
    expected[0, 0, 0] = expected[0, 2, 1] = False
    np.testing.assert_array_equal(inside_map(flow), expected)


# ---------------------------------------------------------------- losses (numpy references)

def bilinear_warp(image, flow):
    """numpy reference of flow_warp: image (C, h, w) sampled at (x + dx, y + dy), zeros outside."""
    channels, height, width = image.shape
    out = np.zeros_like(image, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            sx, sy = x + flow[0, y, x], y + flow[1, y, x]
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            for xi, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                for yi, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                    if 0 <= xi < width and 0 <= yi < height:
                        out[:, y, x] += wx * wy * image[:, yi, xi]
    return out


def numpy_photometric(first, second, flow, alpha=0.45, eps=1e-3):
    total, count = 0.0, 0
    for n in range(first.shape[0]):
        warped = bilinear_warp(second[n], flow[n])
        per = ((first[n] - warped) ** 2 + eps ** 2) ** alpha
        height, width = flow.shape[2:]
        ys, xs = np.mgrid[0:height, 0:width]
        x, y = xs + flow[n, 0], ys + flow[n, 1]
        inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        total += per.mean(axis=0)[inside].sum()
        count += inside.sum()
    return total / max(count, 1)


@pytest.fixture
def sample():
    rng = np.random.default_rng(1)
    first = rng.uniform(0, 1, size=(2, 3, 6, 7))
    second = rng.uniform(0, 1, size=(2, 3, 6, 7))
    flow = rng.uniform(-1.7, 1.7, size=(2, 2, 6, 7))
    target = rng.uniform(-2, 2, size=(2, 2, 6, 7))
    mask = (rng.uniform(size=(2, 6, 7)) > 0.3).astype(np.float64)
    return first, second, flow, target, mask


def nd(a):
    return mx.nd.array(a, dtype=np.float32)


def test_epe_loss_matches_numpy(sample):
    _, _, flow, target, mask = sample
    expected = (np.linalg.norm(flow - target, axis=1) * mask).sum() / mask.sum()
    assert float(epe_loss(nd(flow), nd(target), nd(mask)).asscalar()) == pytest.approx(expected, rel=1e-5)
    assert float(epe_loss(nd(flow), nd(target), nd(np.zeros_like(mask))).asscalar()) == 0.0


def test_photometric_loss_matches_numpy(sample):
    first, second, flow, _, _ = sample
    got = float(photometric_loss(nd(first), nd(second), nd(flow)).asscalar())
    assert got == pytest.approx(numpy_photometric(first, second, flow), rel=1e-4)
    # images at twice the flow's resolution are average-pooled to it
    big_first, big_second = (np.repeat(np.repeat(x, 2, axis=2), 2, axis=3) for x in (first, second))
    got_big = float(photometric_loss(nd(big_first), nd(big_second), nd(flow)).asscalar())
    assert got_big == pytest.approx(got, rel=1e-5)
    # the exact flow of a shifted image scores Charbonnier(0) = eps^(2 alpha); a wrong one more
    image = np.random.default_rng(2).uniform(size=(1, 3, 8, 9))
    shifted = np.roll(image, (1, 2), axis=(2, 3))
    exact = np.zeros((1, 2, 8, 9))
    exact[:, 0], exact[:, 1] = 2.0, 1.0
    exact_loss = float(photometric_loss(nd(image), nd(shifted), nd(exact)).asscalar())
    assert exact_loss == pytest.approx(1e-6 ** 0.45, rel=1e-3)
    assert float(photometric_loss(nd(image), nd(shifted), nd(np.zeros_like(exact))).asscalar()) > 0.1


def test_smoothness_loss_matches_numpy(sample):
    first, _, flow, _, _ = sample
    dx = np.abs(np.diff(flow, axis=3))
    dy = np.abs(np.diff(flow, axis=2))
    plain = dx.mean() + dy.mean()
    assert float(smoothness_loss(nd(flow)).asscalar()) == pytest.approx(plain, rel=1e-5)
    wx = np.exp(-10 * np.abs(np.diff(first, axis=3)).mean(axis=1, keepdims=True))
    wy = np.exp(-10 * np.abs(np.diff(first, axis=2)).mean(axis=1, keepdims=True))
    edge = (dx * wx).mean() + (dy * wy).mean()
    assert float(smoothness_loss(nd(flow), nd(first), 10.0).asscalar()) == pytest.approx(edge, rel=1e-5)
    assert float(smoothness_loss(nd(np.ones_like(flow))).asscalar()) == 0.0


def test_charbonnier_and_pooling():
    x = np.array([-2.0, 0.0, 0.5])
    np.testing.assert_allclose(charbonnier(nd(x), 0.45, 1e-3).asnumpy(), (x ** 2 + 1e-6) ** 0.45, rtol=1e-5)
    images = np.arange(2 * 1 * 5 * 6, dtype=np.float64).reshape(2, 1, 5, 6)
    pooled = pool_to_grid(nd(images), 4).asnumpy()
    assert pooled.shape == (2, 1, 2, 2)
    np.testing.assert_allclose(pooled[:, 0, 0, 0], images[:, 0, :4, :4].mean(axis=(1, 2)))
    np.testing.assert_allclose(pooled[:, 0, 1, 1], images[:, 0, 4:, 4:].mean(axis=(1, 2)))   # partial cell


def test_flow_loss_total_and_gradient_against_finite_differences(sample):
    first, second, flow, target, mask = sample
    weights = dict(photometric_weight=0.5, smoothness_weight=0.2)

    def total(values):
        return float(flow_loss(nd(values), nd(target), nd(mask), nd(first), nd(second), **weights)[0].asscalar())

    pred = nd(flow)
    pred.attach_grad()
    with autograd.record():
        loss, parts = flow_loss(pred, nd(target), nd(mask), nd(first), nd(second), **weights)
    loss.backward()
    expected = parts["epe"] + 0.5 * parts["photometric"] + 0.2 * parts["smoothness"]
    assert float(loss.asscalar()) == pytest.approx(expected, rel=1e-5)
    assert parts["photometric"] == pytest.approx(numpy_photometric(first, second, flow), rel=1e-4)
    grad = pred.grad.asnumpy()
    rng = np.random.default_rng(3)
    for _ in range(6):
        idx = tuple(int(rng.integers(s)) for s in flow.shape)
        step = np.zeros_like(flow)
        step[idx] = 1e-2
        numeric = (total(flow + step) - total(flow - step)) / 2e-2
        assert grad[idx] == pytest.approx(numeric, abs=2e-4), idx      # gradients are ~1e-2
    with pytest.raises(ValueError, match="both images"):
        flow_loss(nd(flow), nd(target), nd(mask), photometric_weight=1.0)
