"""Light FlowNetSimple: flow between two frames at the feature stride (16), in feature pixels.

Layout of the reference (FlowNetS on a half-size input): encoder 7x7/2, 5x5/2, 5x5/2, 3x3, 3x3/2,
3x3, 3x3/2, 3x3, 3x3/2, 3x3 with LeakyReLU 0.1; a refinement decoder with deconvolutions
(512, 256, 128, 64), the upsampled coarser flow and the encoder skip features; the finest flow
(1/4 of the half-size input) is average-pooled by 2 to stride 16 and multiplied by ``scale``
(FlowNet predicts flow/20 at 1/8 of the original: 20 / 8 = 2.5). ``width`` scales every channel
count so the network stays cheap on CPU. The flow predictors start at zero: before training the
warp is the identity, which is what a randomly initialised network should do (no pretrained
FlowNet is available here).

For CPU inference, ``subpixel_copy`` gives the same network with every transposed convolution in its
sub-pixel convolution form (lib.layers.SubPixelUpsample): the form MXNet can quantize to int8.
"""
import cv2
import mxnet as mx
import numpy as np
from mxnet import init
from mxnet.gluon import nn

from lib.layers import SubPixelUpsample

ENCODER = [(7, 2, 64), (5, 2, 128), (5, 2, 256), (3, 1, 256), (3, 2, 512),
           (3, 1, 512), (3, 2, 512), (3, 1, 512), (3, 2, 1024), (3, 1, 1024)]
DECODER = (512, 256, 128, 64)
# encoder outputs used as skips for the decoder levels 5, 4, 3, 2 (conv5_1, conv4_1, conv3_1, conv2)
SKIPS = (7, 5, 3, 1)


def _ch(channels, width):
    return max(8, int(round(channels * width)))


class FlowNetSimple(nn.HybridBlock):
    def __init__(self, width=1.0, scale=2.5, subpixel=False, **kwargs):
        super().__init__(**kwargs)
        self.width, self.scale, self.subpixel = width, scale, subpixel
        with self.name_scope():
            self.encoder = nn.HybridSequential(prefix="enc_")
            for kernel, stride, channels in ENCODER:
                block = nn.HybridSequential(prefix="")
                block.add(nn.Conv2D(_ch(channels, width), kernel, stride, kernel // 2),
                          nn.LeakyReLU(0.1))
                self.encoder.add(block)
            self.deconvs = nn.HybridSequential(prefix="deconv_")
            self.flow_preds = nn.HybridSequential(prefix="flow_")
            self.flow_ups = nn.HybridSequential(prefix="flowup_")
            zero = init.Zero()
            self.flow_preds.add(nn.Conv2D(2, 3, 1, 1, weight_initializer=zero))  # coarsest flow6
            in_channels = _ch(ENCODER[-1][2], width)
            for level, channels in enumerate(DECODER):
                deconv = nn.HybridSequential(prefix="")
                if subpixel:   # built by subpixel_copy, which fills in the weights
                    deconv.add(SubPixelUpsample(_ch(channels, width), in_channels))
                    self.flow_ups.add(SubPixelUpsample(2, 2, use_bias=False))
                else:
                    deconv.add(nn.Conv2DTranspose(_ch(channels, width), 4, 2, 1))
                    self.flow_ups.add(nn.Conv2DTranspose(2, 4, 2, 1, use_bias=False))
                deconv.add(nn.LeakyReLU(0.1))
                self.deconvs.add(deconv)
                self.flow_preds.add(nn.Conv2D(2, 3, 1, 1, weight_initializer=zero))
                # the next level's input: the skip, this level's upsampled features and flow
                in_channels = _ch(ENCODER[SKIPS[level]][2], width) + _ch(channels, width) + 2

    def hybrid_forward(self, F, cur, ref):
        # halving each frame before stacking them is the same average and moves a quarter of the data
        return self.flow_from_half_pair(F, F.concat(half_size(F, cur), half_size(F, ref), dim=1))

    def flow_from_half_pair(self, F, x):
        """Flow from the two frames at half size stacked on channels (B,6,H/2,W/2)."""
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        flow = self.flow_preds[0](x)
        for level, skip_idx in enumerate(SKIPS):
            skip = feats[skip_idx]
            # stride-2 convs round sizes up, deconvs double them: crop to the skip size
            up = F.slice_like(self.deconvs[level](x), skip, axes=(2, 3))
            up_flow = F.slice_like(self.flow_ups[level](flow), skip, axes=(2, 3))
            x = F.concat(skip, up, up_flow, dim=1)
            flow = self.flow_preds[level + 1](x)
        flow = F.Pooling(flow, kernel=(2, 2), stride=(2, 2), pool_type="avg")
        return flow * self.scale

    def subpixel_copy(self):
        """An inference copy (same outputs) with the transposed convolutions in sub-pixel form, holding
        copies of this network's current weights (initialised, after a first forward pass)."""
        if self.subpixel:
            return self
        copy = FlowNetSimple(self.width, self.scale, subpixel=True, prefix=self.prefix + "subpixel_")
        copy.initialize(ctx=self.flow_preds[0].weight.list_ctx())
        for level in range(len(DECODER)):
            copy.deconvs[level][0].load_transposed(self.deconvs[level][0])
            copy.flow_ups[level].load_transposed(self.flow_ups[level])
        for source, target in ((self.encoder, copy.encoder), (self.flow_preds, copy.flow_preds)):
            for src, dst in zip(source.collect_params().values(), target.collect_params().values()):
                dst.set_data(src.data())
        return copy


def half_size(F, frames):
    """The FlowNet's input scale: 2x2 average pooling of (B,C,H,W) frames."""
    return F.Pooling(frames, kernel=(2, 2), stride=(2, 2), pool_type="avg")


def half_size_image(image):
    """``half_size`` of one pre-processed frame (C,H,W) in numpy, for streaming inference: each
    frame is halved once and kept for both flows it takes part in. OpenCV's area resize of the even
    part of the frame is the 2x2 mean (to float rounding) at ~1/20 of the time of MXNet's CPU
    Pooling on a 3-channel frame."""
    height, width = image.shape[1] // 2, image.shape[2] // 2
    planes = [cv2.resize(np.ascontiguousarray(plane[:2 * height, :2 * width]), (width, height),
                         interpolation=cv2.INTER_AREA) for plane in image]
    return np.stack(planes).astype(np.float32, copy=False)


class FlowPair(nn.HybridBlock):
    """The FlowNet on one input, the two frames at half size stacked on channels (B,6,H/2,W/2): the
    single-input form MXNet's quantization takes. Shares the FlowNet's parameters."""

    def __init__(self, flownet, **kwargs):
        super().__init__(prefix=flownet.prefix + "pair_", **kwargs)
        self.flownet = flownet

    def hybrid_forward(self, F, half_pair):
        return self.flownet.flow_from_half_pair(F, half_pair)

    @staticmethod
    def stack(cur, ref):
        """The block's input from two batches of full-size frames (B,3,H,W) (NDArrays)."""
        return mx.nd.concat(half_size(mx.nd, cur), half_size(mx.nd, ref), dim=1)

    @staticmethod
    def stack_halves(cur_half, ref_half):
        """The block's input from two batches of halved frames (B,3,H/2,W/2) (NDArrays)."""
        return mx.nd.concat(cur_half, ref_half, dim=1)
