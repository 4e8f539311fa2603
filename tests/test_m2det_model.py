"""M2Det network: official pyramid sizes and priors, nearest resize, SFAM weight sharing, inference
graph vs numpy post-processing, export / ONNX parity, backbone weight loading."""
import itertools
import math
import os

import mxnet as mx
import numpy as np
import pytest

from m2det import config as m2det_config
from m2det.detector import build_model
from m2det.export import export_inference_model
from m2det.detector import M2Det, M2DetInference, postprocess
from m2det.layers import NearestResize
from m2det.sfam import SFAM

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "experiments", "m2det", "cfgs", "tiny.yaml")


def official_feature_sizes(size, num_layers=6, size_the=2):
    """The official code's reglayer_scale (data/anchors.py) re-implemented."""
    out = []
    for i in range(num_layers + 1):
        size = math.ceil(size / 2.0)
        if i >= 2:
            out.append(size)
            if i == num_layers and size_the:
                out.append(size - size_the)
    return out


def official_priors(size, feature_sizes, steps, pattern):
    """The official PriorBox (layers/functions/prior_box.py) in numpy, converted to corners."""
    min_sizes = [round(x * size, 2) for x in pattern[:-1]]
    max_sizes = [round(x * size, 2) for x in pattern[1:]]
    rows = []
    for k, f in enumerate(feature_sizes):
        for i, j in itertools.product(range(f), repeat=2):
            f_k = size / steps[k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = min_sizes[k] / size
            rows.append([cx, cy, s_k, s_k])
            s_prime = math.sqrt(s_k * max_sizes[k] / size)
            rows.append([cx, cy, s_prime, s_prime])
            for ar in (2, 3):
                rows.append([cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)])
                rows.append([cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)])
    c = np.clip(np.array(rows), 0, 1)
    return np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], axis=1)


@pytest.mark.parametrize("size,expected_sizes,expected_priors,cfg_file", [
    (320, [40, 20, 10, 5, 3, 1], 12810, "m2det320_vgg.yaml"),
    (512, [64, 32, 16, 8, 4, 2], 32760, "m2det512_vgg.yaml"),
    (800, [100, 50, 25, 13, 7, 5], 80208, "m2det800_vgg.yaml"),
])
def test_official_pyramid_and_priors(size, expected_sizes, expected_priors, cfg_file):
    cfg = m2det_config.load(os.path.join(os.path.dirname(TINY), cfg_file))
    assert cfg.INPUT.SIZE == size and cfg.MODEL.BACKBONE == "vgg16" and cfg.MODEL.NUM_LEVELS == 8
    net = M2Det(cfg.MODEL, 80, cfg.INPUT.SIZE)  # shapes only: no weights are allocated
    assert expected_sizes == official_feature_sizes(size)
    assert net.feature_sizes == [(f, f) for f in expected_sizes]
    assert net.num_priors == expected_priors
    reference = official_priors(size, expected_sizes, cfg.MODEL.PRIORS.STEPS, cfg.MODEL.PRIORS.SIZE_PATTERN)
    np.testing.assert_allclose(net.priors, reference, atol=1e-6)
    # The head's symbolic output has one row per prior.
    data = mx.sym.var("data")
    cls, box = net(data)
    shapes = cls.infer_shape(data=(1, 3, size, size))[1][0], box.infer_shape(data=(1, 3, size, size))[1][0]
    assert shapes == ((1, expected_priors, 81), (1, expected_priors, 4))


def priors_per_axis(input_hw, feature_hw, pattern, ratios=(2, 3)):
    """The official PriorBox with each axis on its own, as centre-form rows: a cell's centre at
    (j + 0.5) / fw, (i + 0.5) / fh; pixel sizes pattern * sqrt(H * W) (rounded to 0.01 px as the
    official mk_anchors rounds pattern * S), square in pixels."""
    height, width = input_hw
    side = math.sqrt(height * width)
    rows = []
    for k, (fh, fw) in enumerate(feature_hw):
        s_min, s_max = round(pattern[k] * side, 2), round(pattern[k + 1] * side, 2)
        shapes = [(s_min, s_min), (math.sqrt(s_min * s_max),) * 2]
        for ar in ratios:
            shapes += [(s_min * math.sqrt(ar), s_min / math.sqrt(ar)), (s_min / math.sqrt(ar), s_min * math.sqrt(ar))]
        for i, j in itertools.product(range(fh), range(fw)):
            rows += [[(j + 0.5) / fw, (i + 0.5) / fh, sw / width, sh / height] for sw, sh in shapes]
    c = np.clip(np.array(rows), 0, 1)
    return np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], axis=1)


def test_non_square_input_pyramid_priors_and_head():
    """INPUT.SIZE [H, W]: each axis keeps its own pyramid (the official size rule per axis), priors
    stay square in pixels, the head has one row per prior; a square [S, S] is the square network."""
    cfg = m2det_config.load(os.path.join(os.path.dirname(TINY), "m2det512_vgg.yaml"),
                            ["INPUT.SIZE=[320, 512]", "MODEL.PRIORS.STEPS=[]", "MODEL.NUM_LEVELS=2"])
    net = M2Det(cfg.MODEL, 3, cfg.INPUT.SIZE)
    assert net.input_hw == (320, 512)
    assert net.feature_sizes == list(zip(official_feature_sizes(320), official_feature_sizes(512)))
    assert net.feature_sizes[0] == (40, 64) and net.feature_sizes[-1] == (1, 2)
    np.testing.assert_allclose(net.priors, priors_per_axis((320, 512), net.feature_sizes,
                                                           cfg.MODEL.PRIORS.SIZE_PATTERN), atol=1e-6)
    # hand-computed first prior: centre (4 / 512, 4 / 320), side 0.06 * sqrt(320 * 512) = 24.29 px
    side = 24.29
    np.testing.assert_allclose(net.priors[0], [4 / 512 - side / 1024, 4 / 320 - side / 640,
                                               4 / 512 + side / 1024, 4 / 320 + side / 640], atol=1e-6)
    cls, box = net(mx.sym.var("data"))
    assert cls.infer_shape(data=(1, 3, 320, 512))[1][0] == (1, net.num_priors, 4)
    square = M2Det(cfg.MODEL, 3, [320, 320])
    assert square.feature_sizes == [(f, f) for f in official_feature_sizes(320)]
    np.testing.assert_array_equal(square.priors, M2Det(cfg.MODEL, 3, 320).priors)
    cfg.MODEL.PRIORS.STEPS = [8, 16, 32, 64, 128, 256]
    with pytest.raises(ValueError, match=r"STEPS .*give \[\] for a non-square INPUT.SIZE \[320, 512\]"):
        M2Det(cfg.MODEL, 3, cfg.INPUT.SIZE)


def test_invalid_input_size_is_a_clear_error():
    cfg = m2det_config.load(None, ["INPUT.SIZE=96"])
    with pytest.raises(ValueError, match="INPUT.SIZE 96 with backbone vgg16 gives no valid pyramid"):
        M2Det(cfg.MODEL, 3, cfg.INPUT.SIZE)
    cfg = m2det_config.load(None, ["INPUT.SIZE=512"])  # 320 size pattern has 7 entries: ok
    cfg.MODEL.PRIORS.SIZE_PATTERN = [0.1, 0.2]
    with pytest.raises(ValueError, match="SIZE_PATTERN needs NUM_SCALES"):
        M2Det(cfg.MODEL, 3, cfg.INPUT.SIZE)


@pytest.mark.parametrize("src,dst", [(3, 5), (7, 13), (1, 3), (5, 10), (13, 25)])
def test_nearest_resize_matches_torch_rule(src, dst):
    x = np.random.RandomState(0).randn(2, 3, src, src).astype(np.float32)
    block = NearestResize((src, src), (dst, dst))
    idx = np.floor(np.arange(dst) * src / dst).astype(int)  # torch legacy 'nearest'
    expected = x[:, :, idx][:, :, :, idx]
    np.testing.assert_array_equal(block(mx.nd.array(x)).asnumpy(), expected)
    block.hybridize()
    np.testing.assert_array_equal(block(mx.nd.array(x)).asnumpy(), expected)


def test_sfam_separate_and_shared_weights():
    separate = SFAM(num_levels=2, num_scales=3, planes=16, use_se=True, reduction=4, shared=False)
    shared = SFAM(num_levels=2, num_scales=3, planes=16, use_se=True, reduction=4, shared=True)
    assert len(separate.se) == 3 and len(shared.se) == 1
    for block in (separate, shared):
        block.initialize(mx.init.Normal(0.5))
    rng = np.random.RandomState(1)
    sizes = [1, 2, 4]  # smallest first, as TUMs return them
    flat = [rng.randn(1, 16, s, s).astype(np.float32) for _ in range(2) for s in sizes]
    outs = separate(*[mx.nd.array(a) for a in flat])
    assert [o.shape for o in outs] == [(1, 32, 4, 4), (1, 32, 2, 2), (1, 32, 1, 1)]
    # numpy squeeze-excitation of the largest scale with the first SE block's weights
    se = separate.se[0]
    cat = np.concatenate([flat[2], flat[5]], axis=1)
    pooled = cat.mean(axis=(2, 3))
    w1, b1 = se.fc1.weight.data().asnumpy()[:, :, 0, 0], se.fc1.bias.data().asnumpy()
    w2, b2 = se.fc2.weight.data().asnumpy()[:, :, 0, 0], se.fc2.bias.data().asnumpy()
    gate = 1 / (1 + np.exp(-(np.maximum(pooled @ w1.T + b1, 0) @ w2.T + b2)))
    np.testing.assert_allclose(outs[0].asnumpy(), cat * gate[:, :, None, None], rtol=1e-4, atol=1e-5)


def test_shared_weights_option_counts_parameters():
    base = ["MODEL.BACKBONE=mobilenetv2", "MODEL.BACKBONE_WIDTH=0.25", "MODEL.SFAM=true"]
    cfg_tiny = m2det_config.load(TINY, base)
    cfg_shared = m2det_config.load(TINY, base + ["MODEL.SHARED_WEIGHTS=true"])
    separate, shared = M2Det(cfg_tiny.MODEL, 2, cfg_tiny.INPUT.SIZE), M2Det(cfg_shared.MODEL, 2, cfg_shared.INPUT.SIZE)
    assert len(separate.ffm2) == 2 and len(shared.ffm2) == 1
    assert len(separate.sfam.se) == 5 and len(shared.sfam.se) == 1


@pytest.fixture(scope="module", params=[(160, 160), (160, 224)], ids=["square", "non-square"])
def tiny_net(request):
    height, width = request.param
    cfg = m2det_config.load(TINY, ["TEST.SCORE_THRESH=0.02", "TEST.MAX_PER_CLASS=20",
                                     "TEST.MAX_PER_IMAGE=30", f"INPUT.SIZE=[{height}, {width}]"])
    mx.random.seed(3)
    net = build_model(cfg, 3)
    # Larger head weights than the training init, so that many priors pass the threshold.
    for param in net.head.collect_params().values():
        param.set_data(mx.nd.random.normal(0, 0.2, shape=param.shape))
    return net, cfg


def test_inference_graph_equals_numpy_postprocessing(tiny_net, tmp_path):
    net, cfg = tiny_net
    x = np.random.RandomState(0).randn(2, 3, *net.input_hw).astype(np.float32)
    cls, box = (o.asnumpy() for o in net(mx.nd.array(x)))
    block = M2DetInference(net, cfg.TEST)
    block.priors.initialize()
    ids, scores, boxes = (o.asnumpy() for o in block(mx.nd.array(x)))
    assert ids.shape == (2, 30, 1) and boxes.shape == (2, 30, 4)
    for i in range(2):
        ref_boxes, ref_scores, ref_labels = postprocess(cls[i], box[i], net.priors, net.input_hw, cfg.TEST,
                                                        net.variances, method="hard")
        valid = ids[i, :, 0] >= 0
        assert valid.sum() == len(ref_scores) > 5
        np.testing.assert_allclose(scores[i, valid, 0], ref_scores, rtol=1e-5)
        np.testing.assert_array_equal(ids[i, valid, 0].astype(int), ref_labels)
        np.testing.assert_allclose(boxes[i, valid], ref_boxes, atol=2e-3)
        assert np.all(ids[i, ~valid] == -1)
    # soft-NMS only re-scores: it keeps at least the hard-NMS detections of each image
    soft = postprocess(cls[0], box[0], net.priors, net.input_hw, cfg.TEST, net.variances, method="linear")
    assert len(soft[1]) >= int((ids[0, :, 0] >= 0).sum())


def test_exported_model_and_onnx_match(tiny_net, tmp_path):
    net, cfg = tiny_net
    paths = export_inference_model(net, cfg, ["a", "b", "c"], str(tmp_path), onnx=True)
    x = np.random.RandomState(5).randn(1, 3, *net.input_hw).astype(np.float32)
    block = M2DetInference(net, cfg.TEST)
    block.priors.initialize()
    expected = [o.asnumpy() for o in block(mx.nd.array(x))]
    imported = mx.gluon.SymbolBlock.imports(paths["symbol"], ["data"], paths["params"])
    got = [o.asnumpy() for o in imported(mx.nd.array(x))]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    import json
    import onnxruntime
    session = onnxruntime.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
    with open(paths["meta"]) as f:
        meta = json.load(f)
    assert meta["input"]["size"] == list(net.input_hw)     # [H, W], as lib.tools.infer reads it
    order = meta["onnx_outputs"]
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {session.get_inputs()[0].name: x})))
    for name, ref in zip(order, expected):
        np.testing.assert_allclose(outputs[name], ref, rtol=1e-4, atol=1e-3)


def test_user_backbone_weights_are_loaded(tmp_path):
    cfg = m2det_config.load(TINY)
    donor = build_model(cfg, 2)
    path = str(tmp_path / "backbone.params")
    donor.backbone.save_parameters(path)
    cfg.PRETRAINED = path
    net = build_model(cfg, 2)
    for (name, a), (_, b) in zip(sorted(donor.backbone._collect_params_with_prefix().items()),
                                 sorted(net.backbone._collect_params_with_prefix().items())):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy(), err_msg=name)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101", "mobilenetv2", "vgg16_bn"])
def test_other_backbones_give_the_official_320_pyramid(backbone):
    cfg = m2det_config.load(os.path.join(os.path.dirname(TINY), "m2det320_vgg.yaml"),
                              [f"MODEL.BACKBONE={backbone}", "MODEL.NUM_LEVELS=2"])
    net = M2Det(cfg.MODEL, 20, cfg.INPUT.SIZE)
    assert net.feature_sizes == [(f, f) for f in (40, 20, 10, 5, 3, 1)] and net.num_priors == 12810
    taps = net.backbone(mx.sym.var("data"))
    strides = [320 // t.infer_shape(data=(1, 3, 320, 320))[1][0][2] for t in taps]
    assert strides == [8, 16]


def test_ssd_pyramid_ablation_has_the_same_priors():
    m2 = build_model(m2det_config.load(TINY), 2)
    ssd = build_model(m2det_config.load(TINY, ["MODEL.PYRAMID=ssd"]), 2)
    assert ssd.feature_sizes == m2.feature_sizes
    np.testing.assert_array_equal(ssd.priors, m2.priors)
    cls, box = ssd(mx.nd.zeros((1, 3, 160, 160)))
    assert cls.shape == (1, ssd.num_priors, 3) and box.shape == (1, ssd.num_priors, 4)
    assert not hasattr(ssd, "tums")
