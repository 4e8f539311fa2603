"""Small layers shared by the detectors.

ReLU6 (M2Det's MobileNetV2, SSDLite, LSTM-SSD) = min(max(x, 0), 6). MXNet 1.9's CPU ``clip`` kernel, which gluoncv and the TF ports use for it,
is slow: on (8, 16, 192, 192) forward + backward takes 58 ms against 21 ms for
minimum(maximum(x, 0), 6), and it was a quarter of an M2Det MobileNetV2 training step
(``python -m bench.train_step``). The two forms give the same values and the same gradients, also at
x == 0 and x == 6, where both pass the gradient. That matters: relu's zero gradient at exactly 0 lets
channels that BatchNorm maps to exactly beta = 0 die, and a tiny LSTM-SSD then stopped learning.
In inference graphs ``clip`` stays, because the MKLDNN backend fuses conv + BatchNorm + clip into one
(int8-quantizable) op and does not fuse the minimum.
"""
import contextlib

import numpy as np
from mxnet import autograd
from mxnet.gluon import nn

from .ops import depth_to_space

_fast_training_form = True


@contextlib.contextmanager
def clip_relu6():
    """Within this context, networks built or traced use ``clip`` in training too (the reference
    form: benchmarks and tests compare the two)."""
    global _fast_training_form
    _fast_training_form = False
    try:
        yield
    finally:
        _fast_training_form = True


def relu6(F, x):
    """min(max(x, 0), 6): the fast form when autograd is training, ``clip`` otherwise (fusable).

    The form is chosen when the graph is traced, so a block hybridized in training and then called for
    inference keeps the training form: same values, only without the fusion.
    """
    if _fast_training_form and autograd.is_training():
        return F.minimum(F.maximum(x, 0.0), 6.0)
    return F.clip(x, 0.0, 6.0)


class ReLU6(nn.HybridBlock):
    """``relu6`` as a block (a drop-in for gluoncv's ``ReLU6``, which has no parameters either)."""

    def hybrid_forward(self, F, x):
        return relu6(F, x)


def iter_blocks(block):
    """``block`` and every block under it, depth first."""
    yield block
    for child in block._children.values():
        yield from iter_blocks(child)


def replace_relu6(block):
    """Swap every gluoncv ``ReLU6`` child of ``block`` (recursively) for ``ReLU6``; returns the count.

    Parameter names are unchanged (neither block has parameters), so gluoncv weight files still load.
    """
    from gluoncv.nn.block import ReLU6 as GluoncvReLU6
    count = 0
    for name, child in list(block._children.items()):
        if isinstance(child, GluoncvReLU6):
            replacement = ReLU6(prefix=child.prefix)
            block._children[name] = replacement
            # a child registered as an attribute (self.act = ...) is referenced there too; Block's
            # __setattr__ refuses a block of another type, and _children is already updated
            for attr, value in list(vars(block).items()):
                if value is child:
                    object.__setattr__(block, attr, replacement)
            count += 1
        else:
            count += replace_relu6(child)
    return count


class SubPixelUpsample(nn.HybridBlock):
    """The inference form of a 4x4, stride-2, pad-1 transposed convolution (``nn.Conv2DTranspose(c, 4,
    2, 1)``, the FlowNet decoder's upsampling): a 3x3 convolution to 4x the channels, one group per
    output phase (row parity, column parity), then ``depth_to_space``. Same outputs, but a plain
    convolution, which MXNet's MKLDNN quantization takes to int8; it has no int8 Deconvolution, and a
    float deconvolution is several times slower than the int8 convolution on CPUs with VNNI/AMX
    (``python -m bench.fgfa``). The 3x3 kernel carries 2x2 taps per phase (2.25x the MACs).

    Why it is exact: output row 2m + a of the transposed convolution takes input rows m - 1 and m
    through kernel rows 3 and 1 when a = 0, rows m and m + 1 through kernel rows 2 and 0 when a = 1;
    the same for columns. The pixel shuffle is lib.ops.depth_to_space (MXNet's own kernel would cost
    more than the convolution).
    """

    # PHASE_TAPS[a][dy + 1]: kernel row of the transposed convolution that input row m + dy feeds into
    # output row 2m + a (-1: none)
    PHASE_TAPS = ((3, 1, -1), (-1, 2, 0))

    def __init__(self, channels, in_channels, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        with self.name_scope():
            self.conv = nn.Conv2D(4 * channels, 3, 1, 1, in_channels=in_channels, use_bias=use_bias)

    def hybrid_forward(self, F, x):
        return depth_to_space(self.conv(x), 2, F=F)

    @classmethod
    def from_transposed(cls, deconv, **kwargs):
        """A block with the outputs of ``deconv`` (an initialised Conv2DTranspose(c, 4, 2, 1)),
        holding a copy of its weights."""
        in_channels, channels = deconv.weight.shape[:2]
        block = cls(channels, in_channels, deconv.bias is not None, **kwargs)
        block.initialize(ctx=deconv.weight.list_ctx())
        return block.load_transposed(deconv)

    def load_transposed(self, deconv):
        """Copy the weights of ``deconv`` (an initialised Conv2DTranspose(c, 4, 2, 1) with this block's
        channel counts and bias setting) into this (initialised) block; returns the block."""
        kernel, strides, padding = (deconv._kwargs[k] for k in ("kernel", "stride", "pad"))
        if tuple(kernel) != (4, 4) or tuple(strides) != (2, 2) or tuple(padding) != (1, 1):
            raise ValueError(f"{deconv.name}: only 4x4 stride-2 pad-1 transposed convolutions have a "
                             f"sub-pixel form here, got kernel {kernel}, stride {strides}, pad {padding}")
        weight = deconv.weight.data().asnumpy()          # (in, out, 4, 4)
        in_channels, channels = weight.shape[:2]
        expected = (4 * channels, in_channels, 3, 3)
        if self.conv.weight.shape != expected or (deconv.bias is None) != (self.conv.bias is None):
            raise ValueError(f"{deconv.name} ({in_channels} -> {channels} channels, bias "
                             f"{deconv.bias is not None}) does not fit {self.name} (weight "
                             f"{self.conv.weight.shape}, bias {self.conv.bias is not None})")
        conv_weight = np.zeros((2, 2, channels, in_channels, 3, 3), weight.dtype)
        for a in range(2):
            for b in range(2):
                for ky_pos, ky in enumerate(self.PHASE_TAPS[a]):
                    for kx_pos, kx in enumerate(self.PHASE_TAPS[b]):
                        if ky >= 0 and kx >= 0:
                            conv_weight[a, b, :, :, ky_pos, kx_pos] = weight[:, :, ky, kx].T
        # depth_to_space takes channel (a * 2 + b) * channels + o to phase (a, b) of output channel o
        self.conv.weight.set_data(conv_weight.reshape(expected))
        if deconv.bias is not None:
            self.conv.bias.set_data(np.tile(deconv.bias.data().asnumpy(), 4))
        return self
