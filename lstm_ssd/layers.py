"""Convolution units whose channel counts can be shrunk in place (filter pruning).

``ConvBN`` owns its parameters directly (weight, optional bias, optional BatchNorm) and runs
``F.Convolution`` + ``F.BatchNorm`` + activation, so that ``keep_outputs`` / ``keep_inputs`` can
replace each parameter by a physically smaller one. Depthwise units (groups == channels) shrink their
inputs and outputs together, because each output channel reads exactly one input channel.
"""
import mxnet as mx
from mxnet import gluon
from mxnet import init as mx_init

from lib.layers import relu6

ACTIVATIONS = ("relu6", "relu", "none")
BN_EPS = 1e-3          # TF-OD / slim batch norm defaults used by the reference configs
BN_MOMENTUM = 0.997


def make_divisible(value, divisor=8, min_value=None):
    """MobileNetV2 channel rounding: nearest multiple of ``divisor``, never 10% below ``value``."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def apply_activation(F, x, act):
    if act == "relu6":
        return relu6(F, x)
    if act == "relu":
        return F.relu(x)
    return x


class ConvBN(gluon.HybridBlock):
    """Conv (any kernel/stride/groups) -> optional BatchNorm -> relu6 | relu | none."""

    def __init__(self, in_channels, out_channels, kernel=1, stride=1, groups=1, act="relu6",
                 use_bn=True, use_bias=None, weight_init=None, bias_init="zeros", **kwargs):
        super().__init__(**kwargs)
        if act not in ACTIVATIONS:
            raise ValueError(f"ConvBN: act must be one of {ACTIVATIONS}, got {act!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"ConvBN: channels {in_channels}->{out_channels} not divisible by groups {groups}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel, self.stride, self.groups = int(kernel), int(stride), int(groups)
        self.act, self.use_bn = act, bool(use_bn)
        self.bn_momentum = BN_MOMENTUM   # the detector sets MODEL.BN_MOMENTUM on every unit
        self.use_global_stats = False     # running statistics in training too (TRAIN.FROZEN_BN_STATS)
        self.use_bias = (not use_bn) if use_bias is None else bool(use_bias)
        with self.name_scope():
            self.weight = self.params.get(
                "weight", shape=(out_channels, in_channels // groups, kernel, kernel),
                init=weight_init or mx_init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.0))
            if self.use_bias:
                self.bias = self.params.get("bias", shape=(out_channels,), init=bias_init)
            if self.use_bn:
                self.gamma = self.params.get("gamma", shape=(out_channels,), init="ones")
                self.beta = self.params.get("beta", shape=(out_channels,), init="zeros")
                self.running_mean = self.params.get("running_mean", shape=(out_channels,), init="zeros",
                                                    grad_req="null", differentiable=False)
                self.running_var = self.params.get("running_var", shape=(out_channels,), init="ones",
                                                   grad_req="null", differentiable=False)

    @property
    def depthwise(self):
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def hybrid_forward(self, F, x, weight, bias=None, gamma=None, beta=None, running_mean=None,
                       running_var=None):
        pad = self.kernel // 2
        y = F.Convolution(x, weight, bias, kernel=(self.kernel, self.kernel), stride=(self.stride, self.stride),
                          pad=(pad, pad), num_filter=self.out_channels, num_group=self.groups,
                          no_bias=bias is None)
        if self.use_bn:
            y = F.BatchNorm(y, gamma, beta, running_mean, running_var, eps=BN_EPS, momentum=self.bn_momentum,
                            fix_gamma=False, use_global_stats=self.use_global_stats)
        return apply_activation(F, y, self.act)

    # ---- pruning -------------------------------------------------------------------------------
    def macs(self, out_h, out_w):
        k = self.kernel * self.kernel
        return out_h * out_w * self.out_channels * (self.in_channels // self.groups) * k

    def call_macs(self, inputs, output):
        """lib.flops protocol: MACs of one call (batch included)."""
        batch, _, h, w = output.shape
        return batch * self.macs(h, w)

    def _replace(self, attr, array):
        """Swap parameter ``attr`` for a new one holding ``array`` (a different shape)."""
        old = self._reg_params.pop(attr)
        ctx = old.list_ctx()
        new = gluon.Parameter(old.name, shape=array.shape, dtype=old.dtype, init=old.init,
                              grad_req=old.grad_req, differentiable=old._differentiable)
        new.initialize(ctx=ctx)
        new.set_data(array)
        self._params._params[old.name] = new
        setattr(self, attr, new)

    def _vector_params(self):
        names = []
        if self.use_bias:
            names.append("bias")
        if self.use_bn:
            names += ["gamma", "beta", "running_mean", "running_var"]
        return names

    def keep_outputs(self, keep):
        """Keep only output channels ``keep`` (sorted int indices); depthwise also drops inputs."""
        idx = mx.nd.array(keep, dtype="int64")
        self._replace("weight", mx.nd.take(self.weight.data(), idx, axis=0))
        for name in self._vector_params():
            self._replace(name, mx.nd.take(getattr(self, name).data(), idx, axis=0))
        if self.depthwise:
            self.in_channels = self.groups = len(keep)
        self.out_channels = len(keep)
        self._clear_cached_op()

    def keep_inputs(self, keep):
        """Keep only input channels ``keep`` (dense convs; depthwise convs use keep_outputs)."""
        if self.groups != 1:
            raise ValueError("keep_inputs: only dense (groups=1) convolutions take an input-channel cut")
        idx = mx.nd.array(keep, dtype="int64")
        self._replace("weight", mx.nd.take(self.weight.data(), idx, axis=1))
        self.in_channels = len(keep)
        self._clear_cached_op()

    def channel_state(self):
        return {"in": self.in_channels, "out": self.out_channels, "groups": self.groups}


class PruneGroup:
    """A set of layers whose channels are cut together.

    ``producer`` makes C channels; each ``follower`` is a depthwise conv applied to those channels
    (it follows the cut); each ``consumer`` is a dense conv reading exactly those C channels as its input.
    """

    def __init__(self, name, producer, followers=(), consumers=()):
        self.name, self.producer = name, producer
        self.followers, self.consumers = list(followers), list(consumers)
        for f in self.followers:
            if not f.depthwise:
                raise ValueError(f"prune group {name}: follower is not depthwise")
        for c in self.consumers:
            if c.groups != 1:
                raise ValueError(f"prune group {name}: consumer must be a dense conv")

    @property
    def channels(self):
        return self.producer.out_channels

    def apply(self, keep):
        keep = sorted(int(k) for k in keep)
        if not keep:
            raise ValueError(f"prune group {self.name}: cannot remove every channel")
        self.producer.keep_outputs(keep)
        for f in self.followers:
            f.keep_outputs(keep)
        for c in self.consumers:
            c.keep_inputs(keep)
