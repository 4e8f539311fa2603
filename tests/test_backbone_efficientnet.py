"""EfficientNet-Lite0 in Gluon against an independent numpy forward pass of the package's .pth.

The reference below works on the PyTorch names of the file (not on our converted names), writes the
architecture out again from the spec's table and pads exactly as TensorFlow's "SAME" does, computing
each stride-2 convolution's asymmetric padding from its input size. So it checks at once the name
conversion, the Gluon architecture, and the "same" padding mode's reversal trick.
"""
import math
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

import lib.pretrained as pretrained
from lib.backbones import EfficientNetLite, round_channels
from lib.config import PROJECT_ROOT
from lib.pretrained.torch_reader import read_torch_state_dict

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")
MINIVAN_FRAME = os.path.join(SPEEDTRAP, "images", "frame689.jpg")
MINIVAN_BOX = (858, 422, 1188, 580)   # x1, y1, x2, y2 of the minivan in frame689 (looked up by eye)
MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255
# spec table: expansion, kernel, first stride, repeats, output channels
STAGES = [(1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80),
          (6, 5, 1, 3, 112), (6, 5, 2, 4, 192), (6, 3, 1, 1, 320)]
CAR_CLASSES = {"minivan", "beach wagon", "cab", "convertible", "jeep", "limousine", "sports car", "racer",
               "pickup", "police van", "moving van", "minibus", "ambulance", "Model T"}


def _state_dict():
    try:
        path = pretrained.package_file(pretrained.SOURCES["efficientnet_lite0:imagenet"])
    except pretrained.PretrainedError as exc:
        pytest.fail(f"the pinned weights package is part of requirements.txt: {exc}")
    return {k: v.astype(np.float64) for k, v in read_torch_state_dict(path).items()}


def _pads(size, kernel, stride, dilation, mode):
    span = dilation * (kernel - 1) + 1
    if mode == "symmetric":
        return (span - 1) // 2, (span - 1) // 2
    out = math.ceil(size / stride)                     # TF "SAME"
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def np_conv(x, w, stride=1, dilation=1, depthwise=False, mode="same"):
    """x (C,H,W), w (O, C or 1, k, k); im2col for dense convs, tap sums for depthwise ones."""
    k = w.shape[-1]
    (top, bottom), (left, right) = (_pads(n, k, stride, dilation, mode) for n in x.shape[1:])
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    span = dilation * (k - 1) + 1
    ho, wo = (x.shape[1] - span) // stride + 1, (x.shape[2] - span) // stride + 1
    taps = [x[:, i * dilation: i * dilation + stride * (ho - 1) + 1: stride,
              j * dilation: j * dilation + stride * (wo - 1) + 1: stride] for i in range(k) for j in range(k)]
    if depthwise:
        return sum(w[:, 0, t // k, t % k][:, None, None] * tap for t, tap in enumerate(taps))
    cols = np.stack(taps, 1).reshape(-1, ho * wo)            # (C*k*k, ho*wo), C-major as w
    return (w.reshape(w.shape[0], -1) @ cols).reshape(w.shape[0], ho, wo)


def np_bn(x, sd, name):
    scale = sd[name + ".weight"] / np.sqrt(sd[name + ".running_var"] + 1e-3)
    return (x - sd[name + ".running_mean"][:, None, None]) * scale[:, None, None] + sd[name + ".bias"][:, None, None]


def relu6(x):
    return np.clip(x, 0, 6)


def reference_forward(sd, image, mode="same", dilate_last=False):
    """-> (block outputs list, logits) for one (3,H,W) normalised image."""
    x = relu6(np_bn(np_conv(image, sd["_conv_stem.weight"], 2, mode=mode), sd, "_bn0"))
    outputs, index = [], 0
    for expansion, kernel, stride, repeats, _ in STAGES:
        for r in range(repeats):
            p = f"_blocks.{index}."
            block_stride, dilation = (stride if r == 0 else 1), 1
            if dilate_last and index >= 11:
                block_stride, dilation = 1, (1 if index == 11 else 2)
            h = x
            if expansion != 1:
                h = relu6(np_bn(np_conv(h, sd[p + "_expand_conv.weight"], mode=mode), sd, p + "_bn0"))
            h = relu6(np_bn(np_conv(h, sd[p + "_depthwise_conv.weight"], block_stride, dilation, True, mode),
                            sd, p + "_bn1"))
            h = np_bn(np_conv(h, sd[p + "_project_conv.weight"], mode=mode), sd, p + "_bn2")
            x = h + x if block_stride == 1 and h.shape == x.shape else h
            outputs.append(x)
            index += 1
    head = relu6(np_bn(np_conv(x, sd["_conv_head.weight"], mode=mode), sd, "_bn1"))
    logits = sd["_fc.weight"] @ head.mean(axis=(1, 2)) + sd["_fc.bias"]
    return outputs, head, logits


def _rgb(path):
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def _normalise(rgb):
    return ((rgb.astype(np.float64) - MEAN) / STD).transpose(2, 0, 1)


def minivan_input():
    """The minivan crop, shorter side to 256, centre 224x224 (standard ImageNet evaluation)."""
    x1, y1, x2, y2 = MINIVAN_BOX
    crop = _rgb(MINIVAN_FRAME)[y1:y2, x1:x2]
    scale = 256 / min(crop.shape[:2])
    resized = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
    return _normalise(resized[top:top + 224, left:left + 224])


def odd_input():
    """A 200x232 crop of another frame: TF "SAME" then pads odd sizes (25, 13 / 29, 15) too."""
    return _normalise(_rgb(os.path.join(SPEEDTRAP, "images", "frame150.jpg"))[300:500, 700:932])


@pytest.fixture(scope="module")
def state_dict():
    return _state_dict()


def _gluon(padding, taps=("s8", "s16", "s32"), dilate_last=False):
    net = EfficientNetLite(taps=taps, classifier=True, padding=padding, dilate_last=dilate_last)
    net.initialize()
    report = pretrained.load_into(net, "efficientnet_lite0:imagenet")
    assert not report.missing and not report.unexpected
    net.hybridize()
    return net


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_lite0_matches_numpy_reference(state_dict, padding):
    net = _gluon(padding)
    for image in (minivan_input(), odd_input()):
        blocks, _, logits = reference_forward(state_dict, image, mode=padding)
        s8, s16, s32, gl_logits = net(mx.nd.array(image[None], dtype="float32"))
        assert np.abs(gl_logits.asnumpy()[0] - logits).max() < 1e-3
        for tap, index in ((s8, 4), (s16, 10), (s32, 15)):
            assert tap.shape[1:] == blocks[index].shape
            assert np.abs(tap.asnumpy()[0] - blocks[index]).max() < 1e-3 * max(1, np.abs(blocks[index]).max())


def test_lite0_classifies_the_minivan_as_a_car(state_dict):
    from gluoncv.data.imagenet.classification import ImageNet1kAttr
    names = ImageNet1kAttr().classes
    net = _gluon("symmetric", taps=())
    logits = net(mx.nd.array(minivan_input()[None], dtype="float32")).asnumpy()[0]
    top5 = [names[i] for i in np.argsort(-logits)[:5]]
    assert CAR_CLASSES & set(top5), top5
    assert top5[0] in CAR_CLASSES, top5
    # the exact reference (TF padding) agrees: a car class first
    _, _, ref_logits = reference_forward(state_dict, minivan_input(), mode="same")
    assert names[int(np.argmax(ref_logits))] in CAR_CLASSES


def test_dilate_last_keeps_stride16_with_the_same_parameters():
    plain = EfficientNetLite(taps=("s8", "s16", "s32", "head"))
    dilated = EfficientNetLite(taps=("s8", "s16", "s32", "head"), dilate_last=True)
    plain_shapes = {n: p.shape for n, p in plain._collect_params_with_prefix().items()}
    assert plain_shapes == {n: p.shape for n, p in dilated._collect_params_with_prefix().items()}
    assert dilated.tap_strides["s32"] == dilated.tap_strides["head"] == 16 and plain.tap_strides["s32"] == 32
    for net in (plain, dilated):
        net.initialize()
        pretrained.load_into(net, "efficientnet_lite0:imagenet")
    x = mx.nd.array(odd_input()[None], dtype="float32")             # 200x232: s16 is 13x15
    p8, p16, p32, phead = plain(x)
    d8, d16, d32, dhead = dilated(x)
    assert d32.shape[2:] == d16.shape[2:] == (13, 15) and p32.shape[2:] == (7, 8)
    np.testing.assert_array_equal(d16.asnumpy(), p16.asnumpy())
    # a-trous: the dense stride-16 maps sampled at even positions are the stride-32 maps
    for dense, sparse in ((d32, p32), (dhead, phead)):
        np.testing.assert_allclose(dense.asnumpy()[:, :, ::2, ::2], sparse.asnumpy(), rtol=1e-4, atol=1e-4)


def test_width_multiplier_rounds_like_efficientnet():
    # round_filters: multiple of 8, never more than 10% under the product
    assert [round_channels(c, 0.5) for c in (16, 24, 40, 80, 112, 192, 320)] == [8, 16, 24, 40, 56, 96, 160]
    assert [round_channels(c, 0.35) for c in (16, 24, 40)] == [8, 8, 16]
    assert round_channels(112, 1.0) == 112 and round_channels(20, 1.0) == 24
    small = EfficientNetLite(width_mult=0.5, taps=("s8", "s16", "s32"))
    small.initialize()
    s8, s16, s32 = small(mx.nd.zeros((1, 3, 96, 128)))
    assert (s8.shape, s16.shape, s32.shape) == ((1, 24, 12, 16), (1, 56, 6, 8), (1, 160, 3, 4))
    assert small.tap_channels["s8"] == 24
    with pytest.raises(pretrained.PretrainedError, match="shape mismatch: blocks.0.project.conv.weight"):
        pretrained.load_into(small, "efficientnet_lite0:imagenet")


def test_taps_and_structural_names():
    net = EfficientNetLite(taps=("s16",))
    names = list(net._collect_params_with_prefix())
    assert names[0] == "stem.conv.weight" and "blocks.0.expand.conv.weight" not in names
    assert "blocks.10.project.bn.running_var" in names and not any(n.startswith("blocks.11.") for n in names)
    assert not any(n.startswith(("head.", "classifier.")) for n in names)
    with pytest.raises(ValueError, match="taps"):
        EfficientNetLite(taps=("s64",))
    with pytest.raises(ValueError, match="padding"):
        EfficientNetLite(padding="valid")
