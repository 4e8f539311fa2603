"""EfficientNet-Lite (Lite0 layout) as Gluon HybridBlocks, with named feature taps for detectors.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 everywhere and a fixed
stem (32 channels) and head (1280): a MobileNetV2 relative made for CPUs and phones. Layout
(``LITE0_STAGES``: expansion, kernel, stride of the first block, repeats, output channels):

    stem  3x3/2 conv -> 32, BN, ReLU6
    16 MBConv blocks (0-15): [1x1 expand + BN + ReLU6 when expansion > 1], kxk depthwise + BN +
        ReLU6, 1x1 project + BN; identity shortcut when stride 1 and in == out channels
    head  1x1 conv -> 1280, BN, ReLU6; global average pool; dropout 0.2; dense 1000

BatchNorm epsilon 1e-3 and momentum 0.99, as the TF original.

Taps (``TAP_BLOCKS``): ``s2`` / ``s4`` / ``s8`` / ``s16`` / ``s32`` = the output of block 0 / 2 / 4 /
10 / 15 (16 / 24 / 40 / 112 / 320 channels at width 1), ``head`` = the 1280-channel head after ReLU6.
``dilate_last=True`` runs blocks 11-15 at stride 1 (as ResNet's res5 in R-FCN and DeepLab): block 11's
depthwise conv, the one that had stride 2, undilated, and the depthwise convs of blocks 12-15 with
dilation 2. ``s32`` and ``head`` are then at stride 16 with the same parameters, and their values at
even positions equal the undilated network's stride-32 maps exactly (with symmetric padding), so
the pretrained weights compute what they were trained for, only densely. ``tap_strides`` /
``tap_channels`` say where each tap is.

Padding (``padding=``):
- ``"symmetric"`` (default): every kxk convolution pads (k - 1) / 2 * dilation on each side, Gluon's
  usual. Shape-agnostic, and MKLDNN fuses conv + BN + ReLU6 (and quantizes it to int8). Output sizes
  equal TF's (ceil(n / 2) per stride-2 conv); stride-2 windows are centred half a pixel-step off TF's.
  The ImageNet predictions stay sensible (same top-1 on the checks of ``docs/pretrained.md``), and a
  detector fine-tunes the difference away: this is the mode for detectors.
- ``"same"``: exactly TF's "SAME" padding, for any input size. TF pads a stride-2 convolution
  asymmetrically by an amount that depends on the parity of the input size (one row less at the top
  than at the bottom for even sizes), which a shape-agnostic graph cannot compute. But its windows
  are aligned with the LAST pixel (centres at n - 1, n - 3, ...), so on a spatially reversed input
  symmetric padding lands them exactly there: this mode reverses the input once, runs every
  convolution with its kernel rotated by 180 degrees (elementwise ops, BN, shortcuts and pooling
  commute with the reversal), and reverses each tap back. Costs the reversals and the MKLDNN fusion.

Parameter names (structural, what ``load_parameters`` and ``lib.pretrained`` use; independent of the
Gluon prefix):
    stem.conv.weight, stem.bn.{gamma,beta,running_mean,running_var}
    blocks.N.expand.conv.weight, blocks.N.expand.bn.*        (N = 1..15; block 0 has no expansion)
    blocks.N.depthwise.conv.weight, blocks.N.depthwise.bn.*
    blocks.N.project.conv.weight, blocks.N.project.bn.*
    head.conv.weight, head.bn.*                              (when "head" is tapped or classifier)
    classifier.weight, classifier.bias                       (classifier=True)
Blocks after the deepest requested tap are not built (their weights are then "unexpected" when a
full file is loaded).
"""
from mxnet.gluon import nn

from ..layers import relu6

# (expansion, kernel, first stride, repeats, output channels) per stage
LITE0_STAGES = ((1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80),
                (6, 5, 1, 3, 112), (6, 5, 2, 4, 192), (6, 3, 1, 1, 320))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99          # MXNet sense (running = momentum * running + (1 - momentum) * batch)
DROPOUT = 0.2
TAP_BLOCKS = {"s2": 0, "s4": 2, "s8": 4, "s16": 10, "s32": 15}
TAP_ORDER = ("s2", "s4", "s8", "s16", "s32", "head")
FIRST_DILATED_BLOCK = 11    # blocks 11-15: the stride-32 stages
PADDINGS = ("symmetric", "same")


def round_channels(channels, width_mult, divisor=8):
    """EfficientNet's ``round_filters``: channels * width to a multiple of ``divisor``, never more
    than 10% below the exact product."""
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def block_settings(width_mult=1.0, dilate_last=False):
    """One dict per MBConv block: in/out/expanded channels, kernel, stride, dilation, residual."""
    settings = []
    in_channels = STEM_CHANNELS
    for expansion, kernel, stride, repeats, out_channels in LITE0_STAGES:
        out_channels = round_channels(out_channels, width_mult)
        for r in range(repeats):
            index = len(settings)
            block_stride = stride if r == 0 else 1
            dilation = 1
            if dilate_last and index >= FIRST_DILATED_BLOCK:
                # the a-trous rule: the once-strided conv (block 11's depthwise) runs at stride 1
                # undilated, every later spatial conv at dilation 2; the stride-16 result sampled at
                # even positions then equals the stride-32 network's exactly
                block_stride, dilation = 1, (1 if index == FIRST_DILATED_BLOCK else 2)
            settings.append({"in": in_channels, "out": out_channels, "expanded": in_channels * expansion,
                             "expansion": expansion, "kernel": kernel, "stride": block_stride,
                             "dilation": dilation,
                             "residual": block_stride == 1 and in_channels == out_channels})
            in_channels = out_channels
    return settings


class _Conv2D(nn.Conv2D):
    """Conv2D that can rotate its kernel by 180 degrees in the graph (the "same" padding mode)."""

    def __init__(self, *args, rotate_kernel=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._rotate = rotate_kernel and any(k > 1 for k in self._kwargs["kernel"])

    def hybrid_forward(self, F, x, weight, bias=None):
        if self._rotate:
            weight = F.reverse(weight, axis=(2, 3))
        return super().hybrid_forward(F, x, weight, bias)


class ConvBN(nn.HybridBlock):
    """kxk convolution (no bias) + BatchNorm [+ ReLU6]; children ``conv`` and ``bn``."""

    def __init__(self, in_channels, channels, kernel=1, stride=1, dilation=1, groups=1, act=True,
                 rotate_kernel=False, frozen_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.act = act
        with self.name_scope():
            self.conv = _Conv2D(channels, kernel, strides=stride, padding=dilation * (kernel - 1) // 2,
                                dilation=dilation, groups=groups, use_bias=False,
                                in_channels=in_channels, rotate_kernel=rotate_kernel)
            self.bn = nn.BatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, in_channels=channels,
                                   use_global_stats=frozen_bn)

    def hybrid_forward(self, F, x):
        x = self.bn(self.conv(x))
        return relu6(F, x) if self.act else x


class MBConv(nn.HybridBlock):
    """Inverted residual block without squeeze-excitation; children ``expand`` (when expansion > 1),
    ``depthwise``, ``project``."""

    def __init__(self, setting, rotate_kernel=False, frozen_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.residual = setting["residual"]
        common = {"rotate_kernel": rotate_kernel, "frozen_bn": frozen_bn}
        with self.name_scope():
            self.expand = None
            if setting["expansion"] != 1:
                self.expand = ConvBN(setting["in"], setting["expanded"], 1, prefix="expand_", **common)
            self.depthwise = ConvBN(setting["expanded"], setting["expanded"], setting["kernel"],
                                    setting["stride"], setting["dilation"], groups=setting["expanded"],
                                    prefix="depthwise_", **common)
            self.project = ConvBN(setting["expanded"], setting["out"], 1, act=False, prefix="project_",
                                  **common)

    def hybrid_forward(self, F, x):
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.HybridBlock):
    """EfficientNet-Lite0 backbone / classifier (module docstring for taps, padding and names).

    ``forward(x)`` returns the requested taps in the order of ``taps``, then the logits when
    ``classifier=True``; a single output is returned bare (not in a tuple).

    Args:
        width_mult: channel multiplier of the MBConv blocks (rounded to multiples of 8 as EfficientNet
            does); stem (32) and head (1280) stay fixed as in EfficientNet-Lite. Only 1.0 matches the
            ImageNet weights; smaller widths are for random-init small variants.
        taps: names from ``TAP_ORDER``.
        dilate_last: blocks 11-15 at stride 1, blocks 12-15 dilated by 2 (module docstring).
        classifier: build the pool + dropout + dense 1000 classifier and return its logits last.
        padding: "symmetric" (default) or "same" (module docstring).
        frozen_bn: every BatchNorm uses its running statistics, also in training.
    """

    def __init__(self, width_mult=1.0, taps=("s8", "s16", "s32"), dilate_last=False, classifier=False,
                 padding="symmetric", frozen_bn=False, **kwargs):
        kwargs.setdefault("prefix", "efficientnetlite_")
        super().__init__(**kwargs)
        taps = tuple(taps)
        unknown = [t for t in taps if t not in TAP_ORDER]
        if unknown or len(set(taps)) != len(taps):
            raise ValueError(f"taps {taps}: each must be one of {', '.join(TAP_ORDER)}, no repeats")
        if padding not in PADDINGS:
            raise ValueError(f"padding {padding!r}: choose one of {', '.join(PADDINGS)}")
        if not taps and not classifier:
            raise ValueError("nothing to compute: give taps or classifier=True")
        self.taps, self.classifier_on, self.padding = taps, classifier, padding
        self.width_mult, self.dilate_last = width_mult, dilate_last
        settings = block_settings(width_mult, dilate_last)
        with_head = classifier or "head" in taps
        last_block = len(settings) - 1 if with_head else max(TAP_BLOCKS[t] for t in taps)
        self._tap_after = {TAP_BLOCKS[t]: t for t in taps if t in TAP_BLOCKS}

        stride, self.tap_strides, self.tap_channels = 2, {}, {}
        for index, setting in enumerate(settings):
            stride *= setting["stride"]
            for name, block in TAP_BLOCKS.items():
                if block == index:
                    self.tap_strides[name], self.tap_channels[name] = stride, setting["out"]
        self.tap_strides["head"], self.tap_channels["head"] = stride, HEAD_CHANNELS

        common = {"rotate_kernel": padding == "same", "frozen_bn": frozen_bn}
        with self.name_scope():
            self.stem = ConvBN(3, STEM_CHANNELS, 3, 2, prefix="stem_", **common)
            self.blocks = nn.HybridSequential(prefix="blocks_")
            with self.blocks.name_scope():
                for index in range(last_block + 1):
                    self.blocks.add(MBConv(settings[index], prefix=f"block{index}_", **common))
            self.head = None
            if with_head:
                self.head = ConvBN(settings[-1]["out"], HEAD_CHANNELS, 1, prefix="head_", **common)
            self.classifier = None
            if classifier:
                self.dropout = nn.Dropout(DROPOUT)
                self.classifier = nn.Dense(NUM_CLASSES, in_units=HEAD_CHANNELS, prefix="classifier_")

    def hybrid_forward(self, F, x):
        same = self.padding == "same"
        if same:
            x = F.reverse(x, axis=(2, 3))
        found = {}
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self._tap_after:
                found[self._tap_after[index]] = x
        outputs = []
        if self.head is not None:
            x = self.head(x)
            found["head"] = x
        for name in self.taps:
            outputs.append(F.reverse(found[name], axis=(2, 3)) if same else found[name])
        if self.classifier is not None:
            pooled = F.mean(x, axis=(2, 3))    # the reversal does not change a global mean
            outputs.append(self.classifier(self.dropout(pooled)))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def freeze(self, upto_block=0):
        """Stop training the stem and blocks 0..``upto_block`` (grad_req 'null'); -1: the stem only.
        Returns the structural names frozen."""
        frozen = []
        parts = [("stem", self.stem)] + [(f"blocks.{i}", self.blocks[i]) for i in range(upto_block + 1)]
        for prefix, part in parts:
            for name, param in part._collect_params_with_prefix(prefix + ".").items():
                param.grad_req = "null"
                frozen.append(name)
        return frozen
