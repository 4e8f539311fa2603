"""A fine-tuning start of every detector family from the pip-installed ImageNet weights (PRETRAINED):
every trunk parameter is loaded (the converted .params file is the oracle, value by value), and what
stays random is exactly the detector's own layers."""
import mxnet as mx
import numpy as np
import pytest

from lib import pretrained
from lib.config import ConfigError

LITE0 = "efficientnet_lite0:imagenet"


@pytest.fixture(scope="module")
def lite0_params():
    """{structural name: array} of the converted EfficientNet-Lite0 file."""
    return {k: v.asnumpy() for k, v in mx.nd.load(pretrained.resolve(LITE0)).items()}


def _assert_trunk_equals(block, prefix, params):
    """Every parameter of ``block`` under ``prefix`` equals the file's of the same structural name."""
    own = {name[len(prefix):]: p for name, p in block._collect_params_with_prefix().items()
           if name.startswith(prefix)}
    assert own, f"no parameter under {prefix!r}"
    for name, param in own.items():
        np.testing.assert_array_equal(param.data().asnumpy(), params[name], err_msg=name)
    return own


def test_rfcn_lite0_trunk_at_stride_16(lite0_params, caplog):
    from fgfa.config import get_config
    from fgfa.train import build_model
    from lib.config import PROJECT_ROOT
    cfg = get_config(f"{PROJECT_ROOT}/experiments/rfcn/cfgs/rfcn_tiny.yaml",
                     ["NETWORK.BACKBONE=efficientnet_lite0", "NETWORK.WIDTH=1.0", "NETWORK.NORM=frozen",
                      "NETWORK.FROZEN_STAGES=2", f"PRETRAINED={LITE0}"])
    with caplog.at_level("INFO"):
        model = build_model(cfg, 2, mx.cpu())
    trunk = _assert_trunk_equals(model.features.backbone, "", lite0_params)
    assert len(trunk) == 5 + 10 + 15 * 15    # stem conv + BN (4 arrays); block 0: 2 convs; blocks 1-15: 3 each
    assert "loaded" in caplog.text and "stay random" not in caplog.text   # the whole trunk came from the file
    # frozen: the stem and blocks 0-2 (the stride-4 stage), nothing after
    frozen = {n for n, p in model.features.backbone._collect_params_with_prefix().items() if p.grad_req == "null"}
    assert any(n.startswith("stem.conv") for n in frozen) and any(n.startswith("blocks.2.") for n in frozen)
    assert not any(n.startswith("blocks.3.conv") or n.startswith("blocks.3.expand.conv") for n in frozen)
    # the stride-32 stage runs dilated: stride 16 out
    feat = model.features.backbone(mx.nd.zeros((1, 3, 64, 96)))
    assert feat.shape == (1, 320, 4, 6)


def test_m2det_lite0_and_vgg16_hed(lite0_params):
    from m2det import config as m2det_config
    from m2det.detector import build_model
    from lib.config import PROJECT_ROOT
    cfg = m2det_config.load(f"{PROJECT_ROOT}/experiments/m2det/cfgs/tiny.yaml",
                            ["MODEL.BACKBONE=efficientnet_lite0", "MODEL.BACKBONE_WIDTH=1.0", f"PRETRAINED={LITE0}"])
    net = build_model(cfg, 2)
    loaded = _assert_trunk_equals(net.backbone, "net.", lite0_params)
    assert "head.conv.weight" not in loaded               # the taps end at block 10: no head, no classifier
    # VGG16 from HED: the 13 convs load into VGG16Reduced through the name map, fc6 / fc7 stay random
    vgg = m2det_config.load(f"{PROJECT_ROOT}/experiments/m2det/cfgs/tiny.yaml",
                            ["MODEL.BACKBONE=vgg16", "INPUT.SIZE=320", "PRETRAINED=vgg16_hed:bsds500"])
    from m2det.backbones import build_backbone, load_pretrained
    backbone = build_backbone("vgg16")
    backbone.initialize()
    report = load_pretrained(backbone, "vgg16", "vgg16_hed:bsds500", (list(vgg.INPUT.MEAN), list(vgg.INPUT.STD)))
    assert len(report.loaded) == 26 and sorted(report.missing) == ["stage2.10.bias", "stage2.10.weight",
                                                                   "stage2.8.bias", "stage2.8.weight"]


def test_lstm_ssd_lite0_large_extractor(lite0_params, tmp_path):
    from lstm_ssd import config as lstm_config
    from lstm_ssd.detector import build_detector, load_model, load_pretrained, save_model
    from lib.config import PROJECT_ROOT
    cfg = lstm_config.load(f"{PROJECT_ROOT}/experiments/lstm_ssd/cfgs/tiny_test.yaml",
                           ["MODEL.TYPE=ssdlite", "MODEL.LARGE.NET=efficientnet_lite0", "MODEL.LARGE.WIDTH=1.0",
                            "MODEL.LARGE.OUTPUT_STRIDE=32"])
    net = build_detector(cfg)
    net(mx.nd.zeros((1, 1, 3) + net.image_hw))
    reports = load_pretrained(net, LITE0)
    assert len(reports) == 1 and not reports[0].missing
    _assert_trunk_equals(net.large.backbone, "net.", lite0_params)
    # the extractor normalises its RGB 0..255 input with ImageNet's mean / std (what the weights expect)
    x = mx.nd.array(np.random.RandomState(0).uniform(0, 255, (1, 3) + net.image_hw))
    direct = net.large.backbone.net((x - mx.nd.array([123.675, 116.28, 103.53]).reshape((1, 3, 1, 1)))
                                    / mx.nd.array([58.395, 57.12, 57.375]).reshape((1, 3, 1, 1)))
    np.testing.assert_allclose(net.large(x).asnumpy(), direct.asnumpy(), rtol=1e-5, atol=1e-5)
    # saved as a model file (with its channel counts, which pruning never changes for Lite0) it loads back
    path = save_model(net, str(tmp_path / "lite0.params"))
    clip = x.expand_dims(0)
    np.testing.assert_allclose(load_model(cfg, path)(clip)[0].asnumpy(), net(clip)[0].asnumpy(), rtol=1e-5,
                               atol=1e-5)
    # weights of a full-width Lite0 do not fit a MobileNet extractor: an error naming the key
    mobile = lstm_config.load(f"{PROJECT_ROOT}/experiments/lstm_ssd/cfgs/tiny_test.yaml")
    with pytest.raises(pretrained.PretrainedError, match="MODEL.LARGE.NET efficientnet_lite0"):
        load_pretrained(build_detector(mobile), LITE0)


def test_a_missing_source_is_a_config_error_naming_the_key(tmp_path):
    from fgfa.config import get_config
    from fgfa.train import build_model
    from lib.config import PROJECT_ROOT
    cfg = get_config(f"{PROJECT_ROOT}/experiments/rfcn/cfgs/rfcn_tiny.yaml",
                     ["NETWORK.BACKBONE=efficientnet_lite0", f"PRETRAINED={tmp_path / 'nothing.params'}"])
    with pytest.raises(ConfigError, match=r"PRETRAINED: .*nothing\.params"):
        build_model(cfg, 2, mx.cpu())
