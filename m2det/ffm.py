"""Feature Fusion Modules.

FFMv1 fuses the two backbone taps into the base feature (stride 8): a 3x3 conv on the shallow tap
and a 1x1 conv + nearest x2 upsample on the deep tap, concatenated (256 + 512 = 768 channels for
the official widths). FFMv2 squeezes the base feature to ``planes // 2`` channels with a 1x1 conv
before each TUM; the TUM concatenates it with the previous TUM's largest output.
"""
from mxnet.gluon import nn

from .layers import BasicConv, NearestResize


class FFMv1(nn.HybridBlock):
    def __init__(self, shallow_size, deep_size, shallow_out=256, deep_out=512, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = shallow_out + deep_out
        with self.name_scope():
            self.reduce = BasicConv(shallow_out, 3, padding=1)
            self.up_reduce = BasicConv(deep_out, 1)
            self.upsample = NearestResize(deep_size, shallow_size)

    def hybrid_forward(self, F, shallow, deep):
        return F.concat(self.reduce(shallow), self.upsample(self.up_reduce(deep)), dim=1)


class FFMv2(nn.HybridBlock):
    """The 1x1 'leach' conv applied to the base feature before each TUM."""

    def __init__(self, channels=128, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = BasicConv(channels, 1)

    def hybrid_forward(self, F, base):
        return self.conv(base)
