"""A plain VGG16 trunk, conv1_1 .. conv5_3 with ReLU, pooled as the standard SSD VGG16 is.

pool1, pool2, pool4: 2x2 stride-2 max pools (floor); pool3: 2x2 stride 2 with ceil mode (SSD: a
300-pixel input gives a 38x38 conv4_3). No pool after conv5_3: SSD-style detectors add their own
pool5 (3x3 stride 1) and reduced fc6 / fc7, which no pretrained source here holds.

Parameter names (structural): ``conv1_1.weight``, ``conv1_1.bias``, ... ``conv5_3.bias`` (26 in
all). Taps (``VGG16_TAPS``): the ReLU output of conv1_2 (stride 1), conv2_2 (2), conv3_3 (4),
conv4_3 (8), conv5_3 (16); ``forward`` returns the requested ones in order.
"""
from mxnet.gluon import nn

# (stage, convs, channels)
VGG16_STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG16_CONVS = tuple(f"conv{s}_{i}" for s, n, _ in VGG16_STAGES for i in range(1, n + 1))
VGG16_TAPS = {"conv1_2": 1, "conv2_2": 2, "conv3_3": 4, "conv4_3": 8, "conv5_3": 16}
CEIL_MODE_POOL = 3      # the pool after stage 3 rounds up, as in SSD


class VGG16(nn.HybridBlock):
    """VGG16 conv1_1 .. conv5_3 (module docstring); builds only up to the deepest requested tap."""

    def __init__(self, taps=("conv4_3", "conv5_3"), **kwargs):
        kwargs.setdefault("prefix", "vgg16_")
        super().__init__(**kwargs)
        taps = tuple(taps)
        if not taps or any(t not in VGG16_TAPS for t in taps) or len(set(taps)) != len(taps):
            raise ValueError(f"taps {taps}: one or more of {', '.join(VGG16_TAPS)}, no repeats")
        self.taps = taps
        self.tap_strides = dict(VGG16_TAPS)
        self.tap_channels = {f"conv{s}_{n}": c for s, n, c in VGG16_STAGES}
        last_stage = max(int(t[4]) for t in taps)
        self._layers = []        # (kind, name) in forward order
        in_channels = 3
        with self.name_scope():
            for stage, convs, channels in VGG16_STAGES[:last_stage]:
                if stage > 1:
                    pool = nn.MaxPool2D(2, 2, ceil_mode=stage - 1 == CEIL_MODE_POOL,
                                        prefix=f"pool{stage - 1}_")
                    setattr(self, f"pool{stage - 1}", pool)
                    self._layers.append(f"pool{stage - 1}")
                for i in range(1, convs + 1):
                    name = f"conv{stage}_{i}"
                    setattr(self, name, nn.Conv2D(channels, 3, padding=1, in_channels=in_channels,
                                                  prefix=name + "_"))
                    self._layers.append(name)
                    in_channels = channels

    def hybrid_forward(self, F, x):
        found = {}
        for name in self._layers:
            x = getattr(self, name)(x)
            if name.startswith("conv"):
                x = F.relu(x)
                found[name] = x
        outputs = [found[t] for t in self.taps]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
