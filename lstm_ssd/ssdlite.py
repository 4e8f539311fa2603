"""SSDLite feature pyramid and box predictors (3x3 depthwise + 1x1 heads).

Level 0 is the memory output (or the frame baseline's projection). Each further level is
1x1 conv to half depth, then a 3x3 stride-2 separable conv (depthwise + 1x1) to the level's depth,
all BatchNorm + ReLU6, as in the TF-OD SSDLite extra layers. Predictions are laid out
(level, y, x, anchor) to match ``lib.anchors.multiscale_anchors`` (TF-OD layout).
"""
import math

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet import init as mx_init

from .layers import ConvBN, PruneGroup


def pyramid_sizes(first_hw, num_levels):
    """(h, w) of the levels: each stride-2 3x3 conv with padding 1 maps s -> ceil(s / 2)."""
    sizes = [tuple(int(s) for s in first_hw)]
    for _ in range(num_levels - 1):
        sizes.append(tuple(int(math.ceil(s / 2)) for s in sizes[-1]))
    return sizes


def anchors_per_level(num_levels, aspect_ratios, reduce_lowest):
    """TF-OD multiple_grid_anchor_generator: len(ratios) + 1 interpolated scale; 3 on the lowest."""
    full = len(aspect_ratios) + 1
    return [3 if (reduce_lowest and i == 0) else full for i in range(num_levels)]


class ExtraLevel(gluon.HybridBlock):
    def __init__(self, in_ch, depth, **kwargs):
        super().__init__(**kwargs)
        half = max(depth // 2, 1)
        with self.name_scope():
            self.reduce = ConvBN(in_ch, half, 1)
            self.dw = ConvBN(half, half, 3, 2, groups=half)
            self.pw = ConvBN(half, depth, 1)

    def hybrid_forward(self, F, x):
        return self.pw(self.dw(self.reduce(x)))


class Predictor(gluon.HybridBlock):
    """3x3 depthwise (BN, ReLU6) then a 1x1 conv with bias, reshaped to (B, H*W*A, K)."""

    def __init__(self, in_ch, num_anchors, outputs_per_anchor, output_bias=None, **kwargs):
        """output_bias: initial bias of each of the ``outputs_per_anchor`` outputs (default zeros)."""
        super().__init__(**kwargs)
        self.k = outputs_per_anchor
        bias_init = "zeros"
        if output_bias is not None:
            # channel a * k + j is output j of anchor a (see the reshape below)
            bias_init = mx_init.Constant(mx.nd.array(np.tile(np.asarray(output_bias, np.float32), num_anchors)))
        with self.name_scope():
            self.dw = ConvBN(in_ch, in_ch, 3, 1, groups=in_ch)
            # small initial predictions (TF-OD box predictors start from a 0.03-std truncated normal)
            self.pw = ConvBN(in_ch, num_anchors * outputs_per_anchor, 1, act="none", use_bn=False,
                             weight_init=mx_init.Normal(0.01), bias_init=bias_init)

    def hybrid_forward(self, F, x):
        y = self.pw(self.dw(x))
        return F.reshape(F.transpose(y, axes=(0, 2, 3, 1)), (0, -1, self.k))


class SSDLiteHead(gluon.HybridBlock):
    """(B, C0, Fh, Fw) level-0 feature -> class logits (B, P, C+1), box deltas (B, P, 4)."""

    def __init__(self, in_channels, extra_depths, num_anchors, num_classes, cls_prior=0.0, **kwargs):
        super().__init__(**kwargs)
        if len(num_anchors) != len(extra_depths) + 1:
            raise ValueError(f"SSDLite head: {len(num_anchors)} anchor counts for {len(extra_depths) + 1} levels")
        self.num_classes = num_classes
        self.level_channels = [in_channels] + list(extra_depths)
        with self.name_scope():
            self.extras = gluon.nn.HybridSequential(prefix="extra_")
            ch = in_channels
            for d in extra_depths:
                self.extras.add(ExtraLevel(ch, d))
                ch = d
            self.cls_preds = gluon.nn.HybridSequential(prefix="cls_")
            self.box_preds = gluon.nn.HybridSequential(prefix="box_")
            cls_bias = None
            if cls_prior:
                logit = float(np.log(cls_prior / (1.0 - cls_prior)))
                cls_bias = [-logit] + [logit] * num_classes      # column 0 is the background logit
            for c, a in zip(self.level_channels, num_anchors):
                self.cls_preds.add(Predictor(c, a, num_classes + 1, output_bias=cls_bias))
                self.box_preds.add(Predictor(c, a, 4))

    def hybrid_forward(self, F, x):
        levels = [x]
        for extra in self.extras:
            levels.append(extra(levels[-1]))
        cls = F.concat(*[p(f) for p, f in zip(self.cls_preds, levels)], dim=1)
        box = F.concat(*[p(f) for p, f in zip(self.box_preds, levels)], dim=1)
        return cls, box

    def prune_groups(self, prefix="head"):
        groups = []
        extras = list(self.extras)
        for i, extra in enumerate(extras):
            groups.append(PruneGroup(f"{prefix}.extra{i}.reduce", extra.reduce, [extra.dw], [extra.pw]))
            level = i + 1
            consumers = [self.cls_preds[level].pw, self.box_preds[level].pw]
            if i + 1 < len(extras):
                consumers.append(extras[i + 1].reduce)
            groups.append(PruneGroup(f"{prefix}.level{level}", extra.pw,
                                     [self.cls_preds[level].dw, self.box_preds[level].dw], consumers))
        return groups

    def level0_group(self, producer, name):
        """The group for a conv that produces level 0 (frame baseline projection)."""
        consumers = [self.cls_preds[0].pw, self.box_preds[0].pw]
        if len(self.extras):
            consumers.append(self.extras[0].reduce)
        return PruneGroup(name, producer, [self.cls_preds[0].dw, self.box_preds[0].dw], consumers)
