"""lib.layers.relu6: the fast training form against numpy and against MXNet's clip; inference keeps
clip so that the MKLDNN backend still fuses it into the convolution. SubPixelUpsample against MXNet's
transposed convolution."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from lib.layers import ReLU6, SubPixelUpsample, clip_relu6, relu6, replace_relu6


def _values_and_grad(x, head):
    x = x.copy()
    x.attach_grad()
    with mx.autograd.record():
        y = relu6(mx.nd, x)
    y.backward(head)
    return y.asnumpy(), x.grad.asnumpy()


def test_training_form_matches_numpy_values_and_gradients():
    rng = np.random.RandomState(0)
    xs = rng.normal(0, 4, (2, 3, 17, 19)).astype(np.float32)
    xs[0, 0, 0, :5] = [-1e-3, 0.0, 5.999, 6.0, 6.001]
    head = rng.normal(0, 1, xs.shape).astype(np.float32)
    y, grad = _values_and_grad(mx.nd.array(xs), mx.nd.array(head))
    np.testing.assert_array_equal(y, np.clip(xs, 0, 6))
    # as clip: the gradient passes on the closed interval [0, 6]
    np.testing.assert_array_equal(grad, head * ((xs >= 0) & (xs <= 6)))


def test_training_form_equals_clip_including_the_edges():
    rng = np.random.RandomState(1)
    xs = rng.normal(0, 4, (4, 8, 9, 9)).astype(np.float32)
    xs[0, 0] = 0.0   # exact zeros are common: BatchNorm maps a constant channel to beta = 0
    xs[0, 1] = 6.0
    head = mx.nd.array(rng.normal(0, 1, xs.shape))
    fast = _values_and_grad(mx.nd.array(xs), head)
    with clip_relu6():
        reference = _values_and_grad(mx.nd.array(xs), head)
    for a, b in zip(fast, reference):
        np.testing.assert_array_equal(a, b)


class _ConvUnit(nn.HybridBlock):
    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.conv = nn.Conv2D(16, 3, padding=1, in_channels=8)
            self.bn = nn.BatchNorm(in_channels=16)
            self.act = ReLU6()

    def hybrid_forward(self, F, x):
        return self.act(self.bn(self.conv(x)))


def _exported_ops(block, tmp_path, name):
    block.export(str(tmp_path / name))
    graph = json.loads((tmp_path / f"{name}-symbol.json").read_text())
    return [n["op"] for n in graph["nodes"] if n["op"] != "null"]


def test_inference_graph_keeps_clip_and_mkldnn_fuses_it(tmp_path):
    unit = _ConvUnit()
    unit.initialize()
    x = mx.nd.random.normal(0, 3, (1, 8, 12, 12))
    unit.hybridize(backend="MKLDNN", static_alloc=True, static_shape=True)
    out = unit(x)
    # conv + BatchNorm + ReLU6 become one op: the ReLU6 is clip, which MKLDNN fuses as bounded relu
    assert _exported_ops(unit, tmp_path, "fused") == ["_sg_mkldnn_conv"]
    unit.hybridize(False)
    np.testing.assert_allclose(out.asnumpy(), unit(x).asnumpy(), rtol=1e-4, atol=1e-4)


def test_replace_relu6_swaps_gluoncv_blocks_and_keeps_parameter_names():
    from gluoncv.model_zoo.mobilenet import MobileNetV2
    from gluoncv.nn.block import ReLU6 as GluoncvReLU6
    reference = MobileNetV2(multiplier=0.25, prefix="")
    ours = MobileNetV2(multiplier=0.25, prefix="")
    names = sorted(reference.collect_params().keys())
    assert replace_relu6(ours) > 0

    def blocks(b):
        yield b
        for c in b._children.values():
            yield from blocks(c)
    assert not any(isinstance(b, GluoncvReLU6) for b in blocks(ours))
    assert sorted(ours.collect_params().keys()) == names
    x = mx.nd.random.normal(0, 1, (2, 3, 64, 64))
    reference.initialize(mx.init.Xavier())
    ours.initialize()
    reference(x), ours(x)   # deferred shapes
    ours.collect_params().load_dict({k: v.data() for k, v in reference.collect_params().items()})
    with mx.autograd.record():   # training mode: our fast form against gluoncv's clip
        a, b = reference(x), ours(x)
    np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_subpixel_upsample_equals_the_transposed_convolution(use_bias):
    deconv = nn.Conv2DTranspose(5, 4, 2, 1, use_bias=use_bias, in_channels=3)
    deconv.initialize(mx.init.Normal(1.0))
    if use_bias:
        deconv.bias.set_data(mx.nd.random.normal(shape=(5,)))
    x = mx.nd.random.normal(shape=(2, 3, 7, 9))     # odd sizes: every border phase is exercised
    block = SubPixelUpsample.from_transposed(deconv)
    expected = deconv(x).asnumpy()
    assert expected.shape == (2, 5, 14, 18)
    np.testing.assert_allclose(block(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    block.hybridize()
    np.testing.assert_allclose(block(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_subpixel_upsample_rejects_other_transposed_convolutions():
    deconv = nn.Conv2DTranspose(4, 2, 2, 0, in_channels=3, prefix="up_")
    deconv.initialize()
    with pytest.raises(ValueError, match="up: only 4x4 stride-2 pad-1"):
        SubPixelUpsample.from_transposed(deconv)
    fits_not = SubPixelUpsample(4, 8)
    fits_not.initialize()
    good = nn.Conv2DTranspose(4, 4, 2, 1, in_channels=3)
    good.initialize()
    with pytest.raises(ValueError, match="does not fit"):
        fits_not.load_transposed(good)
