"""ResNet v1 backbone to output stride 16 (res5 dilated), built from gluoncv's ResNet v1 blocks.

gluoncv's ``BottleneckV1`` puts the stride on the first 1x1 conv, as the Caffe-style ResNet of the
reference does. We take its stem and four stages, then turn res5 into stride 1 / dilation 2 by
editing the convolution attributes before the first forward pass. Parameter names are those of a
gluoncv ``resnet{18,34,50,101}_v1`` saved with ``save_parameters`` (``features.N...``), so user
weights in gluoncv format load by name. ``width`` < 1 thins every stage (as MobileNet's multiplier
does) for models trained from scratch on a CPU; gluoncv's ImageNet weights then no longer fit.
"""

import mxnet as mx
from gluoncv.model_zoo.resnet import BasicBlockV1, BottleneckV1, ResNetV1, resnet_spec
from mxnet.gluon import nn

from lib.errors import UserError
from lib.pretrained import LoadReport
from lib.train.checkpoint import read_params_file


class BackboneWeightsError(UserError, ValueError):
    """A weights file is missing or does not fit the backbone; the message says which and why."""


def _norm_layer(mode, groups):
    if mode == "frozen":
        return nn.BatchNorm, {"use_global_stats": True}
    if mode == "trainable":
        return nn.BatchNorm, {}
    if mode == "group":
        return nn.GroupNorm, {"num_groups": groups}
    raise ValueError(f"unknown norm mode {mode!r} (frozen, trainable, group)")


def _dilate_conv(conv, dilation, stride=None):
    """Give a 3x3/1x1 conv a dilation (and keep 'same' size) or a new stride, in place."""
    kernel = conv._kwargs["kernel"]
    if stride is not None:
        conv._kwargs["stride"] = (stride, stride)
    if kernel[0] > 1:
        conv._kwargs["dilate"] = (dilation, dilation)
        pad = dilation * (kernel[0] - 1) // 2
        conv._kwargs["pad"] = (pad, pad)


def scaled_channels(channels, width):
    """A stage width times the multiplier, kept a multiple of 8 (bottlenecks divide it by 4)."""
    return max(8, int(round(channels * width / 8.0)) * 8)


class ResNetV1Backbone(nn.HybridBlock):
    """conv1 ... res5 of ResNet v1 with res5 at stride 1 and the given dilation (stride 16 out)."""

    def __init__(self, depth=101, norm="frozen", groups=32, res5_dilation=2, width=1.0, **kwargs):
        super().__init__(**kwargs)
        norm_layer, norm_kwargs = _norm_layer(norm, groups)
        self.depth, self.norm, self.width = depth, norm, width
        block_type, layers, channels = resnet_spec[depth]
        block = BasicBlockV1 if block_type == "basic_block" else BottleneckV1
        channels = [scaled_channels(c, width) for c in channels]
        with self.name_scope():
            net = ResNetV1(block, layers, channels, norm_layer=norm_layer, norm_kwargs=norm_kwargs)
            self.features = nn.HybridSequential(prefix="")
            for idx in range(8):  # stem (conv, norm, relu, pool) + 4 stages; drop avgpool and fc
                self.features.add(net.features[idx])
        self.out_channels = channels[-1]
        res5 = self.features[7]
        for bidx, block in enumerate(res5):
            first = bidx == 0
            for layer in block.body:
                if isinstance(layer, nn.Conv2D):
                    is_strided = first and layer._kwargs["stride"] != (1, 1)
                    _dilate_conv(layer, res5_dilation, stride=1 if is_strided else None)
            if block.downsample is not None:
                block.downsample[0]._kwargs["stride"] = (1, 1)
        if norm == "frozen":
            for name, param in self.collect_params().items():
                if name.endswith(("gamma", "beta", "running_mean", "running_var")):
                    param.grad_req = "null"

    def freeze_stages(self, num):
        """Stop gradients to conv1 (num >= 1) and res2 (num >= 2), as the reference does."""
        groups = [[0, 1], [4]][:num]
        for idx in [i for g in groups for i in g]:
            for param in self.features[idx].collect_params().values():
                param.grad_req = "null"

    def hybrid_forward(self, F, x):
        return self.features(x)

    def load_gluoncv(self, path, ctx=None):
        """Load a gluoncv ResNet v1 ``.params`` file (classifier weights ignored) -> lib.pretrained's
        LoadReport.

        Raises BackboneWeightsError naming the file and every missing or mis-shaped parameter.
        """
        loaded = read_params_file(path, error=BackboneWeightsError)
        # files written by export()/save_params carry 'arg:'/'aux:' prefixes
        loaded = {k.split(":", 1)[-1]: v for k, v in loaded.items()}
        own = self._collect_params_with_prefix()
        missing, mismatched = [], []
        if self.norm == "group":
            # MXNet's GroupNorm has per-group gamma/beta: only the convolutions carry over
            own = {k: v for k, v in own.items()
                   if not k.endswith(("gamma", "beta", "running_mean", "running_var"))}
        for name, param in own.items():
            if name not in loaded:
                missing.append(name)
                continue
            shape = loaded[name].shape
            if param.shape is not None and all(param.shape) and tuple(param.shape) != tuple(shape):
                mismatched.append(f"{name}: file {shape} vs model {param.shape}")
        all_own = self._collect_params_with_prefix()
        extra = sorted(k for k in loaded if k not in all_own and not k.startswith("output."))
        if missing or mismatched or extra:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
            if mismatched:
                problems.append(f"{len(mismatched)} with a different shape ({'; '.join(mismatched[:4])})")
            if extra:
                problems.append(f"{len(extra)} not in the model (e.g. {', '.join(extra[:4])}: a deeper ResNet?)")
            thinned = f" at width {self.width:g}" if self.width != 1 else ""
            raise BackboneWeightsError(
                f"{path} does not fit a ResNet-{self.depth} v1 backbone{thinned}: " + ", ".join(problems)
                + ". Expected a gluoncv resnet{d}_v1 file saved with save_parameters.".format(d=self.depth))
        ctx = ctx or mx.cpu()
        for name, param in own.items():
            if name in loaded:
                param._load_init(loaded[name], ctx)
        skipped = sorted(k for k in all_own if k not in own)     # GroupNorm's own affine parameters
        return LoadReport(path, path, sorted(own), skipped, sorted(k for k in loaded if k not in all_own))
