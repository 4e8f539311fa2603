"""Multiply-accumulates (MACs) of the convolutions of any Gluon block, from one real forward pass.

Benchmarks divide these by their measured latency (GMAC/s) to tell a model that is slow because it
does much work from one that runs below the machine's rate. Forward hooks only fire imperatively, so
the block must not be hybridized (pass a fresh copy of the model). Convolutions and deconvolutions
are counted; element-wise ops, pooling and BatchNorm (folded into the conv at inference) are not, as
in the papers' MAC figures. Dilation does not change the count.
"""
import mxnet as mx
from mxnet.gluon import nn

from .layers import iter_blocks

_CONVS = (nn.Conv2D, nn.Conv2DTranspose)


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _builtin_conv_macs(conv, args, output):
    x, y = _first(args), _first(output)
    kh, kw = conv._kwargs["kernel"]
    groups = conv._kwargs["num_group"]
    if isinstance(conv, nn.Conv2DTranspose):
        batch, in_c, h, w = x.shape
        return batch * h * w * (in_c // groups) * y.shape[1] * kh * kw
    batch, out_c, h, w = y.shape
    return batch * h * w * out_c * (x.shape[1] // groups) * kh * kw


def count_macs_of(root, run):
    """MACs of every convolution under ``root`` that fires while ``run()`` executes (each call counted).

    Counted: nn.Conv2D / nn.Conv2DTranspose, and any block with a ``call_macs(inputs, output)`` method
    (blocks that run F.Convolution on their own parameters, e.g. prunable or grouped units, say what
    one call costs). Only imperative calls fire hooks: hybridized parts of ``root`` must be reset
    first (the caller knows which, and re-hybridizes afterwards).
    """
    total, handles = [0], []
    for b in iter_blocks(root):
        if hasattr(b, "call_macs"):
            handles.append(b.register_forward_hook(lambda blk, args, out: total.__setitem__(
                0, total[0] + int(blk.call_macs(args, out)))))
        elif isinstance(b, _CONVS):
            handles.append(b.register_forward_hook(lambda blk, args, out: total.__setitem__(
                0, total[0] + _builtin_conv_macs(blk, args, out))))
    try:
        run()
        mx.nd.waitall()
    finally:
        for h in handles:
            h.detach()
    return int(total[0])


def conv_macs(block, *inputs):
    """MACs of the convolutions that run in ``block(*inputs)`` (see count_macs_of).

    Conv: out_h * out_w * out_c * (in_c / groups) * kh * kw per sample; deconv: the same with the
    input's spatial size (each input pixel scatters a kernel). Multiplied by the batch size.
    """
    if getattr(block, "_active", False):
        raise ValueError("conv_macs needs an un-hybridized block: forward hooks do not fire in a "
                         "hybridized graph")
    return count_macs_of(block, lambda: block(*inputs))
