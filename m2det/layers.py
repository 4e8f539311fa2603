"""Small building blocks shared by the M2Det modules: conv + BN + ReLU, static nearest resize."""
from mxnet.gluon import nn


class BasicConv(nn.HybridBlock):
    """Conv (no bias) + BatchNorm + ReLU, the official ``BasicConv``.

    PyTorch BN momentum 0.01 is MXNet momentum 0.99 (the weight of the running value), the default.
    """

    def __init__(self, channels, kernel_size, strides=1, padding=0, relu=True, in_channels=0,
                 bn_momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(channels, kernel_size, strides=strides, padding=padding,
                                  use_bias=False, in_channels=in_channels)
            self.bn = nn.BatchNorm(momentum=bn_momentum, epsilon=1e-5, in_channels=channels)
            self.relu = nn.Activation("relu") if relu else None

    def hybrid_forward(self, F, x):
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


def nearest_indices(in_size, out_size):
    """Source index of every output pixel under PyTorch's legacy 'nearest' (floor(j * in / out))."""
    return [(j * in_size) // out_size for j in range(out_size)]


class NearestResize(nn.HybridBlock):
    """Nearest-neighbour resize of (N,C,H,W) to a size fixed at construction.

    The network is built for one input size, so all feature sizes are static. An integer
    factor uses ``UpSampling``; any other ratio (3->5 at 320, 7->13 at 800) gathers rows and
    columns with the same index rule as ``torch.nn.functional.interpolate(mode='nearest')``,
    which the official code uses. Indices come from ``arange`` so the graph holds no constants.
    """

    def __init__(self, in_size, out_size, **kwargs):
        super().__init__(**kwargs)
        self.in_size = tuple(int(v) for v in in_size)
        self.out_size = tuple(int(v) for v in out_size)
        (ih, iw), (oh, ow) = self.in_size, self.out_size
        if min(ih, iw, oh, ow) < 1:
            raise ValueError(f"NearestResize: invalid sizes {self.in_size} -> {self.out_size}")
        self.factor = None
        if oh % ih == 0 and ow % iw == 0 and oh // ih == ow // iw:
            self.factor = oh // ih

    def hybrid_forward(self, F, x):
        if self.factor == 1:
            return x
        if self.factor is not None:
            return F.UpSampling(x, scale=self.factor, sample_type="nearest")
        (ih, iw), (oh, ow) = self.in_size, self.out_size
        # floor(j * in / out): j * in is an exact float, and a non-integer quotient stays at least
        # 1/out away from the next integer, so float32 floor is exact.
        rows = F.floor(F.arange(0, oh) * ih / oh)
        cols = F.floor(F.arange(0, ow) * iw / ow)
        x = F.take(x, rows, axis=2)
        return F.take(x, cols, axis=3)
