"""Per-scale prediction heads: one 3x3 conv for box deltas and one for class scores per scale."""
from mxnet.gluon import nn


class MultiBoxHead(nn.HybridBlock):
    """Returns (cls_logits (B, P, C+1), box_deltas (B, P, 4)) with priors ordered
    (scale largest first, y, x, anchor), the order of ``lib.anchors.ssd_priors``."""

    def __init__(self, num_scales, anchors_per_cell, num_classes, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes  # including background at 0
        with self.name_scope():
            self.loc = nn.HybridSequential(prefix="loc_")
            self.conf = nn.HybridSequential(prefix="conf_")
            for _ in range(num_scales):
                self.loc.add(nn.Conv2D(anchors_per_cell * 4, 3, padding=1, in_channels=in_channels))
                self.conf.add(nn.Conv2D(anchors_per_cell * num_classes, 3, padding=1,
                                        in_channels=in_channels))

    def hybrid_forward(self, F, *sources):
        locs, confs = [], []
        for x, loc, conf in zip(sources, self.loc, self.conf):
            locs.append(F.flatten(F.transpose(loc(x), axes=(0, 2, 3, 1))))
            confs.append(F.flatten(F.transpose(conf(x), axes=(0, 2, 3, 1))))
        box_deltas = F.reshape(F.concat(*locs, dim=1), shape=(0, -1, 4))
        cls_logits = F.reshape(F.concat(*confs, dim=1), shape=(0, -1, self.num_classes))
        return cls_logits, box_deltas
