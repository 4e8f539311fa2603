"""lib.flops.conv_macs against hand-counted multiply-accumulates."""
import mxnet as mx
import pytest
from mxnet.gluon import nn

from lib.flops import conv_macs


def _net():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, in_channels=3),                  # 10*10 * 8 * 3 * 9 = 21600
            nn.Activation("relu"),
            nn.Conv2D(8, 3, padding=2, dilation=2, groups=4, in_channels=8),  # 10*10 * 8 * 2 * 9 = 14400
            nn.MaxPool2D(2),                                             # not counted
            nn.Conv2DTranspose(4, 2, strides=2, in_channels=8))          # 5*5 * 8 * 4 * 2*2 = 3200
    net.initialize()
    return net


def test_conv_macs_counts_convs_groups_dilation_and_deconvs_by_hand():
    net = _net()
    assert conv_macs(net, mx.nd.zeros((1, 3, 10, 10))) == 21600 + 14400 + 3200
    assert conv_macs(net, mx.nd.zeros((2, 3, 10, 10))) == 2 * (21600 + 14400 + 3200)


def test_conv_macs_counts_a_block_called_twice_twice():
    class Twice(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2D(3, 1, in_channels=3)

        def hybrid_forward(self, F, x):
            return self.conv(self.conv(x))
    net = Twice()
    net.initialize()
    assert conv_macs(net, mx.nd.zeros((1, 3, 4, 4))) == 2 * 16 * 3 * 3


def test_conv_macs_refuses_a_hybridized_block():
    net = _net()
    net.hybridize()
    with pytest.raises(ValueError, match="un-hybridized"):
        conv_macs(net, mx.nd.zeros((1, 3, 10, 10)))
