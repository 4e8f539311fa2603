"""FGFA / R-FCN detector assembled from config: the network, its training losses, its inference parts.

With ``NETWORK.AGGREGATE: false`` the same network is the R-FCN single-frame baseline (no flow, no
embedding, no window). With aggregation, training sees a key frame and two neighbours; testing
(``fgfa.window.WindowRunner``) keeps per-frame features and embeddings in a window of 2K+1 frames.
The RPN and the R-FCN head compute their own losses (``RPN.loss``, ``RFCNHead.loss``).
"""
import math
import types

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from lib import pretrained
from lib.anchors import rpn_base_anchors, shift_anchors
from lib.backbones import EfficientNetLite
from lib.bbox import clip_boxes, decode_boxes
from lib.flow import DISFlow
from lib.nms import multiclass_nms
from lib.ops import channels_last as to_channels_last
from lib.ops import flow_aggregate  # looked up per call: tests replace it to prove it is not used
from lib.ops import uses_builtin
from lib.runtime import hybridize_for_inference, quantize_block

from .aggregation import FlowAggregator
from .backbone import ResNetV1Backbone
from .data import denormalize
from .embedding import EmbedNet
from .flownet import FlowNetSimple, FlowPair
from .operators import multi_proposal
from .rfcn_head import RFCNHead, rfcn_vote
from .rpn import RPN, denormalize_rpn_deltas, rpn_cls_prob


class FeatureNet(nn.HybridBlock):
    """Backbone + the 3x3 dilated feature conv (ReLU): the map that is warped and aggregated.

    The backbone (NETWORK.BACKBONE) ends at stride 16: ResNet v1 with res5 dilated, or EfficientNet-
    Lite0 (lib.backbones) with its stride-32 stage at stride 1 and dilation 2 (``s32`` tap, 320 ch)."""

    def __init__(self, net_cfg, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            if net_cfg.BACKBONE == "efficientnet_lite0":
                self.backbone = EfficientNetLite(net_cfg.WIDTH, taps=("s32",), dilate_last=True,
                                                 frozen_bn=net_cfg.NORM == "frozen", prefix="lite0_")
            else:
                self.backbone = ResNetV1Backbone(net_cfg.DEPTH, net_cfg.NORM, net_cfg.GROUPS,
                                                 net_cfg.RES5_DILATION, width=net_cfg.WIDTH, prefix="resnet_")
            dil = net_cfg.FEAT_DILATION
            self.feat_conv = nn.Conv2D(net_cfg.FEAT_CHANNELS, 3, padding=dil, dilation=dil,
                                       weight_initializer=mx.init.Normal(0.01))

    def hybrid_forward(self, F, x):
        return F.relu(self.feat_conv(self.backbone(x)))


class HeadMaps(nn.HybridBlock):
    """The head's convolutions on one feature map: RPN scores and deltas on the first half of the
    channels, R-FCN position-sensitive score and box maps on the second half. Shares the detector's
    parameters; int8 inference quantizes this block on its own (the proposal and pooling operators
    that follow stay in float)."""

    def __init__(self, rpn, rfcn, half, **kwargs):
        super().__init__(**kwargs)
        self.rpn, self.rfcn_cls, self.rfcn_box = rpn, rfcn.cls, rfcn.box
        self.half = half

    def hybrid_forward(self, F, feat):
        rpn_feat = F.slice_axis(feat, axis=1, begin=0, end=self.half)
        rfcn_feat = F.slice_axis(feat, axis=1, begin=self.half, end=None)
        cls_score, box_pred = self.rpn(rpn_feat)
        return cls_score, box_pred, self.rfcn_cls(rfcn_feat), self.rfcn_box(rfcn_feat)


class HeadDecode(nn.HybridBlock):
    """Head maps + im_info -> (rois, class probabilities, box deltas): MultiProposal, then the R-FCN
    vote (PSROIPooling + bin average). No parameters."""

    def __init__(self, cfg, num_classes, builtin_ops=None, **kwargs):
        super().__init__(**kwargs)
        net, test = cfg.NETWORK, cfg.TEST
        self.num_classes, self.group, self.feat_stride = num_classes, net.PS_GROUP, net.FEAT_STRIDE
        self.stds = [float(s) for s in net.RPN_BBOX_STDS]
        self.num_anchors = len(net.ANCHOR_SCALES) * len(net.ANCHOR_RATIOS)
        self.builtin_ops = builtin_ops
        self.proposal_attrs = dict(
            rpn_pre_nms_top_n=test.RPN_PRE_NMS_TOP_N, rpn_post_nms_top_n=test.RPN_POST_NMS_TOP_N,
            threshold=test.RPN_NMS, rpn_min_size=test.RPN_MIN_SIZE, feature_stride=net.FEAT_STRIDE,
            scales=tuple(float(s) for s in net.ANCHOR_SCALES),
            ratios=tuple(float(r) for r in net.ANCHOR_RATIOS))

    def hybrid_forward(self, F, cls_score, box_pred, cls_map, box_map, im_info):
        rois = multi_proposal(F, rpn_cls_prob(F, cls_score),
                              denormalize_rpn_deltas(F, box_pred, self.stds, self.num_anchors),
                              im_info, builtin=self.builtin_ops, **self.proposal_attrs)
        cls, box = rfcn_vote(F, cls_map, box_map, rois, self.num_classes, self.group, self.feat_stride,
                             self.builtin_ops)
        return rois, F.softmax(cls, axis=-1), box


class InferenceHead(nn.HybridBlock):
    """RPN -> MultiProposal -> R-FCN on one aggregated (or single-frame) feature map.

    Holds the detector's RPN and R-FCN blocks (shared parameters) so the whole head hybridizes into
    one graph; it is kept outside the detector's child list so parameters are saved once.
    """

    def __init__(self, rpn, rfcn, cfg, builtin_ops=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.maps = HeadMaps(rpn, rfcn, cfg.NETWORK.FEAT_CHANNELS // 2, prefix="maps_")
            self.decode = HeadDecode(cfg, rfcn.num_classes, builtin_ops, prefix="decode_")

    def hybrid_forward(self, F, feat, im_info):
        return self.decode(*self.maps(feat), im_info)


class FGFADetector(gluon.Block):
    """The whole model. ``num_classes`` counts foreground classes (background is added inside)."""

    def __init__(self, cfg, num_classes, builtin_ops=None, **kwargs):
        super().__init__(**kwargs)
        net = cfg.NETWORK
        self.cfg = cfg
        self.num_classes = num_classes
        self.aggregate = bool(net.AGGREGATE)
        self.feat_channels = net.FEAT_CHANNELS
        self.num_anchors = len(net.ANCHOR_SCALES) * len(net.ANCHOR_RATIOS)
        self.builtin_ops = builtin_ops
        # the flow the aggregation warps with: the FlowNet, or OpenCV's DIS on the CPU (NETWORK.FLOW)
        self.flow_source = net.FLOW
        self._dis = None
        with self.name_scope():
            self.features = FeatureNet(net, prefix="features_")
            if self.aggregate:
                self.embed = EmbedNet(net.EMBED_CHANNELS, quality=net.AGGREGATE_QUALITY, prefix="embed_")
                if net.AGGREGATE_QUALITY:
                    self.embed.quality.collect_params().setattr("lr_mult", cfg.TRAIN.AGGREGATE_QUALITY_LR_MULT)
                self.flownet = FlowNetSimple(net.FLOW_WIDTH, net.FLOW_SCALE, prefix="flow_")
                if net.AGGREGATE_SCALE_LEARNED:
                    # the log keeps the scale positive; started at NETWORK.AGGREGATE_SCALE
                    self.aggregate_log_scale = self.params.get(
                        "aggregate_log_scale", shape=(1,), init=mx.init.Constant(math.log(net.AGGREGATE_SCALE)),
                        lr_mult=cfg.TRAIN.AGGREGATE_SCALE_LR_MULT, wd_mult=0.0)
            self.rpn = RPN(self.num_anchors, prefix="rpn_")
            self.rfcn = RFCNHead(num_classes + 1, net.PS_GROUP, net.FEAT_STRIDE, builtin_ops, prefix="rfcn_")
        self.base_anchors = rpn_base_anchors(net.ANCHOR_BASE, tuple(net.ANCHOR_SCALES),
                                             tuple(net.ANCHOR_RATIOS))
        # inference-only blocks (not children: they share parameters with the ones above)
        self._infer = types.SimpleNamespace(
            head=InferenceHead(self.rpn, self.rfcn, cfg, builtin_ops, prefix="head_"), aggregators={},
            flow_pair=FlowPair(self.flownet) if self.aggregate else None,
            hybridized_ctx=None, int8_features=None, int8_maps=None, int8_embed=None, int8_flow=None)

    # ------------------------------------------------------------------ setup
    def init_weights(self, ctx=None):
        """Initialise everything; the backbone's weights from PRETRAINED (a lib.pretrained spec) when
        set. Returns the load report (None without PRETRAINED): which backbone parameters stay random."""
        ctx = ctx or mx.cpu()
        self.initialize(mx.init.Xavier(factor_type="in", magnitude=2.0), ctx=ctx)
        net, report = self.cfg.NETWORK, None
        backbone = self.features.backbone
        if self.cfg.PRETRAINED:
            if net.BACKBONE == "resnet":      # gluoncv's ResNet v1 names (lib.pretrained finds the file)
                report = backbone.load_gluoncv(pretrained.resolve(self.cfg.PRETRAINED), ctx)
            else:
                report = pretrained.load_into(backbone, self.cfg.PRETRAINED, arch="efficientnet_lite0", ctx=ctx)
        if net.FROZEN_STAGES:
            if net.BACKBONE == "resnet":
                backbone.freeze_stages(net.FROZEN_STAGES)
            else:   # 1: the stem; 2: the stem and blocks 0-2 (the stride-4 stage, as ResNet's conv1 + res2)
                backbone.freeze(-1 if net.FROZEN_STAGES == 1 else 2)
        return report

    def aggregator(self, num_frames):
        aggs = self._infer.aggregators
        if num_frames not in aggs:
            aggs[num_frames] = FlowAggregator(self.feat_channels, num_frames, self.builtin_ops,
                                              quality=self.cfg.NETWORK.AGGREGATE_QUALITY, prefix=f"agg{num_frames}_")
            if self._infer.hybridized_ctx is not None:
                hybridize_for_inference(aggs[num_frames], self._infer.hybridized_ctx)
        return aggs[num_frames]

    def aggregate_scale(self, ctx):
        """The cosine multiplier of the aggregation weights as a (1,) array on ``ctx`` (recorded for its
        gradient when learned): NETWORK.AGGREGATE_SCALE, or the exp of the learned log-scale."""
        if self.cfg.NETWORK.AGGREGATE_SCALE_LEARNED:
            return mx.nd.exp(self.aggregate_log_scale.data(ctx))
        return mx.nd.array([self.cfg.NETWORK.AGGREGATE_SCALE], ctx=ctx)

    def aggregate_scale_value(self):
        """``aggregate_scale`` as a Python float (the fused kernel's attribute)."""
        if self.cfg.NETWORK.AGGREGATE_SCALE_LEARNED:
            return math.exp(float(self.aggregate_log_scale.data().asscalar()))
        return float(self.cfg.NETWORK.AGGREGATE_SCALE)

    @property
    def head(self):
        return self._infer.head

    def use_builtin_ops(self, flag):
        """True: MXNet's contrib operators (needed in hybridized graphs on a GPU, where lib.ops cannot
        pick by the arrays' context); False: the compiled CPU kernels; None: choose by context."""
        self.builtin_ops = flag
        for block in [self.head.decode, self.rfcn] + list(self._infer.aggregators.values()):
            block.builtin_ops = flag
        return self

    def prepare_for_context(self, ctx):
        """Pick the operator implementation that fits ``ctx`` (built-ins on GPU)."""
        if getattr(ctx, "device_type", "cpu") != "cpu":
            self.use_builtin_ops(True)
        return self

    def hybridize_for_inference(self, ctx=None):
        """MKLDNN-fused graphs for the per-frame parts (lib.runtime.hybridize_for_inference)."""
        blocks = [self.features, self.head]
        if self.aggregate:
            blocks += [self.embed, self.flownet, self._infer.flow_pair]
        blocks += list(self._infer.aggregators.values())
        for block in blocks:
            hybridize_for_inference(block, ctx)
        self._infer.hybridized_ctx = ctx or mx.cpu()
        return self

    def quantize_int8(self, calib_images, calib_mode="naive", flow_calib_mode="entropy"):
        """int8 CPU inference (MXNet's MKLDNN quantization) of the backbone + feature conv and of the
        head's convolutions (HeadMaps); with aggregation also of the embedding network and the
        FlowNet's encoder and decoder (its transposed convolutions in their sub-pixel convolution form,
        which quantizes: FlowNetSimple.subpixel_copy). The proposal, PSROIPooling, warp and aggregation
        operators and the FlowNet's flow predictors and flow upsamplings (2-channel maps that need
        sub-pixel precision and cost little) stay in float.

        ``calib_images``: pre-processed frames (B,3,H,W) at the inference size, to calibrate the int8
        ranges on (the head and embedding on their int8 feature maps, the FlowNet on pairs of
        consecutive calibration frames). Afterwards ``frame_cache``, ``flow`` and
        ``detect_from_feature`` outside training run the quantized graphs; the float parameters
        (saving, training) are untouched. Returns (quantized features, quantized head maps).
        ``calib_mode`` / ``flow_calib_mode``: MXNet's calibration ('naive' min/max or 'entropy') of the
        detector's graphs / of the FlowNet. Entropy for the FlowNet: on speedtrap pairs the int8 flows
        were 0.13-0.14 feature px from the float ones against 0.24 with min/max ranges (mean flow
        0.67 px; fgfa/README.md).
        """
        if not mx.runtime.Features().is_enabled("MKLDNN"):
            raise RuntimeError("int8 quantization needs an MXNet build with MKLDNN (oneDNN)")
        calib = mx.nd.array(np.asarray(calib_images, np.float32))
        features = quantize_block(self.features, calib, calib_mode)
        feats = mx.nd.concat(*[features(calib[i:i + 1]) for i in range(len(calib))], dim=0)
        maps = quantize_block(self.head.maps, feats, calib_mode)
        self._infer.int8_features, self._infer.int8_maps = features, maps
        if self.aggregate:
            self._infer.int8_embed = quantize_block(self.embed, feats, calib_mode)
            pairs = FlowPair.stack(calib, mx.nd.concat(calib[1:], calib[:1], dim=0))
            flownet = self.flownet.subpixel_copy()
            float_layers = [conv.name + "_fwd" for conv in flownet.flow_preds]
            float_layers += [up.conv.name + "_fwd" for up in flownet.flow_ups]
            self._infer.int8_flow = quantize_block(FlowPair(flownet), pairs, flow_calib_mode,
                                                   exclude_layers=float_layers)
        return features, maps

    def flow(self, cur, ref):
        """FlowNet flows (B,2,h,w) from frames ``cur`` to ``ref`` (B,3,H,W each), int8 after quantize_int8."""
        if self._infer.int8_flow is not None and not autograd.is_training():
            return self._infer.int8_flow(FlowPair.stack(cur, ref))
        return self.flownet(cur, ref)

    def flow_from_halves(self, cur_half, ref_half):
        """``flow`` from the frames at half size (B,3,H/2,W/2 each; fgfa.flownet.half_size_image)."""
        stacked = FlowPair.stack_halves(cur_half, ref_half)
        if self._infer.int8_flow is not None:
            return self._infer.int8_flow(stacked)
        return self._infer.flow_pair(stacked)

    # ------------------------------------------------------------------ per-frame pieces
    def frame_cache(self, image, channels_last=False):
        """(B,3,H,W) -> cache (B, C[+E], h, w): feature map, plus its embedding with aggregation.
        ``channels_last`` (aggregation, compiled operators): the cache as (B, h, w, C+E), the layout of
        the fastest fused aggregation (``aggregate_window(..., channels_last=True)``)."""
        int8 = self._infer.int8_features
        feat = int8(image) if int8 is not None and not autograd.is_training() else self.features(image)
        if not self.aggregate:
            return feat
        embed = self._infer.int8_embed if int8 is not None and not autograd.is_training() else self.embed
        if channels_last:
            return to_channels_last([feat, embed(feat)])
        return mx.nd.concat(feat, embed(feat), dim=1)

    def fuses_aggregation(self, ctx):
        """Whether ``aggregate_window`` runs the fused compiled kernel for arrays on ``ctx`` (CPU with
        the compiled operators), which can also take channels-last caches."""
        return self.aggregate and not uses_builtin(mx.nd.zeros((1,), ctx=ctx), self.builtin_ops)

    def detect_from_feature(self, feat, im_info):
        """Aggregated feature (1,C,h,w) + im_info (1,3) -> (rois (R,5), probs (R,C+1), deltas (R,8))."""
        int8 = self._infer.int8_maps
        if int8 is not None and not autograd.is_training():
            return self.head.decode(*int8(feat), im_info)
        return self.head(feat, im_info)

    def aggregate_window(self, key_cache, caches, flows, fused=None, channels_last=False):
        """Key cache (1,C+E,h,w), window caches [T x (1,C+E,h,w)], flows [T x (1,2,h,w)] -> (1,C,h,w).

        ``fused`` (default: on CPU with the compiled operators) runs lib.ops.flow_aggregate, one pass
        over the window without building the warped (T, C+E, h, w) stack; otherwise the composite
        FlowAggregator graph (GPU, MXNet built-ins; the same numbers). ``channels_last``: the caches
        are (1, h, w, C+E) (``frame_cache(..., channels_last=True)``), fused kernel only."""
        if fused is None:
            fused = self.fuses_aggregation(key_cache.context)
        if channels_last and not fused:
            raise ValueError("channels-last caches need the fused aggregation (compiled CPU operators)")
        if fused:
            out, _ = flow_aggregate(key_cache, caches, flows, self.feat_channels, channels_last=channels_last,
                                    scale=self.aggregate_scale_value(), quality=self.cfg.NETWORK.AGGREGATE_QUALITY)
            return out
        key_embed = key_cache[:, self.feat_channels:]
        out, _ = self.aggregator(len(caches))(key_embed, mx.nd.concat(*caches, dim=0),
                                              mx.nd.concat(*flows, dim=0), self.aggregate_scale(key_cache.context))
        return out

    # ------------------------------------------------------------------ post-processing
    def postprocess(self, rois, probs, deltas, im_info):
        """Numpy detections in ORIGINAL image pixels: boxes (K,4), scores (K,), labels (K,) 0-based."""
        test, net = self.cfg.TEST, self.cfg.NETWORK
        rois = rois.asnumpy() if hasattr(rois, "asnumpy") else rois
        probs = probs.asnumpy() if hasattr(probs, "asnumpy") else probs
        deltas = deltas.asnumpy() if hasattr(deltas, "asnumpy") else deltas
        height, width, scale = [float(v) for v in np.asarray(im_info).reshape(-1)[:3]]
        # MultiProposal rois are +1-inclusive: x2 + 1 gives our exclusive corners
        boxes = rois[:, 1:5].astype(np.float64) + np.array([0, 0, 1, 1])
        boxes = decode_boxes(deltas[:, 4:8].astype(np.float64), boxes,
                             stds=tuple(net.RCNN_BBOX_STDS), means=(0, 0, 0, 0))
        boxes = clip_boxes(boxes, width, height) / scale
        boxes, scores, labels = multiclass_nms(
            boxes.astype(np.float32), probs[:, 1:].astype(np.float32), test.SCORE_THRESH, test.NMS_IOU,
            test.MAX_PER_IMAGE, test.MAX_PER_IMAGE)
        return boxes, scores, labels

    # ------------------------------------------------------------------ training
    def dis_flows(self, data, grid_shape):
        """NETWORK.FLOW dis in training: OpenCV DIS from each key frame (data[:, 0]) to its neighbours
        (data[:, 1:]) on the RGB frames recovered from the normalised batch, on the feature grid ->
        (N*(F-1), 2, h, w), no gradient (the FlowNet is not used)."""
        if self._dis is None:
            self._dis = DISFlow(self.cfg.TEST.DIS_PRESET, self.cfg.TEST.DIS_SCALE)
        mean, std, stride = self.cfg.INPUT.MEAN, self.cfg.INPUT.STD, int(self.cfg.NETWORK.FEAT_STRIDE)
        frames = data.asnumpy()
        grids = []
        for clip in frames:
            key = denormalize(clip[0], mean, std)
            grids += [self._dis.grid(key, denormalize(ref, mean, std), stride, grid_shape).transpose(2, 0, 1)
                      for ref in clip[1:]]
        return mx.nd.array(np.stack(grids), ctx=data.context)

    def train_loss(self, data, im_info, gt_boxes, gt_labels, rng):
        """Losses of one batch (call inside autograd.record).

        data (N, F, 3, H, W): key frame first, then the neighbours (F = 3; 1 for the baseline);
        im_info (N, 3) [height, width, scale] of the resized (unpadded) images; gt_boxes / gt_labels:
        per image numpy (G,4) in resized pixels and (G,) 0-based labels. Returns (total, parts dict).
        """
        cfg, train = self.cfg, self.cfg.TRAIN
        ctx = data.context
        n_img = data.shape[0]
        im_info = np.asarray(im_info.asnumpy() if hasattr(im_info, "asnumpy") else im_info, np.float32)
        im_info_nd = mx.nd.array(im_info, ctx=ctx)
        if self.aggregate:
            frames = data.reshape((-3, -2))                                   # (N*F, 3, H, W)
            caches = self.frame_cache(frames)
            n_frames = data.shape[1]
            caches5 = caches.reshape((-4, n_img, n_frames, -2))
            key_cache = caches5[:, 0]
            chosen = list(range(n_frames)) if train.AGGREGATE_KEY else list(range(1, n_frames))
            sel = mx.nd.stack(*[caches5[:, i] for i in chosen], axis=1).reshape((-3, -2))
            key_img = data[:, 0]
            ref_imgs = [data[:, i] for i in range(1, n_frames)]
            if self.flow_source == "dis":
                flows_nb = self.dis_flows(data, tuple(caches.shape[-2:]))
            else:
                flows_nb = self.flownet(mx.nd.stack(*[key_img] * len(ref_imgs), axis=1).reshape((-3, -2)),
                                        mx.nd.stack(*ref_imgs, axis=1).reshape((-3, -2)))  # (N*(F-1),2,h,w)
            flows_nb = flows_nb.reshape((-4, n_img, len(ref_imgs), -2))
            parts = []
            for i in chosen:
                parts.append(mx.nd.zeros_like(flows_nb[:, 0]) if i == 0 else flows_nb[:, i - 1])
            flows = mx.nd.stack(*parts, axis=1).reshape((-3, -2))
            feat, _ = self.aggregator(len(chosen))(key_cache[:, self.feat_channels:], sel, flows,
                                                   self.aggregate_scale(ctx))
        else:
            feat = self.features(data[:, 0])
        half = self.feat_channels // 2
        rpn_feat, rfcn_feat = feat[:, :half], feat[:, half:]
        cls_score, box_pred = self.rpn(rpn_feat)
        net = cfg.NETWORK
        anchors = shift_anchors(self.base_anchors, feat.shape[2], feat.shape[3], net.FEAT_STRIDE)
        rpn_cls_loss, rpn_box_loss = self.rpn.loss(cls_score, box_pred, anchors, gt_boxes, im_info, train,
                                                   net.RPN_BBOX_STDS, rng)
        # proposals (no gradient), then R-CNN targets on all proposals + gt boxes
        with autograd.pause():
            rois = multi_proposal(
                mx.nd, rpn_cls_prob(mx.nd, cls_score.detach()),
                denormalize_rpn_deltas(mx.nd, box_pred.detach(), net.RPN_BBOX_STDS, self.num_anchors),
                im_info_nd, builtin=self.builtin_ops,
                rpn_pre_nms_top_n=train.RPN_PRE_NMS_TOP_N, rpn_post_nms_top_n=train.RPN_POST_NMS_TOP_N,
                threshold=train.RPN_NMS, rpn_min_size=train.RPN_MIN_SIZE, feature_stride=net.FEAT_STRIDE,
                scales=tuple(float(s) for s in net.ANCHOR_SCALES),
                ratios=tuple(float(r) for r in net.ANCHOR_RATIOS)).asnumpy()
        rcnn_cls_loss, rcnn_box_loss = self.rfcn.loss(rfcn_feat, rois, gt_boxes, gt_labels, train,
                                                      net.RCNN_BBOX_STDS, rng)
        total = rpn_cls_loss + rpn_box_loss + rcnn_cls_loss + rcnn_box_loss
        parts = {"rpn_cls": rpn_cls_loss, "rpn_box": rpn_box_loss,
                 "rcnn_cls": rcnn_cls_loss, "rcnn_box": rcnn_box_loss}
        return total, {k: float(v.asscalar()) for k, v in parts.items()}
