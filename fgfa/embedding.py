"""Embedding network for FGFA's adaptive weights: 1x1 ReLU, 3x3 ReLU, 1x1 (no ReLU); with ``quality`` also
a per-pixel logit of the frame's own, a zero-initialised 1x1 of the embedding (NETWORK.AGGREGATE_QUALITY),
as one more output channel."""
import mxnet as mx
from mxnet.gluon import nn


class EmbedNet(nn.HybridBlock):
    def __init__(self, channels=(512, 512, 2048), quality=False, **kwargs):
        super().__init__(**kwargs)
        c1, c2, c3 = channels
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            self.body.add(nn.Conv2D(c1, 1), nn.Activation("relu"),
                          nn.Conv2D(c2, 3, padding=1), nn.Activation("relu"),
                          nn.Conv2D(c3, 1))
            # zero: every frame's logit 0 at the start, the reference's weights
            self.quality = nn.Conv2D(1, 1, weight_initializer=mx.init.Zero(), bias_initializer=mx.init.Zero()) \
                if quality else None
        self.out_channels = c3 + (1 if quality else 0)

    def hybrid_forward(self, F, x):
        embed = self.body(x)
        if self.quality is None:
            return embed
        return F.concat(embed, self.quality(embed), dim=1)
