"""FGFA / R-FCN: network pieces against independent oracles, window logic, config and weight errors."""
import os

import cv2
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn
from gluoncv.model_zoo.resnet import get_resnet

from fgfa.backbone import BackboneWeightsError, ResNetV1Backbone
from fgfa.config import get_config, input_scale, training_scales
from fgfa.data import make_preprocess, neighbor_indices, prepare_image, target_size
from fgfa.detector import FGFADetector
from fgfa.window import WindowRunner
from fgfa.rpn import denormalize_rpn_deltas, rpn_cls_prob, rpn_flatten
from fgfa.train import materialize
from lib.anchors import rpn_base_anchors, shift_anchors
from lib.config import PROJECT_ROOT, ConfigError

TINY = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml")
ALL_CFGS = [os.path.join(PROJECT_ROOT, "experiments", d, "cfgs", f)
            for d in ("fgfa_rfcn", "rfcn")
            for f in sorted(os.listdir(os.path.join(PROJECT_ROOT, "experiments", d, "cfgs")))]


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("path", ALL_CFGS, ids=os.path.basename)
def test_every_shipped_config_loads(path):
    cfg = get_config(path)
    assert cfg.NETWORK.DEPTH in (18, 34, 50, 101)
    assert cfg.TEST.K >= 0


def test_paper_config_matches_reference():
    cfg = get_config(os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs",
                                  "resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml"))
    assert cfg.NETWORK.DEPTH == 101 and cfg.NETWORK.NORM == "frozen"
    assert training_scales(cfg) == [[600, 1000]] and cfg.TEST.K == 9
    assert [s["IMAGE_SET"] for s in cfg.DATASET.TRAIN] == ["DET_train_30classes", "VID_train_15frames"]
    assert cfg.NETWORK.ANCHOR_SCALES == [8, 16, 32] and cfg.TRAIN.OHEM_ROIS == 128
    base = get_config(os.path.join(PROJECT_ROOT, "experiments", "rfcn", "cfgs",
                                   "resnet_v1_101_imagenet_vid_rfcn_end2end_ohem.yaml"))
    assert base.NETWORK.AGGREGATE is False and base.NETWORK.DEPTH == 101


def test_bad_config_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {TINY}\nNETWORK:\n  DEPHT: 18\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*NETWORK\.DEPHT"):
        get_config(str(bad))
    bad.write_text(f"_BASE_: {TINY}\nNETWORK:\n  DEPTH: 19\n")
    with pytest.raises(ConfigError, match="NETWORK.DEPTH must be one of"):
        get_config(str(bad))
    bad.write_text(f"_BASE_: {TINY}\nNETWORK:\n  WIDTH: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: NETWORK.WIDTH must be in"):
        get_config(str(bad))
    bad.write_text(f"_BASE_: {TINY}\nNETWORK:\n  WIDTH: 0.5\n  PRETRAINED: model/resnet18_v1.params\n")
    with pytest.raises(ConfigError, match="PRETRAINED holds ImageNet weights of a full-width backbone"):
        get_config(str(bad))
    bad.write_text(f"_BASE_: {TINY}\nTEST:\n  K: two\n")
    with pytest.raises(ConfigError, match="TEST.K"):
        get_config(str(bad))
    bad.write_text(f"_BASE_: {TINY}\nTEST:\n  FLOW_CALIB_MODE: kl\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: TEST.FLOW_CALIB_MODE must be 'naive' or 'entropy', got 'kl'"):
        get_config(str(bad))


# ---------------------------------------------------------------------------------------- backbone
@pytest.mark.parametrize("depth", [18, 50])
def test_backbone_stride16_and_gluoncv_weights(tmp_path, depth):
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 64, 96))
    reference = get_resnet(1, depth)
    reference.initialize(mx.init.Xavier())
    reference(x)
    path = str(tmp_path / f"resnet{depth}_v1.params")
    reference.save_parameters(path)
    net = ResNetV1Backbone(depth, "frozen")
    net.initialize()
    net.load_gluoncv(path)
    out = net(x)
    assert out.shape == (1, 512 if depth < 50 else 2048, 4, 6)  # stride 16, not 32
    # up to res4 the network is gluoncv's own: same weights, same numbers (global BN stats)
    with mx.autograd.predict_mode():
        expect = x
        for idx in range(7):
            expect = reference.features[idx](expect)
    got = x
    for idx in range(7):
        got = net.features[idx](got)
    np.testing.assert_allclose(got.asnumpy(), expect.asnumpy(), rtol=1e-4, atol=1e-5)
    # res5 is dilated: the same weights give a different (denser) map than gluoncv's stride 32
    assert reference.features[7](expect).shape[2:] == (2, 3)


@pytest.mark.parametrize("depth,channels", [(18, [32, 32, 64, 128, 256]), (50, [32, 128, 256, 512, 1024])])
def test_half_width_backbone_is_gluoncv_resnet_with_halved_stages(tmp_path, depth, channels):
    # the oracle: gluoncv's ResNetV1 built with the halved stage widths written out by hand
    from gluoncv.model_zoo.resnet import BasicBlockV1, BottleneckV1, ResNetV1
    block = BasicBlockV1 if depth < 50 else BottleneckV1
    reference = ResNetV1(block, [2, 2, 2, 2] if depth < 50 else [3, 4, 6, 3], channels)
    reference.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 64, 96))
    reference(x)
    path = str(tmp_path / f"resnet{depth}_half.params")
    reference.save_parameters(path)
    net = ResNetV1Backbone(depth, "frozen", width=0.5)
    net.initialize()
    net.load_gluoncv(path)
    assert net.out_channels == channels[-1] and net(x).shape == (1, channels[-1], 4, 6)
    with mx.autograd.predict_mode():
        expect, got = x, x
        for idx in range(7):
            expect, got = reference.features[idx](expect), net.features[idx](got)
    np.testing.assert_allclose(got.asnumpy(), expect.asnumpy(), rtol=1e-4, atol=1e-5)
    full = get_resnet(1, depth)
    full.initialize()
    full(x)
    full.save_parameters(str(tmp_path / "full.params"))
    with pytest.raises(BackboneWeightsError, match=f"ResNet-{depth} v1 backbone at width 0.5: .*different shape"):
        net.load_gluoncv(str(tmp_path / "full.params"))


def test_backbone_weight_file_errors(tmp_path):
    net = ResNetV1Backbone(18, "frozen")
    net.initialize()
    with pytest.raises(BackboneWeightsError, match="not found"):
        net.load_gluoncv(str(tmp_path / "missing.params"))
    other = get_resnet(1, 34)
    other.initialize()
    other(mx.nd.zeros((1, 3, 32, 32)))
    path = str(tmp_path / "resnet34_v1.params")
    other.save_parameters(path)
    net(mx.nd.zeros((1, 3, 32, 32)))
    with pytest.raises(BackboneWeightsError, match=r"resnet34_v1\.params does not fit a ResNet-18"):
        net.load_gluoncv(path)
    junk = tmp_path / "junk.params"
    junk.write_bytes(b"not parameters")
    with pytest.raises(BackboneWeightsError, match="junk.params"):
        net.load_gluoncv(str(junk))


# ---------------------------------------------------------------------------------------- RPN layout
def test_rpn_layout_matches_multiproposal():
    """A single confident anchor must come out of MXNet's MultiProposal as that anchor's box."""
    scales, ratios, stride = (2.0, 4.0), (0.5, 1.0, 2.0), 16
    num_a, feat_h, feat_w = 6, 5, 7
    anchors = shift_anchors(rpn_base_anchors(16, scales, ratios), feat_h, feat_w, stride)
    score = np.zeros((1, 2 * num_a, feat_h, feat_w), np.float32)
    h, w, a = 2, 3, 4
    score[0, num_a + a, h, w] = 10.0                        # fg logit of anchor (h, w, a)
    cls_score = mx.nd.array(score)
    prob = rpn_cls_prob(mx.nd, cls_score)
    flat_scores, _ = rpn_flatten(mx.nd, cls_score, mx.nd.zeros((1, 4 * num_a, feat_h, feat_w)), num_a)
    index = (h * feat_w + w) * num_a + a
    assert int(flat_scores[0, :, 1].argmax(axis=0).asscalar()) == index
    rois = mx.nd.contrib.MultiProposal(prob, mx.nd.zeros((1, 4 * num_a, feat_h, feat_w)),
                                       mx.nd.array([[feat_h * stride, feat_w * stride, 1.0]]),
                                       rpn_pre_nms_top_n=50, rpn_post_nms_top_n=5, threshold=0.7,
                                       rpn_min_size=0, scales=scales, ratios=ratios, feature_stride=stride)
    box = anchors[index].copy()
    box[[0, 2]] = box[[0, 2]].clip(0, feat_w * stride - 1)
    box[[1, 3]] = box[[1, 3]].clip(0, feat_h * stride - 1)
    np.testing.assert_allclose(rois[0, 1:].asnumpy(), box, atol=1e-3)


def test_rpn_deltas_denormalized_per_coordinate():
    num_a = 3
    pred = np.random.RandomState(0).randn(2, 4 * num_a, 3, 4).astype(np.float32)
    stds = (0.1, 0.2, 0.4, 0.8)
    out = denormalize_rpn_deltas(mx.nd, mx.nd.array(pred), stds, num_a).asnumpy()
    expect = pred.reshape(2, num_a, 4, 3, 4) * np.array(stds).reshape(1, 1, 4, 1, 1)
    np.testing.assert_allclose(out, expect.reshape(pred.shape), rtol=1e-6)
    _, deltas = rpn_flatten(mx.nd, mx.nd.zeros((2, 2 * num_a, 3, 4)), mx.nd.array(pred), num_a)
    # row (h*W + w)*A + a holds channels a*4 .. a*4+3 at (h, w)
    np.testing.assert_allclose(deltas[1, (2 * 4 + 1) * num_a + 2].asnumpy(), pred[1, 8:12, 2, 1])


# ---------------------------------------------------------------------------------------- aggregation
@pytest.mark.parametrize("scale,quality", [(1.0, False), (4.0, False), (2.0, True)])
def test_aggregation_matches_numpy_reference(scale, quality):
    from fgfa.aggregation import FlowAggregator
    rng = np.random.RandomState(1)
    n, t, c, e, h, w = 2, 3, 4, 5, 10, 12
    q = 1 if quality else 0       # the quality logit: one more channel after the embedding
    caches = rng.randn(n * t, c + e + q, h, w).astype(np.float32)
    key_embed = rng.randn(n, e + q, h, w).astype(np.float32)
    # integer flows: warping is an exact shift (zeros outside), checkable in numpy
    shifts = rng.randint(-2, 3, size=(n * t, 2))
    flows = np.zeros((n * t, 2, h, w), np.float32)
    flows[:, 0] = shifts[:, 0, None, None]
    flows[:, 1] = shifts[:, 1, None, None]
    agg = FlowAggregator(c, t, quality=quality)
    out, weights = agg(mx.nd.array(key_embed), mx.nd.array(caches), mx.nd.array(flows), mx.nd.array([scale]))
    warped = np.zeros_like(caches)
    for i, (dx, dy) in enumerate(shifts):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    warped[i, :, y, x] = caches[i, :, y + dy, x + dx]
    feat = warped[:, :c].reshape(n, t, c, h, w)
    emb = warped[:, c:c + e].reshape(n, t, e, h, w)
    emb = emb / np.maximum(np.sqrt((emb ** 2).sum(2, keepdims=True) + 1e-10), 1e-10)
    key = key_embed[:, :e] / np.sqrt((key_embed[:, :e] ** 2).sum(1, keepdims=True) + 1e-10)
    cos = scale * (emb * key[:, None]).sum(2)
    if quality:
        cos = cos + warped[:, -1].reshape(n, t, h, w)
    wts = np.exp(cos - cos.max(1, keepdims=True))
    wts /= wts.sum(1, keepdims=True)
    # compare where every frame samples strictly inside the map (at the last pixel row/column the
    # sampler's coordinate normalisation round trip may blend in a little of the zero border)
    inside = np.ones((n, h, w), bool)
    ys, xs = np.mgrid[0:h, 0:w]
    for i, (dx, dy) in enumerate(shifts):
        inside[i // t] &= (ys + dy >= 0) & (ys + dy <= h - 2) & (xs + dx >= 0) & (xs + dx <= w - 2)
    assert inside.sum() > 40
    got_w = weights.asnumpy().transpose(0, 2, 3, 1)[inside]
    np.testing.assert_allclose(got_w, wts.transpose(0, 2, 3, 1)[inside], rtol=1e-4, atol=1e-5)
    expect = (feat * wts[:, :, None]).sum(1).transpose(0, 2, 3, 1)[inside]
    np.testing.assert_allclose(out.asnumpy().transpose(0, 2, 3, 1)[inside], expect, rtol=1e-4, atol=1e-5)


def test_aggregation_scale_gradient_matches_finite_differences():
    # the learned NETWORK.AGGREGATE_SCALE trains through this input
    from mxnet import autograd
    from fgfa.aggregation import FlowAggregator
    rng = np.random.RandomState(2)
    n, t, c, e, h, w = 1, 3, 3, 4, 5, 6
    key_embed = mx.nd.array(rng.randn(n, e, h, w))
    caches = mx.nd.array(rng.randn(n * t, c + e, h, w))
    flows = mx.nd.array(rng.randn(n * t, 2, h, w))
    probe = mx.nd.array(rng.randn(n, c, h, w))
    agg = FlowAggregator(c, t)

    def objective(scale):
        return float((agg(key_embed, caches, flows, mx.nd.array([scale]))[0] * probe).sum().asscalar())
    scale = mx.nd.array([1.7])
    scale.attach_grad()
    with autograd.record():
        loss = (agg(key_embed, caches, flows, scale)[0] * probe).sum()
    loss.backward()
    step = 1e-2
    numeric = (objective(1.7 + step) - objective(1.7 - step)) / (2 * step)
    assert abs(numeric) > 1e-2
    np.testing.assert_allclose(scale.grad.asscalar(), numeric, rtol=2e-2)


def test_learned_aggregate_scale_trains_and_the_fused_window_uses_it():
    from mxnet import autograd
    mx.random.seed(0)
    cfg = get_config(TINY, ["NETWORK.AGGREGATE_SCALE=2.0", "NETWORK.AGGREGATE_SCALE_LEARNED=true"])
    model = FGFADetector(cfg, 2)
    model.init_weights()
    materialize(model, mx.cpu())
    named = dict(model._collect_params_with_prefix())
    np.testing.assert_allclose(named["aggregate_log_scale"].data().asnumpy(), [np.log(2.0)], rtol=1e-6)
    assert named["aggregate_log_scale"].lr_mult == cfg.TRAIN.AGGREGATE_SCALE_LR_MULT and named["aggregate_log_scale"].wd_mult == 0
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.randn(1, 3, 3, 96, 128))      # key frame + 2 neighbours
    im_info = np.array([[96, 128, 1.0]], np.float32)
    with autograd.record():
        loss, _ = model.train_loss(data, im_info, [np.array([[10, 10, 60, 50]], np.float32)],
                                   [np.array([0])], np.random.RandomState(0))
    loss.backward()
    assert abs(float(named["aggregate_log_scale"].grad().asscalar())) > 0
    # inference: the fused kernel and the composite graph weight the window with the learned scale
    named["aggregate_log_scale"].set_data(mx.nd.array([np.log(5.0)]))
    caches = [model.frame_cache(data[:, i]) for i in range(3)]
    flows = [mx.nd.random.normal(0, 1, shape=(1, 2) + caches[0].shape[2:]) for _ in range(3)]
    fused = model.aggregate_window(caches[0], caches, flows, fused=True).asnumpy()
    composite = model.aggregate_window(caches[0], caches, flows, fused=False).asnumpy()
    np.testing.assert_allclose(fused, composite, rtol=1e-4, atol=1e-5)
    from lib import ops
    plain, _ = ops.flow_aggregate(caches[0], caches, flows, model.feat_channels)
    with_five, _ = ops.flow_aggregate(caches[0], caches, flows, model.feat_channels, scale=5.0)
    np.testing.assert_allclose(fused, with_five.asnumpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(fused - plain.asnumpy()).max() > 1e-3
    with pytest.raises(ConfigError, match="NETWORK.AGGREGATE_SCALE must be a number in"):
        get_config(TINY, ["NETWORK.AGGREGATE_SCALE=0"])


def test_quality_logit_starts_at_the_reference_weights_and_trains():
    from mxnet import autograd
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.randn(1, 3, 3, 96, 128))      # key frame + 2 neighbours
    models = {}
    for quality in (False, True):
        mx.random.seed(0)
        cfg = get_config(TINY, [f"NETWORK.AGGREGATE_QUALITY={str(quality).lower()}", "TRAIN.AGGREGATE_KEY=true"])
        models[quality] = FGFADetector(cfg, 2)
        models[quality].init_weights()
        materialize(models[quality], mx.cpu())
    plain, model = models[False], models[True]
    named = dict(model._collect_params_with_prefix())
    # the same seed gives the same weights to every other parameter: copy them to be sure
    for name, param in plain._collect_params_with_prefix().items():
        named[name].set_data(param.data())
    caches = [model.frame_cache(data[:, i]) for i in range(3)]
    assert caches[0].shape[1] == plain.frame_cache(data[:, 0]).shape[1] + 1
    assert float(caches[0][:, -1].abs().max().asscalar()) == 0.0      # zero-initialised logit
    flows = [mx.nd.random.normal(0, 1, shape=(1, 2) + caches[0].shape[2:]) for _ in range(3)]
    plain_caches = [plain.frame_cache(data[:, i]) for i in range(3)]
    np.testing.assert_allclose(model.aggregate_window(caches[0], caches, flows).asnumpy(),
                               plain.aggregate_window(plain_caches[0], plain_caches, flows).asnumpy(), rtol=1e-5, atol=1e-6)
    im_info = np.array([[96, 128, 1.0]], np.float32)
    with autograd.record():
        loss, _ = model.train_loss(data, im_info, [np.array([[10, 10, 60, 50]], np.float32)],
                                   [np.array([0])], np.random.RandomState(0))
    loss.backward()
    assert float(named["embed.quality.weight"].grad().abs().sum().asscalar()) > 0
    # with a trained (here: random) logit the fused window equals the composite graph
    named["embed.quality.weight"].set_data(mx.nd.random.normal(0, 0.5, shape=named["embed.quality.weight"].shape))
    caches = [model.frame_cache(data[:, i]) for i in range(3)]
    fused = model.aggregate_window(caches[0], caches, flows, fused=True).asnumpy()
    composite = model.aggregate_window(caches[0], caches, flows, fused=False).asnumpy()
    np.testing.assert_allclose(fused, composite, rtol=1e-4, atol=1e-5)
    assert np.abs(fused - plain.aggregate_window(plain_caches[0], plain_caches, flows).asnumpy()).max() > 1e-4


def test_flownet_output_at_feature_stride():
    from fgfa.flownet import FlowNetSimple
    net = FlowNetSimple(width=0.125)
    net.initialize(mx.init.Xavier())
    for height, width in [(96, 128), (112, 176)]:
        img = mx.nd.random.uniform(shape=(2, 3, height, width))
        flow = net(img, img)
        assert flow.shape == (2, 2, height // 16, width // 16)
        assert float(flow.abs().max().asscalar()) == 0.0      # zero-initialised predictors: identity warp


def test_flownet_subpixel_copy_and_halved_frames_give_the_same_flows():
    # the int8 inference path: transposed convolutions in sub-pixel form (a copy of the weights),
    # frames halved once each with OpenCV instead of MXNet's pooling
    from fgfa.flownet import FlowPair, half_size, half_size_image
    rng = np.random.RandomState(1)
    net, cur, ref = _small_flownet_and_frames(rng)
    expected = net(cur, ref).asnumpy()
    assert np.abs(expected).mean() > 0
    copy = net.subpixel_copy()
    assert not any(isinstance(b, nn.Conv2DTranspose) for b in _all_blocks(copy))
    np.testing.assert_allclose(copy(cur, ref).asnumpy(), expected, rtol=1e-5, atol=1e-6)
    odd = rng.uniform(0, 1, (3, 99, 131)).astype(np.float32)
    np.testing.assert_allclose(half_size_image(odd), half_size(mx.nd, mx.nd.array(odd[None])).asnumpy()[0],
                               rtol=1e-6, atol=1e-6)
    halves = [mx.nd.array(np.stack([half_size_image(x) for x in frames.asnumpy()])) for frames in (cur, ref)]
    np.testing.assert_allclose(FlowPair(copy)(FlowPair.stack_halves(*halves)).asnumpy(), expected,
                               rtol=1e-5, atol=1e-6)


def _all_blocks(block):
    yield block
    for child in block._children.values():
        yield from _all_blocks(child)


def _small_flownet_and_frames(rng):
    """A width-0.125 FlowNet with non-zero flow predictors (they start at zero) and two (2,3,98,130)
    frame batches."""
    from fgfa.flownet import FlowNetSimple
    net = FlowNetSimple(width=0.125)
    net.initialize(mx.init.Xavier())
    cur, ref = mx.nd.random.uniform(shape=(2, 3, 98, 130)), mx.nd.random.uniform(shape=(2, 3, 98, 130))
    net(cur, ref)
    for conv in net.flow_preds:
        conv.weight.set_data(mx.nd.array(rng.normal(0, 0.05, conv.weight.shape)))
    return net, cur, ref


def test_flow_pair_form_equals_the_two_frame_form():
    # the single-input form int8 quantization takes: frames halved (2x2 mean, numpy) then stacked
    from fgfa.flownet import FlowPair
    net, cur, ref = _small_flownet_and_frames(np.random.RandomState(0))
    stacked = FlowPair.stack(cur, ref).asnumpy()
    halves = [x.asnumpy().reshape(2, 3, 49, 2, 65, 2).mean(axis=(3, 5)) for x in (cur, ref)]
    np.testing.assert_allclose(stacked, np.concatenate(halves, axis=1), rtol=1e-6, atol=1e-6)
    two_frame = net(cur, ref).asnumpy()
    assert np.abs(two_frame).mean() > 0
    np.testing.assert_allclose(FlowPair(net)(mx.nd.array(stacked)).asnumpy(), two_frame, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- data
def test_resize_pad_and_neighbours():
    assert target_size(720, 1280, 600, 1000) == pytest.approx(1000 / 1280)
    assert target_size(375, 500, 600, 1000) == pytest.approx(1.6)
    image = np.full((30, 50, 3), 100, np.uint8)
    data, info = prepare_image(image, 60, 1000, (100, 100, 100), (1, 1, 1), 16)
    assert data.shape == (3, 64, 112) and tuple(info) == (60, 100, 2.0)
    assert np.all(data[:, 60:] == 0) and np.all(data[:, :, 100:] == 0)
    rng = np.random.RandomState(0)
    for _ in range(50):
        nb = neighbor_indices(10, 100, 2, 1, 9, rng)
        assert nb[0] != nb[1] and all(1 <= abs(i - 10) <= 9 for i in nb)
    assert all(0 <= i <= 2 for i in neighbor_indices(1, 3, 2, 1, 9, rng))  # clamped to the video


# ---------------------------------------------------------------------------------------- window logic
def _tiny_model(aggregate=True, k=2, seed=0):
    # seeded: the random weights (and so which boxes come out) must not depend on the tests run before
    mx.random.seed(seed)
    np.random.seed(seed)
    cfg = get_config(TINY, [f"NETWORK.AGGREGATE={str(aggregate).lower()}", f"TEST.K={k}",
                            "TEST.SCORE_THRESH=0.0", "TEST.MAX_PER_IMAGE=20"])
    model = FGFADetector(cfg, 2)
    model.init_weights()
    materialize(model, mx.cpu())
    if aggregate:  # non-zero flows, so the windows really warp
        for pred in model.flownet.flow_preds:
            pred.weight.set_data(mx.nd.random.normal(0, 0.05, pred.weight.shape))
    return cfg, model


class _CountingCache:
    def __init__(self, model):
        self.calls = 0
        self.inner = model.frame_cache

    def __call__(self, image, **kwargs):
        self.calls += image.shape[0]
        return self.inner(image, **kwargs)


@pytest.mark.parametrize("aggregate", [True, False])
def test_window_one_result_per_frame_and_equals_uncached(aggregate):
    mx.random.seed(0)
    cfg, model = _tiny_model(aggregate, k=2)
    rng = np.random.RandomState(0)
    clip = [rng.randint(0, 255, (120, 160, 3)).astype(np.uint8) for _ in range(7)]
    detector = WindowRunner(model, preprocess=make_preprocess(cfg))
    for length in (1, 2, 3, 5, 7):  # shorter than, equal to and longer than the 2K+1 = 5 window
        counter = _CountingCache(model)
        model.frame_cache = counter
        try:
            out = list(enumerate(detector.detect_video(clip[:length])))
        finally:
            del model.frame_cache
        assert [t for t, _ in out] == list(range(length))
        assert counter.calls == length            # every frame's features computed exactly once
        for t, (boxes, scores, labels) in out:
            ref_boxes, ref_scores, ref_labels = detector.detect_uncached(clip[:length], t)
            assert len(boxes) == len(ref_boxes) > 0
            np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(labels, ref_labels)


def test_window_padding_repeats_edges_and_streaming_lag():
    cfg, model = _tiny_model(True, k=3)
    detector = WindowRunner(model, preprocess=make_preprocess(cfg))
    assert detector.window_indices(0, 10) == [0, 0, 0, 0, 1, 2, 3]
    assert detector.window_indices(9, 10) == [6, 7, 8, 9, 10, 10, 10]
    assert detector.window_indices(1, 1) == [0, 0, 0, 1, 1, 1, 1]
    frame = np.zeros((120, 160, 3), np.uint8)
    ready = [len(detector.step(frame)) for _ in range(6)]
    assert ready == [0, 0, 0, 1, 1, 1]              # frame t is out once t + K has arrived
    assert [t for t, _ in detector.flush()] == [3, 4, 5]
    assert len(detector.frames) == 0                # reset after flush


class _PairFlowNet:
    """Stands in for the FlowNet (on frames at full or half size): flow(cur -> ref) = (ref_id - cur_id)
    * STEP everywhere, where a frame's id is its constant pixel value; counts the pairs it was asked for."""
    STEP = np.array([0.75, -0.5], np.float32)

    def __init__(self, shape):
        self.pairs, self.shape = 0, shape

    def __call__(self, cur, ref):
        self.pairs += cur.shape[0]
        steps = (ref[:, 0, 0, 0] - cur[:, 0, 0, 0]).asnumpy()
        flows = steps[:, None, None, None] * self.STEP[None, :, None, None] * np.ones((1, 2) + self.shape, np.float32)
        return mx.nd.array(flows)


def test_chained_flows_compose_one_step_flows(monkeypatch):
    cfg, model = _tiny_model(True, k=3)
    frames = [np.full((120, 160, 3), i, np.uint8) for i in range(9)]
    preprocess = lambda image: (np.full((3, 96, 128), float(image[0, 0, 0]), np.float32),  # noqa: E731
                                np.array([96, 128, 1.0], np.float32))
    shape = (6, 8)
    results = {}
    for mode in ("direct", "chained"):
        flownet = _PairFlowNet(shape)
        monkeypatch.setattr(model, "flow_from_halves", flownet)
        detector = WindowRunner(model, preprocess=preprocess, flow_mode=mode)
        done = [t for image in frames[:5] for t, _ in detector.step(image)]
        # frame 2's window (2-3..2+3, clamped to 0..4) is all there: flows to 0, 1, 3, 4
        results[mode] = detector._flows_from(2, [0, 1, 3, 4])
        assert done + [t for t, _ in detector.flush()] == list(range(5))
        # direct: one FlowNet pair per (output frame, other frame), plus the 4 of the explicit call
        # above; chained: 2 per new frame after the first, nothing more
        assert flownet.pairs == (sum(len(set(detector.window_indices(t, 4)) - {t}) for t in range(5)) + 4
                                 if mode == "direct" else 2 * 4)
    for i, flow in results["direct"].items():
        expected = (i - 2) * _PairFlowNet.STEP
        np.testing.assert_allclose(flow.asnumpy()[0, :, 2, 3], expected, atol=1e-6)
        # chained flows are sums of one-step flows sampled along the way: equal for a uniform
        # motion wherever the chain stays inside the map (here: pixel (2, 3) and its neighbours)
        np.testing.assert_allclose(results["chained"][i].asnumpy()[0, :, 2, 3], expected, atol=1e-6)


def test_chained_and_direct_agree_for_zero_flow_nets():
    # a fresh FGFA's flow predictors start at zero: every flow is 0 and the two modes coincide
    cfg, model = _tiny_model(True, k=2)
    for pred in model.flownet.flow_preds:
        for param in pred.collect_params().values():
            param.set_data(mx.nd.zeros(param.shape))
    rng = np.random.RandomState(5)
    clip = [rng.randint(0, 255, (120, 160, 3)).astype(np.uint8) for _ in range(6)]
    out = {mode: list(enumerate(WindowRunner(model, preprocess=make_preprocess(cfg), flow_mode=mode).detect_video(clip)))
           for mode in ("direct", "chained")}
    for (t0, (b0, s0, l0)), (t1, (b1, s1, l1)) in zip(out["direct"], out["chained"]):
        assert t0 == t1 and len(b0) == len(b1) > 0
        np.testing.assert_allclose(b0, b1, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(s0, s1, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="flow_mode"):
        WindowRunner(model, preprocess=make_preprocess(cfg), flow_mode="sideways")


def test_chained_mode_with_k0_and_builtin_ops_path(monkeypatch):
    from lib import ops
    cfg, model = _tiny_model(True, k=0)
    rng = np.random.RandomState(9)
    clip = [rng.randint(0, 255, (120, 160, 3)).astype(np.uint8) for _ in range(3)]
    out = list(enumerate(WindowRunner(model, preprocess=make_preprocess(cfg), flow_mode="chained").detect_video(clip)))
    assert [t for t, _ in out] == [0, 1, 2]
    # with MXNet's built-in operators requested, the window is aggregated by the composite graph
    cfg, model = _tiny_model(True, k=1)
    fused = WindowRunner(model, preprocess=make_preprocess(cfg)).detect_video(clip)

    def no_fused(*args, **kwargs):
        raise AssertionError("the fused CPU kernel ran although built-in operators were requested")
    monkeypatch.setattr(ops, "flow_aggregate", no_fused)
    ops.set_builtin_default(True)
    try:
        composite = WindowRunner(model, preprocess=make_preprocess(cfg)).detect_video(clip)
    finally:
        ops.set_builtin_default(False)
    for (b0, s0, _), (b1, s1, _) in zip(fused, composite):
        np.testing.assert_allclose(b0, b1, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(s0, s1, rtol=1e-4, atol=1e-5)


def test_int8_features_and_head_follow_the_float_ones_and_training_stays_float():
    from mxnet import autograd
    cfg, model = _tiny_model(True, k=1)
    rng = np.random.RandomState(3)
    preprocess = make_preprocess(cfg)
    # smooth images (natural-image-like statistics) for calibration and test
    images = [cv2_blur(rng.randint(0, 255, (120, 160, 3)).astype(np.uint8)) for _ in range(6)]
    data = np.stack([preprocess(im)[0] for im in images])
    im_info = mx.nd.array(preprocess(images[4])[1][None])
    reference = model.frame_cache(mx.nd.array(data[4:])).asnumpy()
    feat = mx.nd.array(reference[:1, :model.feat_channels])
    float_maps = [m.asnumpy() for m in model.head.maps(feat)]
    float_rois, float_probs, _ = model.detect_from_feature(feat, im_info)
    model.quantize_int8(data[:4])
    int8 = model.frame_cache(mx.nd.array(data[4:])).asnumpy()
    assert int8.shape == reference.shape
    # random weights through 20 int8 layers: measured correlation 0.985, mean error 19%
    assert np.corrcoef(int8.ravel(), reference.ravel())[0, 1] > 0.95
    assert np.abs(int8 - reference).mean() < 0.3 * np.abs(reference).mean()
    # the head's convolutions in int8 on the same float feature map: 4 maps of the float shapes and values
    int8_maps = [m.asnumpy() for m in model._infer.int8_maps(feat)]
    for q, f in zip(int8_maps, float_maps):
        assert q.shape == f.shape
        assert np.corrcoef(q.ravel(), f.ravel())[0, 1] > 0.99
    rois, probs, deltas = model.detect_from_feature(feat, im_info)   # int8 maps -> float proposal + pooling
    assert rois.shape == float_rois.shape and probs.shape == float_probs.shape and deltas.shape[1] == 8
    np.testing.assert_allclose(probs.asnumpy().sum(axis=1), 1.0, rtol=1e-5)
    with autograd.record():   # training never sees the int8 graph (BatchNorm uses batch statistics
        trained = model.frame_cache(mx.nd.array(data[4:]))   # there: compare with the float net's)
        float_train = model.embed(model.features(mx.nd.array(data[4:])))
    np.testing.assert_array_equal(trained.asnumpy()[:, model.feat_channels:], float_train.asnumpy())


def test_int8_flownet_follows_the_float_one():
    """quantize_int8 with aggregation also quantizes the FlowNet (flow predictors kept in float)."""
    cfg, model = _tiny_model(True, k=1)
    rng = np.random.RandomState(4)
    for conv in model.flownet.flow_preds:   # they start at zero (identity warp): give them weights
        conv.weight.set_data(mx.nd.array(rng.normal(0, 0.05, conv.weight.shape)))
    preprocess = make_preprocess(cfg)
    images = [cv2_blur(rng.randint(0, 255, (120, 160, 3)).astype(np.uint8)) for _ in range(6)]
    data = mx.nd.array(np.stack([preprocess(im)[0] for im in images]))
    cur, ref = data[4:5], data[5:6]
    reference = model.flow(cur, ref).asnumpy()
    np.testing.assert_array_equal(reference, model.flownet(cur, ref).asnumpy())
    model.quantize_int8(data[:4].asnumpy())
    assert model._infer.int8_flow is not None and model._infer.int8_embed is not None
    int8 = model.flow(cur, ref).asnumpy()
    assert int8.shape == reference.shape and np.abs(reference).mean() > 0
    assert np.corrcoef(int8.ravel(), reference.ravel())[0, 1] > 0.95
    both = model.flow(data[4:6], data[4:6][::-1])   # another batch size re-binds the int8 graph
    np.testing.assert_allclose(both.asnumpy()[:1], int8, rtol=1e-4, atol=1e-5)


def cv2_blur(image):
    import cv2
    return cv2.GaussianBlur(image, (9, 9), 0)


def test_hybridized_inference_equals_imperative():
    cfg, model = _tiny_model(True, k=1)
    rng = np.random.RandomState(2)
    clip = [rng.randint(0, 255, (120, 160, 3)).astype(np.uint8) for _ in range(3)]
    detector = WindowRunner(model, preprocess=make_preprocess(cfg))
    before = detector.detect_video(clip)
    model.hybridize_for_inference()
    after = detector.detect_video(clip)
    for (b0, s0, l0), (b1, s1, l1) in zip(before, after):
        assert len(b0) == len(b1)
        np.testing.assert_allclose(b0, b1, rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(s0, s1, rtol=1e-3, atol=1e-4)


def test_compiled_ops_equal_mxnet_builtin_ops_end_to_end():
    """The whole window inference with lib.ops kernels equals the one with MXNet's contrib operators."""
    cfg, model = _tiny_model(True, k=1)
    rng = np.random.RandomState(3)
    clip = [rng.randint(0, 255, (120, 160, 3)).astype(np.uint8) for _ in range(3)]
    detector = WindowRunner(model, preprocess=make_preprocess(cfg))
    compiled = detector.detect_video(clip)
    model.use_builtin_ops(True)
    builtin = detector.detect_video(clip)
    for (b0, s0, l0), (b1, s1, l1) in zip(compiled, builtin):
        assert len(b0) == len(b1) > 0
        np.testing.assert_allclose(b0, b1, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(s0, s1, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(l0, l1)


def test_every_set_option_is_kept():
    # `--set A --set B` kept only B before (argparse nargs="*" without extend)
    from fgfa.experiment import parse_args
    args = parse_args(["--cfg", TINY, "--set", "TEST.K=1", "TRAIN.EPOCHS=2", "--set", "TEST.QUANTIZE=int8"])
    assert args.set == ["TEST.K=1", "TRAIN.EPOCHS=2", "TEST.QUANTIZE=int8"]
    cfg = get_config(TINY, args.set)
    assert (cfg.TEST.K, cfg.TRAIN.EPOCHS, cfg.TEST.QUANTIZE) == (1, 2, "int8")


def test_dis_flow_window_follows_a_known_translation():
    """NETWORK.FLOW dis: the window's flows come from OpenCV DIS on the resized frames, on the feature
    grid (a texture moving 16 px = 1 feature cell per frame to the right gives +-1 cell), and every
    frame still gets its result."""
    from fgfa.data import resize_image
    cfg, model = _tiny_model(True, k=1)
    cfg.NETWORK.FLOW = "dis"
    rng = np.random.RandomState(7)
    big = cv2.resize(rng.randint(0, 255, (30, 40, 3)).astype(np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    clip = [np.ascontiguousarray(big[100:220, 200 - 16 * t:360 - 16 * t]) for t in range(3)]   # 120x160
    runner = WindowRunner(model, preprocess=make_preprocess(cfg))
    assert runner.flow == "dis"
    runner.reset()
    for image in clip:
        runner._add(image)
    # the RGB frame DIS sees is exactly the resized input (recovered from the normalised tensor)
    resized, _ = resize_image(clip[0], *input_scale(cfg))
    np.testing.assert_array_equal(runner.frames[0].half, resized)
    scale = resized.shape[1] / clip[0].shape[1]
    flows = runner._flows_from(1, [0, 2])
    for index, sign in ((0, -1.0), (2, 1.0)):
        grid = flows[index].asnumpy()[0]
        inner = grid[:, 1:-1, 1:-1].reshape(2, -1)
        np.testing.assert_allclose(np.median(inner, axis=1), [sign * 16 * scale / 16, 0.0], atol=0.15)
    results = runner.detect_video(clip)
    assert len(results) == 3 and all(len(r) == 3 for r in results)
