"""MobileNetV1 / V2 feature extractors with any width multiplier, cut point and output stride.

Every layer is a ``ConvBN`` so that filter pruning can shrink it. Configuration (see config.py):
``NET`` mobilenet_v1 | mobilenet_v2, ``WIDTH`` multiplier, ``NUM_BLOCKS`` how many blocks to keep
(-1 = all; V1 has 13 depthwise-separable blocks, Conv1..Conv13; V2 has 17 inverted residual blocks,
the final 1280 layer is never built), ``OUTPUT_STRIDE`` (once reached, later stride-2 layers run at
stride 1, as the reference does to end both Looking-Fast-and-Slow extractors at 10x10), ``MIN_DEPTH``.
Input: RGB scaled to [-1, 1], NCHW.
"""
from mxnet import gluon

from .layers import ConvBN, PruneGroup, make_divisible

# (output channels, stride) of Conv1..Conv13 (Howard et al. 2017, Table 1)
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
             (512, 1), (512, 1), (1024, 2), (1024, 1)]
# (expansion t, channels c, repeats n, first stride s) (Sandler et al. 2018, Table 2)
V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]


def _strides(raw_strides, output_stride):
    """Turn stride-2 layers into stride 1 once ``output_stride`` is reached (stem counted first)."""
    out, current = [], 1
    for s in raw_strides:
        if s > 1 and current * s > output_stride:
            s = 1
        current *= s
        out.append(s)
    return out, current


class DepthwiseSeparable(gluon.HybridBlock):
    def __init__(self, in_ch, out_ch, stride, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.dw = ConvBN(in_ch, in_ch, 3, stride, groups=in_ch)
            self.pw = ConvBN(in_ch, out_ch, 1)

    def hybrid_forward(self, F, x):
        return self.pw(self.dw(x))


class InvertedResidual(gluon.HybridBlock):
    def __init__(self, in_ch, out_ch, expansion, stride, **kwargs):
        super().__init__(**kwargs)
        self.residual = stride == 1 and in_ch == out_ch
        hidden = make_divisible(in_ch * expansion) if expansion != 1 else in_ch
        with self.name_scope():
            self.expand = ConvBN(in_ch, hidden, 1) if expansion != 1 else None
            self.dw = ConvBN(hidden, hidden, 3, stride, groups=hidden)
            self.project = ConvBN(hidden, out_ch, 1, act="none")

    def hybrid_forward(self, F, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return y + x if self.residual else y


class MobileNet(gluon.HybridBlock):
    """Backbone returning the last kept block's feature map."""

    def __init__(self, version="mobilenet_v1", width=1.0, num_blocks=-1, output_stride=32, min_depth=8,
                 **kwargs):
        super().__init__(**kwargs)
        if version not in ("mobilenet_v1", "mobilenet_v2"):
            raise ValueError(f"backbone NET must be mobilenet_v1 or mobilenet_v2, got {version!r}")
        if width <= 0:
            raise ValueError(f"backbone WIDTH must be > 0, got {width}")
        if output_stride not in (2, 4, 8, 16, 32):
            raise ValueError(f"backbone OUTPUT_STRIDE must be 2, 4, 8, 16 or 32, got {output_stride}")
        self.version, self.width = version, width
        with self.name_scope():
            self.features = gluon.nn.HybridSequential(prefix="")
            if version == "mobilenet_v1":
                self._build_v1(width, num_blocks, output_stride, min_depth)
            else:
                self._build_v2(width, num_blocks, output_stride, min_depth)

    def _build_v1(self, width, num_blocks, output_stride, min_depth):
        specs = V1_BLOCKS if num_blocks < 0 else V1_BLOCKS[:num_blocks]
        if num_blocks == 0 or num_blocks > len(V1_BLOCKS):
            raise ValueError(f"mobilenet_v1 NUM_BLOCKS must be 1..{len(V1_BLOCKS)} or -1, got {num_blocks}")
        strides, self.stride = _strides([2] + [s for _, s in specs], output_stride)
        depth = lambda c: max(int(c * width), min_depth)  # noqa: E731  (slim's depth rule)
        ch = depth(32)
        self.stem = ConvBN(3, ch, 3, strides[0])
        self.features.add(self.stem)
        for (c, _), s in zip(specs, strides[1:]):
            block = DepthwiseSeparable(ch, depth(c), s)
            self.features.add(block)
            ch = depth(c)
        self.out_channels = ch

    def _build_v2(self, width, num_blocks, output_stride, min_depth):
        expanded = [(t, c, s if i == 0 else 1) for t, c, n, s in V2_STAGES for i in range(n)]
        if num_blocks == 0 or num_blocks > len(expanded):
            raise ValueError(f"mobilenet_v2 NUM_BLOCKS must be 1..{len(expanded)} or -1, got {num_blocks}")
        specs = expanded if num_blocks < 0 else expanded[:num_blocks]
        strides, self.stride = _strides([2] + [s for _, _, s in specs], output_stride)
        depth = lambda c: make_divisible(c * width, 8, min_depth)  # noqa: E731
        ch = depth(32)
        self.stem = ConvBN(3, ch, 3, strides[0])
        self.features.add(self.stem)
        for (t, c, _), s in zip(specs, strides[1:]):
            block = InvertedResidual(ch, depth(c), t, s)
            self.features.add(block)
            ch = depth(c)
        self.out_channels = ch

    @property
    def blocks_list(self):
        """The depthwise-separable / inverted residual blocks (everything after the stem)."""
        return list(self.features)[1:]

    def hybrid_forward(self, F, x):
        return self.features(x)

    def prune_groups(self, prefix="backbone"):
        """Channel groups that can be cut without touching the backbone's output width."""
        groups = []
        if self.version == "mobilenet_v1":
            producers = [self.stem] + [b.pw for b in self.blocks_list[:-1]]
            for i, (prod, nxt) in enumerate(zip(producers, self.blocks_list)):
                groups.append(PruneGroup(f"{prefix}.conv{i}", prod, [nxt.dw], [nxt.pw]))
        else:
            first = self.blocks_list[0]
            if first.expand is None:  # t=1 block: the stem's channels go straight into its depthwise
                groups.append(PruneGroup(f"{prefix}.stem", self.stem, [first.dw], [first.project]))
            for i, b in enumerate(self.blocks_list):
                if b.expand is not None:  # residual sums pin block outputs; expansions are free
                    groups.append(PruneGroup(f"{prefix}.block{i}.expand", b.expand, [b.dw], [b.project]))
        return groups
