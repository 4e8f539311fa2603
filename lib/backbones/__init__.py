"""Backbones shared by every detector family, with stable structural parameter names so that the
converted ImageNet weights of ``lib.pretrained`` load into them (``docs/pretrained.md``).

- ``EfficientNetLite``: EfficientNet-Lite0 (taps at strides 8 / 16 / 32, optional dilated last stage,
  width multiplier, TF "same" or symmetric padding).
- ``VGG16``: conv1_1 .. conv5_3 pooled as the SSD VGG16 (taps conv4_3, conv5_3, ...).
"""
from .efficientnet_lite import EfficientNetLite, round_channels
from .vgg import VGG16

# ImageNet normalisation of RGB 0-255 inputs: (x - mean) / std, what the ImageNet weights expect
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

__all__ = ["EfficientNetLite", "VGG16", "round_channels", "IMAGENET_MEAN", "IMAGENET_STD"]
