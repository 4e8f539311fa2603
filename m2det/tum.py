"""Thinned U-shape Module (TUM) and the feature-size arithmetic of its pyramid."""
from mxnet.gluon import nn

from .layers import BasicConv, NearestResize


def conv_out(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def tum_sizes(base_hw, num_scales):
    """Feature sizes (h, w) of a TUM, largest first, for a base feature of ``base_hw`` (h, w).

    Encoder: (num_scales - 2) 3x3/2 pad-1 convs, then one 3x3/1 pad-0 conv, each axis on its own.
    Raises ValueError when a level would vanish (the input size does not give a valid pyramid).
    """
    if num_scales < 2:
        raise ValueError(f"NUM_SCALES must be >= 2, got {num_scales}")
    sizes = [tuple(int(v) for v in base_hw)]
    for _ in range(num_scales - 2):
        sizes.append(tuple(conv_out(v, 3, 2, 1) for v in sizes[-1]))
    sizes.append(tuple(conv_out(v, 3, 1, 0) for v in sizes[-1]))
    if min(sizes[-1]) < 1:
        raise ValueError(f"base feature {sizes[0][0]}x{sizes[0][1]} is too small for {num_scales} scales: "
                         f"the encoder sizes would be {[list(v) for v in sizes[:-1]]} and then "
                         f"{list(sizes[-1])} after the last 3x3 valid conv (needs >= 3 before it)")
    return sizes


class TUM(nn.HybridBlock):
    """One TUM: encoder of strided 3x3 convs, decoder of nearest upsample + 3x3 lateral convs,
    1x1 smoothing on the larger outputs. Returns ``num_scales`` maps, smallest first, ``planes`` ch.

    ``sizes`` are the encoder feature sizes (h, w), largest first (``tum_sizes``).
    """

    def __init__(self, sizes, planes=256, smooth=True, **kwargs):
        super().__init__(**kwargs)
        self.sizes = list(sizes)
        self.num_scales = len(self.sizes)
        n = self.num_scales
        with self.name_scope():
            self.encoder = nn.HybridSequential(prefix="enc_")
            with self.encoder.name_scope():
                self.encoder.add(BasicConv(planes, 3, strides=2, padding=1))
                for i in range(n - 2):
                    last = i == n - 3
                    self.encoder.add(BasicConv(planes, 3, strides=1 if last else 2, padding=0 if last else 1))
            self.toplayer = BasicConv(planes, 1, prefix="top_")
            self.lateral = nn.HybridSequential(prefix="lat_")
            self.upsample = nn.HybridSequential(prefix="up_")
            with self.lateral.name_scope():
                for _ in range(n - 1):
                    self.lateral.add(BasicConv(planes, 3, padding=1))
            with self.upsample.name_scope():
                sizes_small_first = self.sizes[::-1]
                for i in range(n - 1):
                    src, dst = sizes_small_first[i], sizes_small_first[i + 1]
                    self.upsample.add(NearestResize(src, dst))
            self.smooth = None
            if smooth:
                self.smooth = nn.HybridSequential(prefix="smooth_")
                with self.smooth.name_scope():
                    for _ in range(n - 1):
                        self.smooth.add(BasicConv(planes, 1))

    def hybrid_forward(self, F, x):
        encoded = [x]
        for layer in self.encoder:
            x = layer(x)
            encoded.append(x)
        decoded = [self.toplayer(encoded[-1])]
        depth = len(self.encoder)
        for i in range(self.num_scales - 1):
            lateral = self.lateral[i](encoded[depth - 1 - i])
            decoded.append(self.upsample[i](decoded[i]) + lateral)
        if self.smooth is None:
            return decoded
        return [decoded[0]] + [self.smooth[i](decoded[i + 1]) for i in range(self.num_scales - 1)]
