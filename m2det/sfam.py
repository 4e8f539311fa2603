"""Scale-wise Feature Aggregation Module: concatenates the same-scale outputs of all TUMs and
optionally reweights channels with squeeze-excitation.

By default every scale has its own SE weights, as the paper intends. ``shared=True`` reproduces the
official code, where ``nn.ModuleList([conv] * num_scales)`` makes all scales share one SE.
"""
from mxnet.gluon import nn


class SqueezeExcite(nn.HybridBlock):
    def __init__(self, channels, reduction=16, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.fc1 = nn.Conv2D(max(1, channels // reduction), 1, in_channels=channels)
            self.fc2 = nn.Conv2D(channels, 1, in_channels=max(1, channels // reduction))

    def hybrid_forward(self, F, x):
        w = F.contrib.AdaptiveAvgPooling2D(x, output_size=1)
        w = F.sigmoid(self.fc2(F.relu(self.fc1(w))))
        return F.broadcast_mul(x, w)


class SFAM(nn.HybridBlock):
    """Inputs: the TUM outputs flattened level-major (TUM 0's maps smallest first, then TUM 1's, ...).
    Output: per scale, largest first, the concatenation over TUMs (``num_levels * planes`` channels),
    SE-weighted if ``use_se``."""

    def __init__(self, num_levels, num_scales, planes=256, use_se=False, reduction=16, shared=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_levels, self.num_scales = num_levels, num_scales
        self.use_se, self.shared = use_se, shared
        channels = num_levels * planes
        self.se = None
        if use_se:
            with self.name_scope():
                self.se = nn.HybridSequential(prefix="se_")
                with self.se.name_scope():
                    for _ in range(1 if shared else num_scales):
                        self.se.add(SqueezeExcite(channels, reduction))

    def hybrid_forward(self, F, *flat_tum_outputs):
        if len(flat_tum_outputs) != self.num_levels * self.num_scales:
            raise ValueError(f"SFAM expects {self.num_levels} x {self.num_scales} maps, "
                             f"got {len(flat_tum_outputs)}")
        sources = []
        for k in range(self.num_scales - 1, -1, -1):
            x = F.concat(*[flat_tum_outputs[level * self.num_scales + k]
                           for level in range(self.num_levels)], dim=1)
            if self.se is not None:
                x = self.se[0 if self.shared else len(sources)](x)
            sources.append(x)
        return sources
