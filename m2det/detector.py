"""M2Det assembled from config: backbone -> FFMv1 -> (FFMv2 -> TUM) x L -> SFAM -> heads.

``M2Det`` is the training network: normalised input (N,3,H,W) -> class logits (N,P,C+1) (background
at 0) and box deltas (N,P,4) against ``net.priors`` (normalised corners, lib.anchors.ssd_priors).
``M2DetInference`` wraps it with softmax, decoding, clipping and per-class hard NMS inside the graph
and returns gluoncv-style ids/scores/boxes in input pixels; it is what m2det-convert-model exports.
``postprocess`` is the same post-processing in numpy through lib.bbox / lib.nms, and also offers
soft-NMS, which has no graph operator.
"""
import logging
import math

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from lib.anchors import ssd_priors
from lib.config import ConfigError, size_hw
from lib.pretrained import PretrainedError
from lib.bbox import clip_boxes, decode_boxes, decode_boxes_F
from lib.export import graph_multiclass_nms
from lib.nms import multiclass_nms

from .backbones import build_backbone, load_pretrained
from .ffm import FFMv1, FFMv2
from .head import MultiBoxHead
from .layers import BasicConv
from .sfam import SFAM
from .tum import TUM, tum_sizes


def backbone_tap_sizes(backbone, input_hw):
    """(shallow, deep) (h, w) sizes of the two taps, by shape inference on the backbone graph."""
    data = mx.sym.var("data")
    shallow, deep = backbone(data)
    shape = (1, 3) + tuple(input_hw)
    s = shallow.infer_shape(data=shape)[1][0]
    d = deep.infer_shape(data=shape)[1][0]
    return tuple(s[2:4]), tuple(d[2:4])


def anchors_per_cell(aspect_ratios):
    """SSD layout: min size, sqrt(min*max), then each ratio and its inverse."""
    return 2 + 2 * len(aspect_ratios)


def prior_settings(model_cfg, feature_sizes, input_hw):
    """Steps, min sizes and max sizes (pixels) as the official mk_anchors computes them.

    ``feature_sizes`` and ``input_hw`` are (h, w). The size pattern is a fraction of the input side S;
    for a non-square input, of sqrt(H * W) (the side of the square of the same area), so priors stay
    square in pixels and cover the share of the image area they cover at S x S. Without STEPS the step of
    each axis is input / feature size (a pair per level when they differ).
    """
    height, width = (int(v) for v in input_hw)
    size = math.sqrt(height * width)     # S for a square input (exact: S * S is a perfect square)
    n = len(feature_sizes)
    pattern = list(model_cfg.PRIORS.SIZE_PATTERN)
    if len(pattern) != n + 1:
        raise ValueError(f"MODEL.PRIORS.SIZE_PATTERN needs NUM_SCALES + 1 = {n + 1} values, "
                         f"got {len(pattern)}: {pattern}")
    steps = list(model_cfg.PRIORS.STEPS)
    if steps and height != width:
        raise ValueError(f"MODEL.PRIORS.STEPS {steps}: give [] for a non-square INPUT.SIZE "
                         f"{[height, width]} (the steps then follow each axis)")
    if not steps:
        steps = [height / fh if height / fh == width / fw else (height / fh, width / fw)
                 for fh, fw in feature_sizes]
    if len(steps) != n:
        raise ValueError(f"MODEL.PRIORS.STEPS needs NUM_SCALES = {n} values (or [] for "
                         f"input_size / feature_size), got {len(steps)}: {steps}")
    min_sizes = [round(x * size, 2) for x in pattern[:-1]]
    max_sizes = [round(x * size, 2) for x in pattern[1:]]
    return steps, min_sizes, max_sizes


class SSDPyramid(nn.HybridBlock):
    """Ablation baseline: SSD-style pyramid on the FFMv1 base feature (one strided conv per scale),
    the same sizes as the TUMs give, no multi-level features."""

    def __init__(self, sizes, planes, **kwargs):
        super().__init__(**kwargs)
        n = len(sizes)
        with self.name_scope():
            self.extras = nn.HybridSequential(prefix="extra_")
            with self.extras.name_scope():
                for i in range(n - 1):
                    last = i == n - 2
                    self.extras.add(BasicConv(planes, 3, strides=1 if last else 2, padding=0 if last else 1))

    def hybrid_forward(self, F, base):
        sources = [base]
        for layer in self.extras:
            sources.append(layer(sources[-1]))
        return sources


class M2Det(nn.HybridBlock):
    """The training network for inputs of ``input_size`` (INPUT.SIZE: S or [H, W]); ``num_classes``
    counts foreground classes. ``input_hw`` and every entry of ``feature_sizes`` are (h, w)."""

    def __init__(self, model_cfg, num_classes, input_size, **kwargs):
        super().__init__(**kwargs)
        cfg = model_cfg
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = int(num_classes)
        try:
            self.input_hw = size_hw(input_size, "INPUT.SIZE")
        except ConfigError as err:
            raise ValueError(str(err)) from None
        if min(self.input_hw) < 32:
            raise ValueError(f"INPUT.SIZE must be >= 32 on each side, got {input_size}")
        shown = self.input_hw[0] if self.input_hw[0] == self.input_hw[1] else list(self.input_hw)
        self.num_levels, self.num_scales = int(cfg.NUM_LEVELS), int(cfg.NUM_SCALES)
        self.pyramid = cfg.PYRAMID
        if self.pyramid not in ("m2det", "ssd"):
            raise ValueError(f"MODEL.PYRAMID must be 'm2det' or 'ssd', got {self.pyramid!r}")
        if self.num_levels < 1:
            raise ValueError(f"MODEL.NUM_LEVELS must be >= 1, got {self.num_levels}")
        planes = int(cfg.PLANES)
        with self.name_scope():
            self.backbone = build_backbone(cfg.BACKBONE, cfg.BACKBONE_WIDTH)
            shallow, deep = backbone_tap_sizes(self.backbone, self.input_hw)
            try:
                self.feature_sizes = tum_sizes(shallow, self.num_scales)
            except ValueError as err:
                raise ValueError(f"INPUT.SIZE {shown} with backbone {cfg.BACKBONE} gives "
                                 f"no valid pyramid: {err}") from None
            self.ffm1 = FFMv1(shallow, deep, int(cfg.SHALLOW_CHANNELS),
                              int(cfg.DEEP_CHANNELS))
            if self.pyramid == "ssd":
                self.ssd_pyramid = SSDPyramid(self.feature_sizes, planes)
                source_channels = [self.ffm1.out_channels] + [planes] * (self.num_scales - 1)
            else:
                self.ffm2 = nn.HybridSequential(prefix="ffm2_")
                with self.ffm2.name_scope():
                    for _ in range(1 if cfg.SHARED_WEIGHTS else self.num_levels):
                        self.ffm2.add(FFMv2(planes // 2))
                self.tums = nn.HybridSequential(prefix="tum_")
                with self.tums.name_scope():
                    for _ in range(self.num_levels):
                        self.tums.add(TUM(self.feature_sizes, planes, smooth=cfg.SMOOTH))
                self.sfam = SFAM(self.num_levels, self.num_scales, planes, use_se=cfg.SFAM,
                                 reduction=int(cfg.SFAM_REDUCTION), shared=cfg.SHARED_WEIGHTS)
                source_channels = [planes * self.num_levels] * self.num_scales
            self.source_norm = nn.BatchNorm(in_channels=source_channels[0]) if cfg.SOURCE_NORM else None
            steps, min_sizes, max_sizes = prior_settings(cfg, self.feature_sizes, self.input_hw)
            ratios = [list(cfg.PRIORS.ASPECT_RATIOS)] * self.num_scales
            self.priors = np.asarray(ssd_priors(self.input_hw, self.feature_sizes, steps, min_sizes,
                                                max_sizes, ratios, clip=cfg.PRIORS.CLIP), np.float32)
            self.anchors_per_cell = anchors_per_cell(cfg.PRIORS.ASPECT_RATIOS)
            expected = self.anchors_per_cell * sum(fh * fw for fh, fw in self.feature_sizes)
            if self.priors.shape != (expected, 4):
                raise RuntimeError(f"ssd_priors returned {self.priors.shape}, expected ({expected}, 4)")
            self.head = MultiBoxHead(self.num_scales, self.anchors_per_cell, self.num_classes + 1)
        self.variances = tuple(float(v) for v in cfg.PRIORS.VARIANCES)
        if cfg.BN_MOMENTUM > 0:
            momentum = float(cfg.BN_MOMENTUM)

            def set_momentum(block):
                if isinstance(block, nn.BatchNorm):
                    block._kwargs["momentum"] = momentum
            self.apply(set_momentum)

    @property
    def num_priors(self):
        return len(self.priors)

    def initialize_weights(self, ctx=None, pretrained_spec="", input_norm=None):
        """Official init: He normal (fan_out) convs, BN gamma 1 / beta 0, zero biases; then the
        backbone's weights from a lib.pretrained spec (PRETRAINED) -> its LoadReport (or None)."""
        he_normal = mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
        # Small head weights start every prior near the uniform class distribution, which trains
        # from scratch much faster than He init on the heads (keras-retinanet uses 0.01 too).
        head_init = mx.init.Normal(self.cfg.HEAD_INIT_STD) if self.cfg.HEAD_INIT_STD > 0 else he_normal
        head_params = set(self.head.collect_params().keys())
        for name, param in self.collect_params().items():
            param.initialize(ctx=ctx, default_init=head_init if name in head_params else he_normal)
        if pretrained_spec:
            return load_pretrained(self.backbone, self.cfg.BACKBONE, pretrained_spec, input_norm, ctx)
        return None

    def backbone_params(self):
        return self.backbone.collect_params()

    def hybrid_forward(self, F, x):
        shallow, deep = self.backbone(x)
        base = self.ffm1(shallow, deep)
        if self.pyramid == "ssd":
            sources = self.ssd_pyramid(base)
        else:
            flat = []
            previous = None
            for level, tum in enumerate(self.tums):
                squeezed = self.ffm2[0 if len(self.ffm2) == 1 else level](base)
                tum_in = squeezed if previous is None else F.concat(squeezed, previous, dim=1)
                outs = tum(tum_in)   # smallest first
                previous = outs[-1]
                flat.extend(outs)
            sources = self.sfam(*flat)  # largest first
        sources = list(sources)
        if self.source_norm is not None:
            sources[0] = self.source_norm(sources[0])
        return self.head(*sources)


class M2DetInference(nn.HybridBlock):
    """Training network + softmax + decode + clip + per-class hard NMS, all in the graph.

    Input: normalised (N,3,H,W). Output: ids (N,K,1) 0-based foreground, scores (N,K,1),
    boxes (N,K,4) in input pixels, -1 padded, K = min(MAX_PER_IMAGE, classes * MAX_PER_CLASS).
    """

    def __init__(self, net, test_cfg, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.score_thresh = float(test_cfg.SCORE_THRESH)
        self.nms_iou = float(test_cfg.NMS_IOU)
        self.max_per_class = int(test_cfg.MAX_PER_CLASS)
        self.max_per_image = int(test_cfg.MAX_PER_IMAGE)
        self.pre_nms_topk = int(test_cfg.PRE_NMS_TOP_K)
        self.num_classes = net.num_classes
        self.input_hw = net.input_hw
        self.variances = net.variances
        with self.name_scope():
            self.priors = self.params.get_constant("priors", mx.nd.array(net.priors[None]))

    def hybrid_forward(self, F, x, priors):
        cls_logits, box_deltas = self.net(x)
        probs = F.softmax(cls_logits, axis=-1)
        boxes = decode_boxes_F(F, box_deltas, priors, stds=self.variances)
        boxes = F.clip(boxes, 0.0, 1.0)
        height, width = (float(v) for v in self.input_hw)
        if height == width:
            boxes = boxes * width
        else:   # x1, y1, x2, y2 scaled by width, height: scalar products keep the graph constant-free
            boxes = F.concat(*[F.slice_axis(boxes, axis=-1, begin=i, end=i + 1) * (width if i % 2 == 0 else height)
                               for i in range(4)], dim=-1)
        scores = F.slice_axis(probs, axis=-1, begin=1, end=None)     # column 0: background
        return graph_multiclass_nms(F, scores, boxes, self.num_classes, self.score_thresh, self.nms_iou,
                                    self.max_per_class, self.max_per_image, self.pre_nms_topk)


def postprocess(cls_logits, box_deltas, priors, input_hw, test_cfg, variances=(0.1, 0.1, 0.2, 0.2),
                method=None):
    """numpy post-processing of one image's raw outputs -> (boxes (K,4) input pixels, scores, labels);
    ``input_hw``: the network input (h, w).

    Same steps as M2DetInference, through lib.bbox and lib.nms; ``method`` (default TEST.NMS_METHOD) may
    also be soft-NMS ('linear' / 'gaussian').
    """
    logits = np.asarray(cls_logits, np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    boxes = decode_boxes(np.asarray(box_deltas, np.float64), np.asarray(priors, np.float64), stds=variances)
    height, width = (float(v) for v in input_hw)
    boxes = np.clip(boxes, 0.0, 1.0) * np.array([width, height, width, height])
    boxes = clip_boxes(boxes, width, height)
    scores = probs[:, 1:]
    topk = int(test_cfg.PRE_NMS_TOP_K)
    if 0 < topk < len(scores):
        # Only the top-k candidates of each class enter NMS (box_nms's topk in the graph).
        drop = np.argsort(-scores, axis=0, kind="stable")[topk:]
        scores = scores.copy()
        np.put_along_axis(scores, drop, -1.0, axis=0)
    return multiclass_nms(boxes, scores, score_threshold=float(test_cfg.SCORE_THRESH),
                          iou_threshold=float(test_cfg.NMS_IOU), max_per_class=int(test_cfg.MAX_PER_CLASS),
                          max_total=int(test_cfg.MAX_PER_IMAGE), method=method or test_cfg.NMS_METHOD,
                          sigma=float(test_cfg.SOFT_NMS_SIGMA))


def first_context(ctx):
    """The first of one context or a list (None: the CPU)."""
    if ctx is None:
        return mx.cpu()
    return ctx[0] if isinstance(ctx, (list, tuple)) else ctx


def build_network(cfg, num_classes):
    """The (uninitialised) M2Det of a config; a MODEL / INPUT value it cannot be built from is a
    ConfigError naming the config file."""
    try:
        return M2Det(cfg.MODEL, num_classes, cfg.INPUT.SIZE)
    except ValueError as err:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: {err}") from None


def build_model(cfg, num_classes, ctx=None, pretrained_weights=True, logger=None):
    """An initialised M2Det training network for ``num_classes`` foreground classes (``ctx``: one
    context or a list, for data-parallel training), the backbone from PRETRAINED (unless
    ``pretrained_weights`` is False: a checkpoint will hold them); a bad source is a ConfigError."""
    net = build_network(cfg, num_classes)
    spec = cfg.get("PRETRAINED", "") if pretrained_weights else ""
    try:
        report = net.initialize_weights(ctx=ctx or mx.cpu(), pretrained_spec=spec,
                                        input_norm=(list(cfg.INPUT.MEAN), list(cfg.INPUT.STD)))
    except PretrainedError as err:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: PRETRAINED: {err}") from None
    if report is not None:
        (logger or logging.getLogger("m2det")).info("backbone weights %s", report.summary())
    # One forward pass completes deferred shapes so that checkpoints can be loaded right away.
    net(mx.nd.zeros((1, 3) + net.input_hw, ctx=first_context(ctx)))
    return net


def prior_spec(net):
    """The network's priors as an anchor configuration of lib.anchor_coverage (TYPE ssd)."""
    steps, min_sizes, max_sizes = prior_settings(net.cfg, net.feature_sizes, net.input_hw)
    return {"TYPE": "ssd", "IMAGE_SIZE": list(net.input_hw), "FEATURE_SIZES": [list(f) for f in net.feature_sizes],
            "STEPS": list(steps), "MIN_SIZES": min_sizes, "MAX_SIZES": max_sizes,
            "ASPECT_RATIOS": [list(net.cfg.PRIORS.ASPECT_RATIOS)] * len(net.feature_sizes),
            "CLIP": bool(net.cfg.PRIORS.CLIP)}
