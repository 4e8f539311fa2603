"""Multiply-accumulates (MACs) of the convolutions of any Gluon block, from one real forward pass.

Benchmarks divide these by their measured latency (GMAC/s) to tell a model that is slow because it
does much work from one that runs below the machine's rate. Forward hooks only fire imperatively, so
the block must not be hybridized (pass a fresh copy of the model). Convolutions and deconvolutions
are counted; element-wise ops, pooling and BatchNorm (folded into the conv at inference) are not, as
in the papers' MAC figures. Dilation does not change the count.
"""
import mxnet as mx
from mxnet.gluon import nn

_CONVS = (nn.Conv2D, nn.Conv2DTranspose)


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def conv_macs(block, *inputs):
    """MACs of every nn.Conv2D / nn.Conv2DTranspose that runs in ``block(*inputs)`` (each call counted).

    Conv: out_h * out_w * out_c * (in_c / groups) * kh * kw per sample; deconv: the same with the
    input's spatial size (each input pixel scatters a kernel). Multiplied by the batch size.
    """
    if getattr(block, "_active", False):
        raise ValueError("conv_macs needs an un-hybridized block: forward hooks do not fire in a "
                         "hybridized graph")
    total, handles = [0], []

    def hook(conv, args, output):
        x, y = _first(args), _first(output)
        kh, kw = conv._kwargs["kernel"]
        groups = conv._kwargs["num_group"]
        if isinstance(conv, nn.Conv2DTranspose):
            batch, in_c, h, w = x.shape
            out_c = y.shape[1]
            total[0] += batch * h * w * (in_c // groups) * out_c * kh * kw
        else:
            batch, out_c, h, w = y.shape
            total[0] += batch * h * w * out_c * (x.shape[1] // groups) * kh * kw

    for b in _walk(block):
        if isinstance(b, _CONVS):
            handles.append(b.register_forward_hook(hook))
    try:
        outputs = block(*inputs)
        mx.nd.waitall()
    finally:
        for h in handles:
            h.detach()
    del outputs
    return int(total[0])
