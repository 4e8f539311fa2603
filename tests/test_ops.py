"""lib.ops: the compiled operators against MXNet's own built-ins (1.9.1 has CPU kernels for
MultiProposal, PSROIPooling, BilinearSampler, GridGenerator and depth_to_space), a numpy reference of PSROIPooling,
finite differences and hand-computed cases; plus hybridize / export / fork / error behaviour."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.base import MXNetError

from lib import ops

RTOL = ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def loaded_library():
    return ops.load()


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def fwd_bwd(fn, inputs, head_grad):
    """Forward + backward with a given head gradient; returns output and input gradients."""
    arrays = [mx.nd.array(x, dtype=x.dtype) for x in inputs]
    for a in arrays:
        a.attach_grad()
    with autograd.record():
        out = fn(*arrays)
    out.backward(mx.nd.array(head_grad, dtype=head_grad.dtype))
    return out.asnumpy(), [a.grad.asnumpy() for a in arrays]


# ---------------------------------------------------------------------------------- flow_warp

def builtin_warp(data, flow):
    return mx.nd.BilinearSampler(data, mx.nd.GridGenerator(flow, transform_type="warp"))


def ours_warp(data, flow):
    return ops.flow_warp(data, flow)


@pytest.mark.parametrize("shape,flow_scale,dtype", [
    ((2, 5, 7, 9), 2.0, np.float32),      # batch 2, non-square
    ((1, 3, 12, 5), 8.0, np.float32),     # flows pointing well outside the image
    ((3, 2, 6, 6), 0.7, np.float64),
])
def test_flow_warp_matches_builtin(shape, flow_scale, dtype):
    rng = np.random.RandomState(sum(shape))
    n, c, h, w = shape
    data = rng.randn(*shape).astype(dtype) * 10
    flow = (rng.randn(n, 2, h, w) * flow_scale).astype(dtype)
    head = rng.randn(*shape).astype(dtype)
    out, (gd, gf) = fwd_bwd(ours_warp, [data, flow], head)
    # MXNet's GridGenerator is float32 only: the float64 kernel is checked against it in float32
    f32 = [x.astype(np.float32) for x in (data, flow, head)]
    ref, (rgd, rgf) = fwd_bwd(builtin_warp, f32[:2], f32[2])
    tol = RTOL if dtype == np.float32 else 1e-4
    close(out, ref, tol, tol)
    close(gd, rgd, tol, tol)
    close(gf, rgf, tol, 1e-4)  # sums over channels of values ~10


def test_flow_warp_integer_and_outside_flows():
    rng = np.random.RandomState(1)
    data = rng.randn(1, 4, 5, 8).astype(np.float32)
    flow = rng.randint(-3, 4, size=(1, 2, 5, 8)).astype(np.float32)  # exactly on pixels
    flow[0, 0, 0, :] = 100.0   # whole first row samples far outside
    flow[0, 1, 1, :] = -50.0
    head = rng.randn(1, 4, 5, 8).astype(np.float32)
    out, (gd, gf) = fwd_bwd(ours_warp, [data, flow], head)
    ref, (rgd, rgf) = fwd_bwd(builtin_warp, [data, flow], head)
    close(out, ref)
    close(gd, rgd)
    close(gf, rgf)
    assert np.all(out[0, :, 0, :] == 0) and np.all(out[0, :, 1, :] == 0)
    # integer flow: plain shift, hand-checkable
    y, x = 3, 2
    sy, sx = y + int(flow[0, 1, y, x]), x + int(flow[0, 0, y, x])
    expected = data[0, :, sy, sx] if 0 <= sy < 5 and 0 <= sx < 8 else np.zeros(4)
    close(out[0, :, y, x], expected)


def test_flow_warp_one_pixel_wide_map():
    """Width 1: MXNet's normalisation divides by zero (NaN); ours samples at y + dy."""
    data = np.arange(2 * 4, dtype=np.float32).reshape(1, 2, 4, 1)
    flow = np.zeros((1, 2, 4, 1), np.float32)
    flow[0, 1] = 0.5  # half a pixel down
    out = ops.flow_warp(mx.nd.array(data), mx.nd.array(flow)).asnumpy()
    expected = 0.5 * data + 0.5 * np.concatenate([data[:, :, 1:], np.zeros((1, 2, 1, 1))], 2)
    close(out, expected)


def test_flow_warp_flow_gradient_finite_differences():
    rng = np.random.RandomState(2)
    shape = (1, 3, 6, 7)
    data = rng.randn(*shape)
    # fractional parts in [0.2, 0.8]: +-eps never crosses an integer sample point
    flow = rng.randint(-2, 3, size=(1, 2, 6, 7)) + rng.uniform(0.2, 0.8, size=(1, 2, 6, 7))
    head = rng.randn(*shape)
    _, (gd, gf) = fwd_bwd(ours_warp, [data, flow], head)

    def loss(d, f):
        return float((ours_warp(mx.nd.array(d, dtype=np.float64),
                                mx.nd.array(f, dtype=np.float64)).asnumpy() * head).sum())

    eps = 1e-6
    for idx in [(0, 0, 1, 2), (0, 1, 3, 3), (0, 0, 5, 6), (0, 1, 0, 0), (0, 0, 2, 4)]:
        fp, fm = flow.copy(), flow.copy()
        fp[idx] += eps
        fm[idx] -= eps
        numeric = (loss(data, fp) - loss(data, fm)) / (2 * eps)
        assert abs(numeric - gf[idx]) <= 1e-6 + 1e-6 * abs(numeric), (idx, numeric, gf[idx])
    # the output is linear in data: the data gradient is exact
    idx = (0, 1, 2, 3)
    dp = data.copy()
    dp[idx] += 1.0
    assert abs((loss(dp, flow) - loss(data, flow)) - gd[idx]) < 1e-9


# ----------------------------------------------------------------------------- flow_aggregate

def numpy_warp(data, flow):
    """Bilinear sample of data (N,C,H,W) at (x + dx, y + dy), zeros outside, in numpy float64."""
    n, c, h, w = data.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros(data.shape, np.float64)
    for i in range(n):
        sx, sy = xx + flow[i, 0], yy + flow[i, 1]
        x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
        for cx, cy, wgt in ((x0, y0, (x0 + 1 - sx) * (y0 + 1 - sy)), (x0 + 1, y0, (sx - x0) * (y0 + 1 - sy)),
                            (x0, y0 + 1, (x0 + 1 - sx) * (sy - y0)), (x0 + 1, y0 + 1, (sx - x0) * (sy - y0))):
            inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            out[i] += np.where(inside, data[i][:, np.clip(cy, 0, h - 1), np.clip(cx, 0, w - 1)] * wgt, 0.0)
    return out


def numpy_aggregate(key_cache, caches, flows, feat_channels, scale=1.0, quality=False):
    """FGFA's aggregation in numpy float64 (the oracle of the float64 kernel)."""
    def normalize(x):
        return x / np.sqrt((x ** 2).sum(axis=1, keepdims=True) + 1e-10)
    end = -1 if quality else None
    key = normalize(key_cache[:, feat_channels:end].astype(np.float64))
    warped = [numpy_warp(c.astype(np.float64), f.astype(np.float64)) for c, f in zip(caches, flows)]
    cosine = scale * np.stack([(normalize(w[:, feat_channels:end]) * key).sum(axis=1) for w in warped], axis=1)
    if quality:
        cosine = cosine + np.stack([w[:, -1] for w in warped], axis=1)
    weights = np.exp(cosine - cosine.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    out = sum(w[:, :feat_channels] * weights[:, t:t + 1] for t, w in enumerate(warped))
    return out, weights


def composite_aggregate(key_cache, caches, flows, feat_channels, scale=1.0, quality=False):
    """FGFA's aggregation from MXNet built-ins only (the oracle of the fused kernel; float32: MXNet's
    L2Normalization has no float64 CPU kernel, so float64 inputs use numpy_aggregate)."""
    if key_cache.dtype == np.float64:
        return numpy_aggregate(key_cache, caches, flows, feat_channels, scale, quality)
    nd = mx.nd
    end = key_cache.shape[1] - 1 if quality else None
    key = nd.L2Normalization(nd.array(key_cache)[:, feat_channels:end], mode="channel")
    warped = [builtin_warp(nd.array(c), nd.array(f)) for c, f in zip(caches, flows)]
    cosine = nd.stack(*[(nd.L2Normalization(w[:, feat_channels:end], mode="channel") * key).sum(axis=1)
                        for w in warped], axis=1)                                   # (N,T,h,w)
    logits = cosine * scale
    if quality:
        logits = logits + nd.stack(*[w[:, -1] for w in warped], axis=1)
    weights = nd.softmax(logits, axis=1)
    out = sum(w[:, :feat_channels] * weights[:, t:t + 1] for t, w in enumerate(warped))
    return out.asnumpy(), weights.asnumpy()


def fused_aggregate(key, caches, flows, feat_channels, dtype, channels_last, **kwargs):
    """ops.flow_aggregate on numpy (N, C+E, h, w) caches, laid out channels-last when asked."""
    layout = (lambda x: x.transpose(0, 2, 3, 1).copy()) if channels_last else (lambda x: x)
    return ops.flow_aggregate(mx.nd.array(layout(key), dtype=dtype),
                              [mx.nd.array(layout(x), dtype=dtype) for x in caches],
                              [mx.nd.array(x, dtype=dtype) for x in flows], feat_channels=feat_channels,
                              channels_last=channels_last, **kwargs)


@pytest.mark.parametrize("n,c,e,h,w,frames,flow_scale,dtype", [
    (1, 6, 5, 7, 9, 5, 2.0, np.float32),    # non-square, window of 5
    (2, 3, 4, 5, 6, 3, 6.0, np.float32),    # batch 2, flows pointing well outside the map
    (1, 4, 3, 6, 6, 1, 1.0, np.float64),    # a single frame: weight 1 everywhere
    (1, 5, 3, 6, 7, 4, 2.0, np.float64),
    (2, 40, 24, 13, 15, 5, 3.0, np.float32),  # large enough for the OpenMP paths (2 threads)
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_flow_aggregate_equals_composite_of_builtins(n, c, e, h, w, frames, flow_scale, dtype, channels_last):
    rng = np.random.RandomState(n * 100 + frames)
    key = rng.randn(n, c + e, h, w).astype(dtype)
    caches = [key] + [rng.randn(n, c + e, h, w).astype(dtype) for _ in range(frames - 1)]
    flows = [np.zeros((n, 2, h, w), dtype)] + [(rng.randn(n, 2, h, w) * flow_scale).astype(dtype)
                                              for _ in range(frames - 1)]
    out, weights = fused_aggregate(key, caches, flows, c, dtype, channels_last)
    ref_out, ref_weights = composite_aggregate(key, caches, flows, c)
    assert out.shape == (n, c, h, w) and weights.shape == (n, frames, h, w) and out.dtype == dtype
    close(out.asnumpy(), ref_out)
    close(weights.asnumpy(), ref_weights)
    close(weights.asnumpy().sum(axis=1), np.ones((n, h, w)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [0.5, 7.0])
def test_flow_aggregate_scale_sharpens_the_weights_as_the_composite(scale, channels_last, dtype):
    rng = np.random.RandomState(3)
    n, c, e, h, w, frames = 1, 4, 6, 5, 7, 3
    key = rng.randn(n, c + e, h, w).astype(dtype)
    caches = [key] + [rng.randn(n, c + e, h, w).astype(dtype) for _ in range(frames - 1)]
    flows = [np.zeros((n, 2, h, w), dtype)] + [(rng.randn(n, 2, h, w) * 2).astype(dtype) for _ in range(frames - 1)]
    out, weights = fused_aggregate(key, caches, flows, c, dtype, channels_last, scale=scale)
    ref_out, ref_weights = composite_aggregate(key, caches, flows, c, scale)
    close(out.asnumpy(), ref_out)
    close(weights.asnumpy(), ref_weights)
    plain = fused_aggregate(key, caches, flows, c, dtype, channels_last)[1].asnumpy()
    # the key frame (cosine 1, the largest) gains weight when the scale grows, loses it when it shrinks
    assert ((weights.asnumpy()[:, 0] > plain[:, 0]) == (scale > 1)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_flow_aggregate_quality_channel_adds_each_frames_logit(scale, channels_last, dtype):
    rng = np.random.RandomState(5)
    n, c, e, h, w, frames = 2, 3, 5, 6, 7, 3
    caches = [rng.randn(n, c + e + 1, h, w).astype(dtype) for _ in range(frames)]
    for cache in caches:
        cache[:, -1] *= 3      # logits large enough to move the weights
    key = caches[1]
    flows = [(rng.randn(n, 2, h, w) * 2).astype(dtype) for _ in range(frames)]
    flows[1][:] = 0
    out, weights = fused_aggregate(key, caches, flows, c, dtype, channels_last, scale=scale, quality=True)
    ref_out, ref_weights = composite_aggregate(key, caches, flows, c, scale, quality=True)
    close(out.asnumpy(), ref_out)
    close(weights.asnumpy(), ref_weights)
    # the same caches without the quality flag: the last channel is then one more embedding channel
    _, plain = fused_aggregate(key, caches, flows, c, dtype, channels_last, scale=scale)
    close(plain.asnumpy(), composite_aggregate(key, caches, flows, c, scale)[1])
    assert np.abs(plain.asnumpy() - weights.asnumpy()).max() > 0.05


def test_flow_aggregate_channels_last_sums_features_in_the_same_order():
    # only the embedding dot products are summed in another order: with one frame (weight 1) the
    # aggregated feature is the warped feature, bit for bit the planar kernel's
    rng = np.random.RandomState(7)
    cache = rng.randn(1, 40, 9, 11).astype(np.float32)
    flow = (rng.randn(1, 2, 9, 11) * 3).astype(np.float32)
    planar, _ = ops.flow_aggregate(mx.nd.array(cache), [mx.nd.array(cache)], [mx.nd.array(flow)], feat_channels=24)
    last = ops.channels_last([mx.nd.array(cache[:, :24]), mx.nd.array(cache[:, 24:])])
    pixels, _ = ops.flow_aggregate(last, [last], [mx.nd.array(flow)], feat_channels=24, channels_last=True)
    np.testing.assert_array_equal(pixels.asnumpy(), planar.asnumpy())
    close(pixels.asnumpy(), builtin_warp(mx.nd.array(cache[:, :24]), mx.nd.array(flow)).asnumpy())


def test_flow_aggregate_hand_computed():
    # two frames, one pixel moved by an integer flow: embeddings identical to the key's -> cosine 1
    # for both, equal weights; the second frame's feature is read one pixel to the right.
    key = np.zeros((1, 2, 1, 3), np.float32)
    key[0, 0] = [1, 2, 3]          # feature
    key[0, 1] = [1, 1, 1]          # embedding
    other = key.copy()
    other[0, 0] = [10, 20, 30]
    flow = np.zeros((1, 2, 1, 3), np.float32)
    flow[0, 0] = 1.0               # dx = +1: pixel x reads x + 1 (x = 2 reads outside: 0)
    out, weights = ops.flow_aggregate(mx.nd.array(key), [mx.nd.array(key), mx.nd.array(other)],
                                      [mx.nd.zeros((1, 2, 1, 3)), mx.nd.array(flow)], feat_channels=1)
    # at x = 2 the warped embedding is 0: cosine 0 vs 1 for the key frame
    w_key = np.exp(1) / (np.exp(1) + np.exp(0))
    close(weights.asnumpy()[0, :, 0], [[0.5, 0.5, w_key], [0.5, 0.5, 1 - w_key]])
    close(out.asnumpy()[0, 0, 0], [0.5 * 1 + 0.5 * 20, 0.5 * 2 + 0.5 * 30, w_key * 3 + (1 - w_key) * 0])
    # scale 3: cosines 1 and 0 become 3 and 0 at x = 2; equal cosines stay equal weights
    _, weights = ops.flow_aggregate(mx.nd.array(key), [mx.nd.array(key), mx.nd.array(other)],
                                    [mx.nd.zeros((1, 2, 1, 3)), mx.nd.array(flow)], feat_channels=1, scale=3.0)
    w_key = np.exp(3) / (np.exp(3) + 1)
    close(weights.asnumpy()[0, :, 0], [[0.5, 0.5, w_key], [0.5, 0.5, 1 - w_key]])


def test_flow_aggregate_errors():
    nd = mx.nd
    good = nd.zeros((1, 5, 4, 6))
    flow = nd.zeros((1, 2, 4, 6))
    raises(lambda: ops.flow_aggregate(good, [good, nd.zeros((1, 5, 4, 7))], [flow, flow], feat_channels=3),
           "cache_1 has shape (1, 5, 4, 7)")
    raises(lambda: ops.flow_aggregate(good, [good], [nd.zeros((1, 3, 4, 6))], feat_channels=3),
           "flow_0 has shape (1, 3, 4, 6), needs (N, 2, h, w)")
    raises(lambda: ops.flow_aggregate(good, [good], [flow], feat_channels=5), "needs feat_channels (5) + at least")
    last = nd.zeros((1, 4, 6, 5))    # channels last: h = 4, w = 6, 5 channels
    raises(lambda: ops.flow_aggregate(last, [last], [nd.zeros((1, 2, 6, 5))], feat_channels=3, channels_last=True),
           "flow_0 has shape (1, 2, 6, 5), needs (N, 2, h, w) = (1, 2, 4, 6)")
    raises(lambda: ops.flow_aggregate(last, [last], [flow], feat_channels=5, channels_last=True),
           "5 channels (N, h, w, C+E) (channels_last)", "needs feat_channels (5)")
    with pytest.raises(ValueError, match="as many flows as caches"):
        ops.flow_aggregate(good, [good, good], [flow], feat_channels=3)
    raises(lambda: ops.flow_aggregate(good, [good], [flow], feat_channels=3, scale=0.0), "scale must be a finite number > 0")
    raises(lambda: ops.flow_aggregate(good, [good], [flow], feat_channels=4, quality=True),
           "needs feat_channels (4) + at least one embedding channel + the quality channel")
    key = good.copy()
    key.attach_grad()
    with autograd.record():
        out, _ = ops.flow_aggregate(key, [key], [flow], feat_channels=3)
    with pytest.raises(MXNetError, match="no gradient"):
        out.backward()
        mx.nd.waitall()


# ------------------------------------------------------------------------------ psroi_pooling

def psroi_numpy(data, rois, spatial_scale, output_dim, pooled_size, group_size):
    """Reference forward written from the R-FCN definition (float32 arithmetic like MXNet)."""
    f32 = np.float32
    _, _, height, width = data.shape
    out = np.zeros((len(rois), output_dim, pooled_size, pooled_size), np.float32)
    for r, roi in enumerate(rois.astype(np.float32)):
        b = int(roi[0])
        start_w, start_h = f32(np.round(roi[1])) * f32(spatial_scale), f32(np.round(roi[2])) * f32(spatial_scale)
        end_w = f32(np.round(roi[3]) + 1) * f32(spatial_scale)
        end_h = f32(np.round(roi[4]) + 1) * f32(spatial_scale)
        bin_w = f32(max(end_w - start_w, 0.1)) / f32(pooled_size)
        bin_h = f32(max(end_h - start_h, 0.1)) / f32(pooled_size)
        for c in range(output_dim):
            for i in range(pooled_size):
                for j in range(pooled_size):
                    hs = min(max(int(np.floor(f32(i) * bin_h + start_h)), 0), height)
                    he = min(max(int(np.ceil(f32(i + 1) * bin_h + start_h)), 0), height)
                    ws = min(max(int(np.floor(f32(j) * bin_w + start_w)), 0), width)
                    we = min(max(int(np.ceil(f32(j + 1) * bin_w + start_w)), 0), width)
                    gi = min(int(np.floor(f32(i) * group_size / pooled_size)), group_size - 1)
                    gj = min(int(np.floor(f32(j) * group_size / pooled_size)), group_size - 1)
                    channel = (c * group_size + gi) * group_size + gj
                    if he > hs and we > ws:
                        out[r, c, i, j] = data[b, channel, hs:he, ws:we].mean()
    return out


def edge_rois(rng, n_images, count, img_h, img_w):
    """Random rois plus the edge cases: partly / wholly outside, zero-size, tiny, inverted."""
    x1 = rng.uniform(-40, img_w, count)
    y1 = rng.uniform(-40, img_h, count)
    rois = np.stack([rng.randint(0, n_images, count), x1, y1,
                     x1 + rng.uniform(0, img_w / 2, count), y1 + rng.uniform(0, img_h / 2, count)], 1)
    special = np.array([
        [0, -100, -80, -20, -10],                      # wholly outside (top-left)
        [n_images - 1, img_w + 30, 5, img_w + 90, 60],  # wholly outside (right)
        [0, -30, -30, 40, 50],                          # partly outside
        [n_images - 1, 50, 40, 50, 40],                 # zero size
        [0, 33.4, 21.6, 34.2, 22.1],                    # tiny
        [n_images - 1, 80, 60, 70, 50],                 # inverted corners
        [0, 0, 0, img_w - 1, img_h - 1],                # the whole image
        [n_images - 1, 3, 100, 200, 101],               # one row: many empty bins
    ], np.float64)
    return np.concatenate([rois, special]).astype(np.float32)


@pytest.mark.parametrize("n_images,output_dim,pooled,group,hw,scale", [
    (2, 3, 3, 3, (10, 13), 1 / 16),    # batch 2, non-square
    (1, 2, 4, 2, (9, 9), 1 / 8),       # group_size != pooled_size
    (3, 4, 7, 7, (6, 11), 1 / 16),     # FGFA's 7x7 bins on a small map
])
def test_psroi_pooling_matches_builtin(n_images, output_dim, pooled, group, hw, scale):
    rng = np.random.RandomState(output_dim * 10 + pooled)
    h, w = hw
    data = (rng.randn(n_images, output_dim * group * group, h, w) * 100).astype(np.float32)
    rois = edge_rois(rng, n_images, 25, h / scale, w / scale)
    attrs = dict(spatial_scale=scale, output_dim=output_dim, pooled_size=pooled, group_size=group)
    head = rng.randn(len(rois), output_dim, pooled, pooled).astype(np.float32)
    out, (gd, gr) = fwd_bwd(lambda d, r: ops.psroi_pooling(d, r, **attrs), [data, rois], head)
    ref, (rgd, rgr) = fwd_bwd(lambda d, r: mx.nd.contrib.PSROIPooling(d, r, **attrs), [data, rois], head)
    close(out, ref)
    close(gd, rgd)
    assert np.all(gr == 0) and np.all(rgr == 0)
    close(out, psroi_numpy(data, rois, **attrs), rtol=1e-5, atol=1e-4)
    assert np.all(out[len(rois) - 8] == 0)  # wholly outside: every bin empty


def test_psroi_pooling_hand_computed():
    data = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    rois = np.array([[0, 0, 0, 63, 63]], np.float32)  # whole 4x4 map at scale 1/16
    out = ops.psroi_pooling(mx.nd.array(data), mx.nd.array(rois), spatial_scale=1 / 16,
                            output_dim=2, pooled_size=1).asnumpy()
    close(out.ravel(), [data[0, 0].mean(), data[0, 1].mean()])
    # 2x2 bins with group 2: bin (i, j) averages channel i * 2 + j over its 2x2 quadrant
    data = np.arange(4 * 4 * 4, dtype=np.float32).reshape(1, 4, 4, 4)
    out = ops.psroi_pooling(mx.nd.array(data), mx.nd.array(rois), spatial_scale=1 / 16,
                            output_dim=1, pooled_size=2).asnumpy()
    expected = [[data[0, 0, :2, :2].mean(), data[0, 1, :2, 2:].mean()],
                [data[0, 2, 2:, :2].mean(), data[0, 3, 2:, 2:].mean()]]
    close(out[0, 0], expected)


def test_psroi_builtin_cpu_kernel_is_real():
    """MXNet 1.9.1's CPU PSROIPooling is implemented (older releases had an empty stub)."""
    rng = np.random.RandomState(5)
    data = rng.randn(1, 2 * 9, 5, 6).astype(np.float32)
    rois = edge_rois(rng, 1, 5, 80, 96)
    attrs = dict(spatial_scale=1 / 16, output_dim=2, pooled_size=3, group_size=3)
    ref = mx.nd.contrib.PSROIPooling(mx.nd.array(data), mx.nd.array(rois), **attrs).asnumpy()
    close(ref, psroi_numpy(data, rois, **attrs))


# ----------------------------------------------------------------------------- multi_proposal

PROPOSAL_ATTRS = dict(rpn_pre_nms_top_n=600, rpn_post_nms_top_n=100, threshold=0.7, rpn_min_size=16,
                      scales=(8, 16, 32), ratios=(0.5, 1, 2), feature_stride=16)


def proposal_inputs(rng, n, h, w, anchors=9, quantize=None, delta_scale=0.3):
    cls = rng.rand(n, 2 * anchors, h, w).astype(np.float32)
    if quantize:
        cls = np.round(cls * quantize) / quantize  # many tied scores
    deltas = (rng.randn(n, 4 * anchors, h, w) * delta_scale).astype(np.float32)
    return cls, deltas


def both_proposals(cls, deltas, info, **attrs):
    args = [mx.nd.array(x) for x in (cls, deltas, info)]
    ours = ops.multi_proposal(*args, output_score=True, **attrs)
    ref = mx.nd.contrib.MultiProposal(*args, output_score=True, **attrs)
    return [o.asnumpy() for o in ours], [r.asnumpy() for r in ref]


@pytest.mark.parametrize("case", ["single", "batch_padded", "ties", "few_survivors", "iou_loss",
                                  "all_anchors", "tiny_images"])
def test_multi_proposal_matches_builtin(case):
    rng = np.random.RandomState(hash(case) % 1000)
    attrs = dict(PROPOSAL_ATTRS)
    n, h, w = 1, 19, 31
    info = np.array([[h * 16, w * 16, 1.0]], np.float32)
    quantize = None
    if case == "batch_padded":  # 3 images of different sizes padded into one map
        n, h, w = 3, 21, 17
        info = np.array([[336, 272, 1.0], [200, 150, 0.6], [330, 100, 1.6]], np.float32)
    elif case == "ties":
        n = 2
        info = np.repeat(info, 2, 0)
        quantize = 7
    elif case == "few_survivors":  # fewer boxes than post_nms_top_n survive NMS: repeated
        h, w = 3, 4
        info = np.array([[48, 64, 1.0]], np.float32)
        attrs.update(rpn_pre_nms_top_n=30, rpn_post_nms_top_n=50, threshold=0.3)
    elif case == "iou_loss":
        attrs["iou_loss"] = True
    elif case == "all_anchors":
        attrs.update(rpn_pre_nms_top_n=-1, rpn_post_nms_top_n=40)
    elif case == "tiny_images":  # most boxes under rpn_min_size * scale: scored -1
        info = np.array([[40, 50, 3.0]], np.float32)
    cls, deltas = proposal_inputs(rng, n, h, w, quantize=quantize,
                                  delta_scale=3.0 if case == "iou_loss" else 0.3)
    (rois, scores), (ref_rois, ref_scores) = both_proposals(cls, deltas, info, **attrs)
    assert rois.shape == (n * attrs["rpn_post_nms_top_n"], 5) and scores.shape == (len(rois), 1)
    close(rois, ref_rois, rtol=1e-6, atol=1e-4)
    close(scores, ref_scores, rtol=0, atol=0)
    assert np.array_equal(rois[:, 0], np.repeat(np.arange(n), attrs["rpn_post_nms_top_n"]))
    if case == "few_survivors":
        kept = len({tuple(r) for r in rois.tolist()})
        assert kept < 50 and np.array_equal(rois[kept:2 * kept], rois[:kept])
    if case == "ties":
        assert len(np.unique(scores)) < len(scores) // 2


def test_multi_proposal_default_attributes_and_single_output():
    rng = np.random.RandomState(3)
    cls, deltas = proposal_inputs(rng, 1, 10, 12, anchors=12)  # default 4 scales x 3 ratios
    info = np.array([[160, 192, 1.0]], np.float32)
    args = [mx.nd.array(x) for x in (cls, deltas, info)]
    ours = ops.multi_proposal(*args)
    ref = mx.nd.contrib.MultiProposal(*args)
    assert isinstance(ours, mx.nd.NDArray) and ours.shape == (300, 5)
    close(ours.asnumpy(), ref.asnumpy(), rtol=1e-6, atol=1e-4)


def test_multi_proposal_gradients_are_zero():
    rng = np.random.RandomState(4)
    cls, deltas = proposal_inputs(rng, 2, 5, 6)
    info = np.array([[80, 96, 1.0]] * 2, np.float32)
    head = rng.randn(2 * 100, 5).astype(np.float32)
    _, grads = fwd_bwd(lambda c, d, i: ops.multi_proposal(c, d, i, **PROPOSAL_ATTRS),
                       [cls, deltas, info], head)
    assert all(np.all(g == 0) for g in grads)


# ------------------------------------------------------------------------------------ errors

def raises(fn, *fragments):
    with pytest.raises(MXNetError) as info:
        out = fn()
        (out[0] if isinstance(out, (list, tuple)) else out).wait_to_read()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------ depth_to_space

@pytest.mark.parametrize("shape,block,dtype", [
    ((2, 8, 5, 7), 2, np.float32), ((1, 36, 3, 4), 3, np.float64), ((3, 4, 1, 1), 2, np.float32),
    ((1, 5, 2, 3), 1, np.float32),
])
def test_depth_to_space_matches_builtin(shape, block, dtype):
    rng = np.random.RandomState(sum(shape))
    data = rng.randn(*shape).astype(dtype)
    out_shape = (shape[0], shape[1] // block ** 2, shape[2] * block, shape[3] * block)
    head = rng.randn(*out_shape).astype(dtype)
    out, (grad,) = fwd_bwd(lambda x: ops.depth_to_space(x, block), [data], head)
    ref, (ref_grad,) = fwd_bwd(lambda x: mx.nd.depth_to_space(x, block_size=block), [data], head)
    assert out.shape == out_shape and out.dtype == dtype
    np.testing.assert_array_equal(out, ref)          # a permutation: exact
    np.testing.assert_array_equal(grad, ref_grad)
    # hand-checked element: output (n, c, y b + i, x b + j) = data (n, (i b + j) C' + c, y, x)
    n, c, y, x, i, j = shape[0] - 1, 0, shape[2] - 1, shape[3] - 1, block - 1, 0
    assert out[n, c, y * block + i, x * block + j] == data[n, (i * block + j) * (shape[1] // block ** 2) + c, y, x]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_equals_transposed_concat(dtype):
    rng = np.random.RandomState(5)
    parts = [rng.randn(2, c, 5, 7).astype(dtype) for c in (3, 1, 6)]    # 35 pixels: 2 full tiles + a partial one
    head = rng.randn(2, 5, 7, 10).astype(dtype)
    out, grads = fwd_bwd(lambda *xs: ops.channels_last(xs), parts, head)
    ref, ref_grads = fwd_bwd(lambda *xs: mx.nd.transpose(mx.nd.concat(*xs, dim=1), axes=(0, 2, 3, 1)), parts, head)
    assert out.shape == (2, 5, 7, 10) and out.dtype == dtype
    np.testing.assert_array_equal(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_array_equal(grad, ref_grad)
    assert out[1, 4, 6, 3] == parts[1][1, 0, 4, 6]      # channel 3 is the second input's first
    raises(lambda: ops.channels_last([mx.nd.zeros((1, 2, 3, 4)), mx.nd.zeros((1, 2, 3, 5))]),
           "x_1 has shape (1, 2, 3, 5)", "N, H, W of x_0 (1, 2, 3, 4)")


def test_bad_inputs_raise_clear_errors():
    nd = mx.nd
    data = nd.zeros((1, 18, 5, 5))
    rois = nd.array([[0, 0, 0, 30, 30]])
    ps = dict(spatial_scale=1 / 16, output_dim=2, pooled_size=3)
    raises(lambda: ops.psroi_pooling(nd.zeros((18, 5, 5)), rois, **ps), "data must be 4-D", "(18, 5, 5)")
    raises(lambda: ops.psroi_pooling(nd.zeros((1, 17, 5, 5)), rois, **ps),
           "17 channels", "output_dim * group_size^2", "18")
    raises(lambda: ops.psroi_pooling(data, nd.zeros((3, 4)), **ps), "rois must be 2-D (R, 5)", "(3, 4)")
    raises(lambda: ops.psroi_pooling(data, nd.array([[2, 0, 0, 9, 9]]), **ps), "batch index 2", "1 image")
    raises(lambda: ops.psroi_pooling(data, rois, spatial_scale=-1, output_dim=2, pooled_size=3),
           "spatial_scale", "(0, 1]")
    raises(lambda: ops.psroi_pooling(data, rois, spatial_scale=0.5, output_dim=2, pooled_size=-3),
           "pooled_size=-3 must be positive")

    cls, box, info = nd.zeros((2, 18, 4, 5)), nd.zeros((2, 36, 4, 5)), nd.array([[64, 80, 1]] * 2)
    mp = dict(scales=(8, 16, 32), ratios=(0.5, 1, 2), rpn_pre_nms_top_n=20, rpn_post_nms_top_n=5)
    raises(lambda: ops.multi_proposal(nd.zeros((2, 16, 4, 5)), box, info, **mp), "cls_prob must be", "9 anchors")
    raises(lambda: ops.multi_proposal(cls, nd.zeros((2, 36, 4, 6)), info, **mp), "bbox_pred must be (N, 4 * A, H, W)")
    raises(lambda: ops.multi_proposal(cls, box, nd.zeros((2, 2)), **mp), "im_info must be (N, 3)", "(2, 2)")
    raises(lambda: ops.multi_proposal(cls, box, nd.array([[640, 80, 1]] * 2), **mp), "exceeds the score map")
    raises(lambda: ops.multi_proposal(cls, box, nd.array([[64, 80, -1]] * 2), **mp), "must be positive")
    raises(lambda: ops.multi_proposal(cls, box, info, scales=(8, 16, 32), rpn_post_nms_top_n=0),
           "rpn_post_nms_top_n=0 must be positive")

    raises(lambda: ops.flow_warp(nd.zeros((1, 3, 4, 5)), nd.zeros((1, 3, 4, 5))), "flow must be 4-D (N, 2, H, W)")
    raises(lambda: ops.flow_warp(nd.zeros((1, 3, 4, 5)), nd.zeros((1, 2, 4, 6))), "does not match data shape")
    raises(lambda: ops.flow_warp(nd.zeros((1, 3, 4, 5), dtype=np.float16), nd.zeros((1, 2, 4, 5), dtype=np.float16)),
           "float16", "float32")
    raises(lambda: nd.detops_psroi_pooling(data, rois, spatial_scale=0.5, output_dim=2, pooled_size=3,
                                           pooled_szie=3), "unknown attribute 'pooled_szie'")
    raises(lambda: ops.depth_to_space(nd.zeros((1, 6, 2, 2)), 2), "6 channels", "block_size^2 = 4")
    raises(lambda: ops.depth_to_space(nd.zeros((6, 2, 2)), 2), "must be 4-D", "(6, 2, 2)")
    raises(lambda: ops.depth_to_space(nd.zeros((1, 4, 2, 2)), 0), "block_size must be >= 1")


def test_error_messages_do_not_accumulate():
    first = raises(lambda: ops.flow_warp(mx.nd.zeros((1, 3, 4, 5)), mx.nd.zeros((1, 3, 4, 5))), "flow must be")
    second = raises(lambda: ops.psroi_pooling(mx.nd.zeros((1, 17, 5, 5)), mx.nd.zeros((1, 5)),
                                              spatial_scale=0.5, output_dim=2, pooled_size=3), "17 channels")
    assert "flow must be" in first and "flow must be" not in second


def test_missing_or_stale_library_says_run_init(tmp_path, monkeypatch):
    with pytest.raises(ops.OperatorLibraryError, match="init.sh"):
        ops._check_library(str(tmp_path / "libdetops.so"))
    monkeypatch.setattr(ops, "_expected_hash", lambda: "0" * 64)
    with pytest.raises(ops.OperatorLibraryError, match="stale.*init.sh"):
        ops._check_library(ops.LIBRARY_PATH)


def test_build_is_skipped_when_up_to_date(monkeypatch, capsys):
    import runpy
    build = runpy.run_path(ops.BUILD_SCRIPT)["build"]
    before = os.stat(ops.LIBRARY_PATH).st_mtime_ns

    def no_compiler(*args, **kwargs):
        raise AssertionError(f"the compiler ran although the library is up to date: {args}")
    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert build(verbose=True) == ops.LIBRARY_PATH
    assert "is up to date" in capsys.readouterr().out
    assert os.stat(ops.LIBRARY_PATH).st_mtime_ns == before


# -------------------------------------------------------------- graphs, threads, processes

class ThreeOps(gluon.HybridBlock):
    """R-FCN-like toy graph that uses all three operators through F."""

    def __init__(self, builtin=None, **kwargs):
        super().__init__(**kwargs)
        self.builtin = builtin
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(2 * 9, 1, in_channels=4)

    def hybrid_forward(self, F, feat, flow, cls, deltas, info):
        warped = ops.flow_warp(feat, flow, F=F, builtin=self.builtin)
        rois = ops.multi_proposal(cls, deltas, info, rpn_pre_nms_top_n=50, rpn_post_nms_top_n=8,
                                  scales=(2, 4, 8), F=F, builtin=self.builtin)
        rois = F.stop_gradient(rois)
        pooled = ops.psroi_pooling(self.conv(warped), rois, spatial_scale=1 / 16, output_dim=2,
                                   pooled_size=3, F=F, builtin=self.builtin)
        return pooled.mean(axis=(2, 3))


def graph_inputs(seed=0):
    rng = np.random.RandomState(seed)
    feat = rng.randn(2, 4, 6, 7).astype(np.float32)
    flow = (rng.randn(2, 2, 6, 7) * 1.5).astype(np.float32)
    cls, deltas = proposal_inputs(rng, 2, 6, 7)
    info = np.array([[96, 112, 1.0], [80, 100, 1.0]], np.float32)
    return [mx.nd.array(x) for x in (feat, flow, cls, deltas, info)]


def run_graph(net, inputs):
    for x in inputs[:2]:
        x.attach_grad()
    with autograd.record():
        out = net(*inputs)
    out.backward()
    return out.asnumpy(), inputs[0].grad.asnumpy(), inputs[1].grad.asnumpy()


def test_hybrid_block_before_and_after_hybridize_matches_builtin():
    ours = ThreeOps(builtin=False)
    ours.initialize(mx.init.Xavier(), ctx=mx.cpu())
    builtin = ThreeOps(builtin=True, params=ours.collect_params())
    eager = run_graph(ours, graph_inputs())
    ref = run_graph(builtin, graph_inputs())
    ours.hybridize()
    hybrid = run_graph(ours, graph_inputs())
    for a, b, c in zip(eager, ref, hybrid):
        close(a, b)
        close(c, a)


EXPORT_CHECK = """
import json, sys
import numpy as np, mxnet as mx
from lib import ops
ops.load()
net = ops.import_block(sys.argv[1] + "-symbol.json", ["data0", "data1", "data2", "data3", "data4"],
                       sys.argv[1] + "-0000.params")
inputs = [mx.nd.array(x) for x in np.load(sys.argv[2]).values()]
print(json.dumps(net(*inputs).asnumpy().tolist()))
"""


def test_export_and_import_in_fresh_process(tmp_path):
    net = ThreeOps(builtin=False)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    inputs = graph_inputs(1)
    expected = net(*inputs).asnumpy()
    prefix = str(tmp_path / "three_ops")
    net.export(prefix)
    symbol = json.load(open(prefix + "-symbol.json"))
    assert {n["op"] for n in symbol["nodes"]} >= {ops.OP_NAMES[k] for k in ("flow_warp", "multi_proposal", "psroi_pooling")}
    np.savez(tmp_path / "inputs.npz", *[x.asnumpy() for x in inputs])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", EXPORT_CHECK, prefix, str(tmp_path / "inputs.npz")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    close(np.array(json.loads(proc.stdout.strip().splitlines()[-1])), expected)


class WarpDataset(gluon.data.Dataset):
    def __init__(self, data, flow):
        self.data, self.flow = data, flow

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        out = ops.flow_warp(mx.nd.array(self.data[i:i + 1]), mx.nd.array(self.flow[i:i + 1]))
        return out.asnumpy()[0], np.int32(ops.get_num_threads())


def test_library_registered_once_whoever_loads_it():
    # lib.ops and lib.tools.infer (which must not import lib.ops' callers) both load the library;
    # MXNet 1.9 fails on the third mx.library.load of one file, so neither may load it twice
    code = ("from lib.tools.infer import load_ops_library; from lib import ops; import mxnet as mx;"
            "load_ops_library(); ops.load(); load_ops_library(); load_ops_library();"
            "print(mx.nd.detops_flow_warp(mx.nd.zeros((1, 1, 2, 2)), mx.nd.zeros((1, 2, 2, 2))).sum().asscalar())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("0.0")


def test_forked_dataloader_worker_uses_the_ops():
    rng = np.random.RandomState(6)
    data = rng.randn(4, 3, 5, 6).astype(np.float32)
    flow = rng.randn(4, 2, 5, 6).astype(np.float32)
    ops.set_num_threads(2)  # the parent has used a 2-thread OpenMP pool before forking
    try:
        big = mx.nd.array(rng.randn(1, 16, 64, 64))  # large enough for the kernels to go parallel
        ops.flow_warp(big, mx.nd.zeros((1, 2, 64, 64))).wait_to_read()
        expected = ops.flow_warp(mx.nd.array(data), mx.nd.array(flow)).asnumpy()
        loader = gluon.data.DataLoader(WarpDataset(data, flow), batch_size=2, num_workers=2)
        batches = list(loader)
    finally:
        from lib import runtime
        ops.set_num_threads(runtime.threads())
    close(np.concatenate([b[0].asnumpy() for b in batches]), expected)
    assert all(np.all(b[1].asnumpy() == 1) for b in batches)  # one thread in forked workers


def test_thread_count_does_not_change_results():
    from lib import runtime
    rng = np.random.RandomState(7)
    # big enough that every kernel runs its parallel path with 2 threads
    data = rng.randn(2, 4 * 49, 40, 50).astype(np.float32)
    rois = edge_rois(rng, 2, 100, 640, 800)
    flow = rng.randn(2, 2, 40, 50).astype(np.float32) * 2
    head_ps = rng.randn(len(rois), 4, 7, 7).astype(np.float32)
    head_fw = rng.randn(*data.shape).astype(np.float32)
    results = []
    try:
        for threads in (1, 2):
            ops.set_num_threads(threads)
            assert ops.get_num_threads() == threads
            ps = fwd_bwd(lambda d, r: ops.psroi_pooling(d, r, spatial_scale=1 / 16, output_dim=4,
                                                        pooled_size=7), [data, rois], head_ps)
            fw = fwd_bwd(ours_warp, [data, flow], head_fw)
            results.append((ps[0], ps[1][0], fw[0], fw[1][0], fw[1][1]))
    finally:
        ops.set_num_threads(runtime.threads())
    for one, two in zip(*results):
        close(one, two, rtol=1e-6, atol=1e-6)
