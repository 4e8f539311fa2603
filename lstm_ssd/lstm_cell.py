"""Bottleneck-LSTM (LSTM-SSD, Liu & Zhu 2018) and its grouped variant (Looking Fast and Slow, 2019).

With N units in G groups (N/G = n channels each), for group k and the running extractor e:

    b_k = ReLU6(SepConv3x3_n^(e,k)([x_t ; h_{t-1,k}]))          bottleneck (per-extractor projection)
    [i, j, f, o]_k = SepConv3x3_4n^(k)(b_k)                      gates (shared by all extractors)
    c_t,k = c_{t-1,k} * sigmoid(f + forget_bias) + sigmoid(i) * ReLU6(j)   (clipped to +-clip if > 0)
    h_t,k = ReLU6(c_t,k) * sigmoid(o)

SepConv = 3x3 depthwise (no bias) then 1x1 (with bias), no normalisation. G = 1, one extractor,
no clipping and no bottleneck output is exactly the LSTM-SSD cell. The output is h_t, or
concat(h_t, b) (2N channels) with ``output_bottleneck`` (the skip connection of Looking Fast and Slow).

Parameters of the G per-group separable convs are stored stacked (as one depthwise conv over
[x ; h_1 ; x ; h_2 ; ...] followed by a grouped 1x1 conv would hold them).
"""
from mxnet import gluon
from mxnet import init as mx_init

from lib.layers import relu6


class SepConv(gluon.HybridBlock):
    """G independent separable convs (3x3 depthwise without bias -> 1x1 with bias), no activation.

    Parameters are stored stacked, as one depthwise conv over the concatenated group inputs and one
    grouped 1x1 conv would hold them; the forward pass runs each group on its own input (one input
    per group in, one output per group out).
    """

    def __init__(self, in_ch, out_ch, groups=1, kernel=3, **kwargs):
        super().__init__(**kwargs)
        self.in_ch, self.out_ch, self.groups, self.kernel = in_ch, out_ch, groups, kernel
        xavier = mx_init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3.0)
        with self.name_scope():
            self.dw_weight = self.params.get("dw_weight", shape=(in_ch, 1, kernel, kernel), init=xavier)
            self.pw_weight = self.params.get("pw_weight", shape=(out_ch, in_ch // groups, 1, 1), init=xavier)
            self.pw_bias = self.params.get("pw_bias", shape=(out_ch,), init="zeros")

    def hybrid_forward(self, F, *inputs, dw_weight, pw_weight, pw_bias):
        # Per-group convs rather than one depthwise conv over a concat of split tensors: the latter's
        # backward pass crashes MXNet 1.9.1's oneDNN kernels (SIGFPE) for some channel counts.
        if len(inputs) != self.groups:
            raise ValueError(f"SepConv expects {self.groups} group inputs, got {len(inputs)}")
        pad = self.kernel // 2
        cin, cout = self.in_ch // self.groups, self.out_ch // self.groups
        outs = []
        for k, x in enumerate(inputs):
            dw = dw_weight if self.groups == 1 else F.slice_axis(dw_weight, axis=0, begin=k * cin, end=(k + 1) * cin)
            pw = pw_weight if self.groups == 1 else F.slice_axis(pw_weight, axis=0, begin=k * cout, end=(k + 1) * cout)
            b = pw_bias if self.groups == 1 else F.slice_axis(pw_bias, axis=0, begin=k * cout, end=(k + 1) * cout)
            y = F.Convolution(x, dw, kernel=(self.kernel, self.kernel), pad=(pad, pad), num_filter=cin,
                              num_group=cin, no_bias=True)
            outs.append(F.Convolution(y, pw, b, kernel=(1, 1), num_filter=cout, no_bias=False))
        return outs[0] if self.groups == 1 else tuple(outs)

    def call_macs(self, inputs, output):
        """lib.flops protocol: depthwise k x k over in_ch + grouped 1x1 in_ch -> out_ch, per pixel."""
        first = output[0] if isinstance(output, (list, tuple)) else output   # all groups are one size
        batch, _, h, w = first.shape
        k = self.kernel * self.kernel
        return batch * h * w * (self.in_ch * k + self.out_ch * (self.in_ch // self.groups))


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _group_slices(F, x, groups, width):
    if groups == 1:
        return [x]
    return [F.slice_axis(x, axis=1, begin=k * width, end=(k + 1) * width) for k in range(groups)]


class Projection(gluon.HybridBlock):
    """Per-extractor bottleneck: (x, h) -> b = concat_k ReLU6(SepConv_k([x ; h_k]))."""

    def __init__(self, in_channels, units, groups=1, kernel=3, **kwargs):
        super().__init__(**kwargs)
        if units % groups:
            raise ValueError(f"LSTM UNITS ({units}) must be divisible by GROUPS ({groups})")
        self.groups, self.units = groups, units
        with self.name_scope():
            self.conv = SepConv(groups * (in_channels + units // groups), units, groups, kernel)

    def hybrid_forward(self, F, x, h):
        parts = _group_slices(F, h, self.groups, self.units // self.groups)
        outs = _as_list(self.conv(*[F.concat(x, hk, dim=1) for hk in parts]))
        outs = [relu6(F, b) for b in outs]
        return outs[0] if self.groups == 1 else F.concat(*outs, dim=1)


class Gates(gluon.HybridBlock):
    """Shared gate conv and state update: (b, c) -> (c_new, h_new)."""

    def __init__(self, units, groups=1, forget_bias=1.0, clip=0.0, kernel=3, **kwargs):
        super().__init__(**kwargs)
        self.units, self.groups, self.forget_bias, self.clip = units, groups, forget_bias, clip
        with self.name_scope():
            self.conv = SepConv(units, 4 * units, groups, kernel)

    def hybrid_forward(self, F, b, c):
        n = self.units // self.groups
        gates = _as_list(self.conv(*_group_slices(F, b, self.groups, n)))
        cs, hs = [], []
        for g, ck in zip(gates, _group_slices(F, c, self.groups, n)):
            # each group's 4n gate channels are [i, j, f, o]
            i, j, f, o = (F.slice_axis(g, axis=1, begin=q * n, end=(q + 1) * n) for q in range(4))
            c_new = ck * F.sigmoid(f + self.forget_bias) + F.sigmoid(i) * relu6(F, j)
            if self.clip > 0:
                c_new = F.clip(c_new, -self.clip, self.clip)
            cs.append(c_new)
            hs.append(relu6(F, c_new) * F.sigmoid(o))
        if self.groups == 1:
            return cs[0], hs[0]
        return F.concat(*cs, dim=1), F.concat(*hs, dim=1)


class LSTMStep(gluon.HybridBlock):
    """One time step for one extractor: (x, c, h) -> (output, c_new, h_new).

    Built on the cell's shared blocks, so each extractor's step hybridizes and exports on its own.
    """

    def __init__(self, projection, gates, output_bottleneck, **kwargs):
        super().__init__(prefix="", **kwargs)
        self.output_bottleneck = output_bottleneck
        self.projection = projection
        self.gates = gates

    def hybrid_forward(self, F, x, c, h):
        b = self.projection(x, h)
        c_new, h_new = self.gates(b, c)
        out = F.concat(h_new, b, dim=1) if self.output_bottleneck else h_new
        return out, c_new, h_new


class StepTable:
    """Extractor name -> LSTMStep, kept outside Gluon's child registry (the steps share blocks)."""

    def __init__(self, steps):
        self._steps = steps

    def __getitem__(self, name):
        return self._steps[name]

    def items(self):
        return self._steps.items()


class BottleneckLSTM(gluon.Block):
    """The memory: one projection per extractor + shared grouped gates."""

    def __init__(self, input_channels, units, groups=1, forget_bias=1.0, clip=0.0, output_bottleneck=False,
                 kernel=3, **kwargs):
        super().__init__(**kwargs)
        self.extractor_names = list(input_channels)
        self.units, self.groups = units, groups
        self.out_channels = 2 * units if output_bottleneck else units
        with self.name_scope():
            self.projections = gluon.nn.HybridSequential(prefix="proj_")
            for name in self.extractor_names:
                self.projections.add(Projection(input_channels[name], units, groups, kernel))
            self.gates = Gates(units, groups, forget_bias, clip, kernel)
        # not registered as children: they only re-use the blocks above
        self.steps = StepTable({name: LSTMStep(p, self.gates, output_bottleneck)
                                for name, p in zip(self.extractor_names, self.projections)})

    def forward(self, x, c, h, extractor=None):
        return self.steps[extractor or self.extractor_names[0]](x, c, h)
