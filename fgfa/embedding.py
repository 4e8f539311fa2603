"""Embedding network for FGFA's adaptive weights: 1x1 ReLU, 3x3 ReLU, 1x1 (no ReLU)."""
from mxnet.gluon import nn


class EmbedNet(nn.HybridBlock):
    def __init__(self, channels=(512, 512, 2048), **kwargs):
        super().__init__(**kwargs)
        c1, c2, c3 = channels
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            self.body.add(nn.Conv2D(c1, 1), nn.Activation("relu"),
                          nn.Conv2D(c2, 3, padding=1), nn.Activation("relu"),
                          nn.Conv2D(c3, 1))
        self.out_channels = c3

    def hybrid_forward(self, F, x):
        return self.body(x)
