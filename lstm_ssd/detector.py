"""Detectors assembled from config: LSTM-SSD (A), its frame baseline, Looking Fast and Slow (B).

The network is split into parts that hybridize and export on their own, and the time loop runs in
Python, so training (unrolled), streaming (one frame per call) and the exported artefacts all run the
same blocks:

    extractor[e]  : frames (B,3,H,W) RGB 0..255 -> features (B,Ce,Fh,Fw)  (resize to its own input size
                    and scaling to [-1, 1] happen inside the graph; INPUT.SIZE is S or [H, W])
    memory.steps[e]: (features, c, h) -> (output, c_new, h_new)         (Bottleneck-LSTM, per extractor)
    project       : features -> level 0 (frame baseline; with LSTM.RESIDUAL also around the memory:
                    level 0 = project(features) + [gate *] memory_mix(output), see ResidualStep)
    head          : level 0 -> class logits (B,P,C+1), box deltas (B,P,4)

Looking Fast and Slow: the small extractor reads the memory but never writes it (the state after a
small step is the state before it).
"""
import contextlib
import json
import os

import mxnet as mx
import numpy as np
from easydict import EasyDict
from mxnet import autograd, gluon

from lib import pretrained
from lib.anchors import multiscale_anchors
from lib.backbones import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite
from lib.bbox import clip_boxes, decode_boxes
from lib.config import ConfigError, size_hw
from lib.fileio import atomic_save, atomic_write_json
from lib.nms import multiclass_nms
from lib.ops import flow_warp
from lib.runtime import quantize_block
from lib.train.checkpoint import CheckpointError, load_weights

from .layers import ConvBN, PruneGroup
from .lstm_cell import BottleneckLSTM, StepTable
from .mobilenet import MobileNet
from .ssdlite import SSDLiteHead, anchors_per_level, pyramid_sizes

MODEL_TYPES = ("lstm_ssd", "ssdlite", "fast_slow")


class LiteBackbone(gluon.HybridBlock):
    """EfficientNet-Lite0 (lib.backbones) as an extractor's backbone: the ``s32`` tap (320 channels) at
    OUTPUT_STRIDE 32, ``s16`` (112) at 16, ``s8`` (40) at 8; its ImageNet normalisation inside (RGB
    0..255 in)."""

    def __init__(self, width=1.0, output_stride=32, **kwargs):
        super().__init__(**kwargs)
        taps = {32: "s32", 16: "s16", 8: "s8"}
        if output_stride not in taps:
            raise ValueError(f"OUTPUT_STRIDE of efficientnet_lite0 must be 8, 16 or 32, got {output_stride}")
        with self.name_scope():
            self.net = EfficientNetLite(width, taps=(taps[output_stride],), prefix="")
            self.mean = self.params.get_constant("mean", mx.nd.array(IMAGENET_MEAN).reshape((1, 3, 1, 1)))
            self.std = self.params.get_constant("std", mx.nd.array(IMAGENET_STD).reshape((1, 3, 1, 1)))
        self.out_channels = self.net.tap_channels[taps[output_stride]]
        self.stride = output_stride

    def hybrid_forward(self, F, x, mean, std):
        return self.net(F.broadcast_div(F.broadcast_sub(x, mean), std))

    def prune_groups(self, prefix="backbone"):
        raise ValueError("filter pruning supports the MobileNet extractors (NET mobilenet_v1 / mobilenet_v2), "
                         "not efficientnet_lite0")


class Extractor(gluon.HybridBlock):
    """Resize (if needed) + backbone: MobileNet on [-1, 1] inputs (TF-OD's scaling), or EfficientNet-Lite0
    with its ImageNet normalisation (``NET: efficientnet_lite0``, ImageNet weights with PRETRAINED).
    With ``grid_hw`` its features are resized (bilinear) to that grid (a small extractor on smaller frames
    feeding the large one's memory and head)."""

    def __init__(self, spec, image_hw, key="MODEL", grid_hw=None, **kwargs):
        super().__init__(**kwargs)
        self.image_hw = tuple(image_hw)
        self.input_hw = size_hw(spec.INPUT_SIZE, f"{key}.INPUT_SIZE") if spec.INPUT_SIZE else self.image_hw
        self.net_name = spec.NET
        with self.name_scope():
            if spec.NET == "efficientnet_lite0":
                self.backbone = LiteBackbone(spec.WIDTH, spec.OUTPUT_STRIDE, prefix="lite0_")
            else:
                self.backbone = MobileNet(spec.NET, spec.WIDTH, spec.NUM_BLOCKS, spec.OUTPUT_STRIDE, spec.MIN_DEPTH)
        self.out_channels = self.backbone.out_channels
        self.own_hw = tuple(int(np.ceil(s / self.backbone.stride)) for s in self.input_hw)
        self.feature_hw = tuple(grid_hw) if grid_hw else self.own_hw

    def hybrid_forward(self, F, x):
        return _scaled_features(F, self, x)

    def run_backbone(self, x):
        """The backbone on frames already at its input size (RGB 0..255), with its own input scaling."""
        if self.net_name == "efficientnet_lite0":
            return self.backbone(x)
        return self.backbone(x / 127.5 - 1.0)


class ScaledExtractor(gluon.HybridBlock):
    """MODEL.SMALL.NET large with SHARE: the large extractor itself, on frames scaled to SMALL.INPUT_SIZE,
    its features resized (bilinear) to the large extractor's grid. A small extractor with no weights of
    its own: a trained LSTM-SSD is a Looking-Fast-and-Slow model as it is (the small steps go through the
    large one's projection, memory cell and head) at about (small / large input side)^2 of the large
    extractor's work. Not a child of the detector (its weights are the large one's)."""

    def __init__(self, source, input_hw, **kwargs):
        super().__init__(prefix="", **kwargs)
        self.source = source
        self.net_name = "large"
        self.image_hw = source.image_hw
        self.input_hw = tuple(input_hw)
        self.out_channels = source.out_channels
        self.own_hw = tuple(int(np.ceil(s / source.backbone.stride)) for s in self.input_hw)
        self.feature_hw = source.feature_hw

    def hybrid_forward(self, F, x):
        return _scaled_features(F, self, x, self.source.run_backbone)


def _scaled_features(F, extractor, x, run_backbone=None):
    """Frames at the model's input size -> the extractor's input size -> backbone -> its feature grid."""
    if extractor.input_hw != extractor.image_hw:
        x = F.contrib.BilinearResize2D(x, height=extractor.input_hw[0], width=extractor.input_hw[1])
    feats = (run_backbone or extractor.run_backbone)(x)
    if extractor.own_hw != extractor.feature_hw:
        feats = F.contrib.BilinearResize2D(feats, height=extractor.feature_hw[0], width=extractor.feature_hw[1])
    return feats


class LSTMSSD(gluon.Block):
    """SSDLite, LSTM-SSD or Looking Fast and Slow (MODEL.TYPE) at input ``image_size`` (S or [H, W])."""

    def __init__(self, model_cfg, image_size, **kwargs):
        super().__init__(**kwargs)
        m = model_cfg
        if m.TYPE not in MODEL_TYPES:
            raise ValueError(f"MODEL.TYPE must be one of {MODEL_TYPES}, got {m.TYPE!r}")
        self.cfg = m
        self.type = m.TYPE
        self.num_classes = int(m.NUM_CLASSES)
        self.image_hw = size_hw(image_size, "INPUT.SIZE")
        self.extractor_names = ["large", "small"] if m.TYPE == "fast_slow" else ["large"]
        # the small net reads the memory but does not write it
        self.writes_memory = {"large": True, "small": False}
        # MODEL.SMALL.NET large: the small steps run the large extractor's architecture on smaller frames,
        # its features resized to the large grid; with SHARE its very weights (ScaledExtractor), else a copy
        # (copy_large_into_small) that TRAIN.OBJECTIVE distill_small can fit to the smaller frames
        self.small_from_large = m.TYPE == "fast_slow" and m.SMALL.NET == "large"
        self.small_shares_large = self.small_from_large and bool(m.SMALL.SHARE)
        # the memory cell (projection into the LSTM) each extractor's features go through
        self.cell_of = {"large": "large", "small": "large" if self.small_from_large else "small"}
        self._scaled = _Unregistered(None)
        with self.name_scope():
            self.large = Extractor(m.LARGE, self.image_hw, "MODEL.LARGE", prefix="large_")
            self.small = None
            if self.small_from_large:
                small_hw = size_hw(m.SMALL.INPUT_SIZE, "MODEL.SMALL.INPUT_SIZE") if m.SMALL.INPUT_SIZE \
                    else self.image_hw
                if self.small_shares_large:
                    self._scaled = _Unregistered(ScaledExtractor(self.large, small_hw))
                else:
                    spec = EasyDict(m.LARGE, INPUT_SIZE=list(small_hw))
                    self.small = Extractor(spec, self.image_hw, "MODEL.SMALL", grid_hw=self.large.feature_hw,
                                           prefix="small_")
            elif m.TYPE == "fast_slow":
                self.small = Extractor(m.SMALL, self.image_hw, "MODEL.SMALL", prefix="small_")
            sizes = {n: self.extractor(n).feature_hw for n in self.extractor_names}
            if len(set(sizes.values())) != 1:
                raise ValueError(f"MODEL: extractors must end at the same feature size, got {sizes} "
                                 f"(adjust MODEL.*.INPUT_SIZE / OUTPUT_STRIDE)")
            self.feature_hw = sizes["large"]
            lstm = m.LSTM
            self.residual = bool(lstm.RESIDUAL) and m.TYPE != "ssdlite"
            if lstm.RESIDUAL_GATE and not self.residual:
                raise ValueError("MODEL.LSTM.RESIDUAL_GATE gates the residual memory: it needs "
                                 "MODEL.LSTM.RESIDUAL true and MODEL.TYPE lstm_ssd or fast_slow")
            if lstm.RESIDUAL_INPUT not in ("output", "previous_state"):
                raise ValueError(f"MODEL.LSTM.RESIDUAL_INPUT must be output or previous_state, "
                                 f"got {lstm.RESIDUAL_INPUT!r}")
            from_state = self.residual and lstm.RESIDUAL_INPUT == "previous_state"
            self.project = self.project_small = self.memory_mix = self.memory_gate = None
            if m.TYPE == "ssdlite" or self.residual:
                # the frame baseline's projection; with LSTM.RESIDUAL the same block (same name, so an
                # SSDLite checkpoint loads into it) carries the frame path around the memory
                self.project = ConvBN(self.large.out_channels, lstm.UNITS, 1, prefix="project_")
            if m.TYPE == "ssdlite":
                self.memory = None
                level0 = lstm.UNITS
            else:
                cells = dict.fromkeys(self.cell_of[n] for n in self.extractor_names)
                self.memory = BottleneckLSTM({n: self.extractor(n).out_channels for n in cells},
                                             lstm.UNITS, lstm.GROUPS, lstm.FORGET_BIAS, lstm.CLIP,
                                             lstm.OUTPUT_BOTTLENECK, lstm.KERNEL, prefix="memory_")
                level0 = self.memory.out_channels
                if from_state and self.memory.out_channels != lstm.UNITS:
                    raise ValueError("MODEL.LSTM.RESIDUAL_INPUT previous_state mixes the state h "
                                     "(UNITS channels): it needs MODEL.LSTM.OUTPUT_BOTTLENECK false")
            if self.residual:
                if self.small is not None:    # (a scaled large extractor goes through the large projection)
                    self.project_small = ConvBN(self.small.out_channels, lstm.UNITS, 1, prefix="project_small_")
                # zero-initialised: a fresh residual model computes exactly its frame baseline; without bias
                # when it reads the carried state, so a zero state (first frame, reset) adds exactly nothing
                self.memory_mix = ConvBN(self.memory.out_channels, lstm.UNITS, 1, act="none", use_bn=False,
                                         use_bias=not from_state, weight_init=mx.init.Zero(), prefix="memory_mix_")
                if lstm.RESIDUAL_GATE:
                    # zero-initialised too: g = 0.5 everywhere until it learns, times a zero mix
                    self.memory_gate = ConvBN(2 * lstm.UNITS, 1, 1, act="none", use_bn=False,
                                              weight_init=mx.init.Zero(), prefix="memory_gate_")
                level0 = lstm.UNITS
            depths = list(m.PYRAMID.DEPTHS)
            self.level_sizes = pyramid_sizes(self.feature_hw, len(depths) + 1)   # (h, w) per level
            self.num_anchors = anchors_per_level(len(depths) + 1, m.ANCHORS.ASPECT_RATIOS, m.ANCHORS.REDUCE_LOWEST)
            if not 0.0 <= float(m.CLS_PRIOR) < 1.0:
                raise ValueError(f"MODEL.CLS_PRIOR is an initial class probability in [0, 1) (0: zero bias), "
                                 f"got {m.CLS_PRIOR!r}")
            self.head = SSDLiteHead(level0, depths, self.num_anchors, self.num_classes, float(m.CLS_PRIOR),
                                    prefix="head_")
        self._steps = None
        self._combine = _Unregistered(None)
        self.from_state = from_state
        if self.memory is not None:
            projects = {"large": self.project, "small": self.project if self.small_shares_large else self.project_small}
            combine = MemoryCombine(self.memory_mix, self.memory_gate) if self.residual else None
            self._combine = _Unregistered(combine)   # an attribute holding the block would be a second child
            cells = {n: self.memory.steps[self.cell_of[n]] for n in self.extractor_names}
            self._steps = StepTable({n: ResidualStep(cells[n], projects[n], combine, from_state)
                                     if self.residual else cells[n] for n in self.extractor_names})
        self._anchors = None
        self._int8 = {}    # part name -> int8 SymbolBlock (quantize_int8); not Gluon children
        for _, block in _named_blocks(self):
            if isinstance(block, ConvBN):
                block.bn_momentum = float(m.BN_MOMENTUM)

    # ---- structure ---------------------------------------------------------------------------
    def extractor(self, name):
        if name not in self.extractor_names:
            raise ValueError(f"unknown extractor {name!r}; this {self.type} model has {self.extractor_names}")
        if name == "large":
            return self.large
        return self._scaled.block if self.small_shares_large else self.small

    @property
    def state_shape(self):
        return (self.cfg.LSTM.UNITS,) + self.feature_hw

    def zero_state(self, batch, ctx=mx.cpu()):
        if self.memory is None:
            return None
        shape = (batch,) + self.state_shape
        return (mx.nd.zeros(shape, ctx=ctx), mx.nd.zeros(shape, ctx=ctx))

    def parts(self):
        """Name -> block of every separately runnable/exportable part."""
        out = {f"extractor_{n}": self.extractor(n) for n in self.extractor_names}
        if self.memory is not None:
            out.update({f"lstm_step_{n}": self.memory_step(n) for n in self.extractor_names})
        else:
            out["project"] = self.project
        out["head"] = self.head
        return out

    def hybridize_parts(self, **kwargs):
        for block in self.parts().values():
            block.hybridize(**kwargs)

    def clear_cached_graphs(self):
        """Forget hybridized graphs and int8 copies (after pruning changed parameter shapes)."""
        self._int8.clear()
        for block in self.parts().values():
            block.hybridize(False)
            for child in _all_blocks(block):
                if isinstance(child, gluon.HybridBlock):
                    child._clear_cached_op()

    def memory_step(self, extractor):
        """The step block of ``extractor``: (features, c, h) -> (level 0, c_new, h_new)."""
        return self._steps[extractor]

    def anchors(self):
        """Normalised corner anchors (P,4) in the head's (level, y, x, anchor) order."""
        if self._anchors is None:
            a = self.cfg.ANCHORS
            anchors = np.asarray(multiscale_anchors(self.level_sizes, min_scale=a.MIN_SCALE, max_scale=a.MAX_SCALE,
                                                    aspect_ratios=tuple(a.ASPECT_RATIOS),
                                                    reduce_lowest=a.REDUCE_LOWEST, image_size=self.image_hw),
                                 dtype=np.float32)
            expected = sum(h * w * k for (h, w), k in zip(self.level_sizes, self.num_anchors))
            if anchors.shape != (expected, 4):
                raise RuntimeError(f"multiscale_anchors gave {anchors.shape}, the head predicts {expected} anchors")
            self._anchors = anchors
        return self._anchors

    # ---- computation -------------------------------------------------------------------------
    def step(self, frames, state, extractor="large"):
        """One frame per sequence: frames (B,3,H,W) -> (cls (B,P,C+1), box (B,P,4), new_state)."""
        cls, box, new_state, _ = self.step_moved(frames, state, extractor)
        return cls, box, new_state

    def step_moved(self, frames, state, extractor, flow=None, key_term=None, propagate=False):
        """``step`` with the memory moved along the motion since it was written (TEST.MOTION).

        ``flow`` (B,2,h,w) on the feature grid, from this frame to the frame whose large step wrote
        ``state`` (lib.flow convention: warping by it aligns that frame's maps with this one), or None
        (no earlier frame: the plain ``step``). With ``propagate`` a small step's frame term is
        ``key_term``, the last large step's projection, moved the same way (Deep Feature Flow's
        propagation), instead of the small extractor's projection; when the memory correction reads the
        carried state (RESIDUAL_INPUT previous_state) the small extractor is then not run at all.
        Returns (cls, box, new_state, key_term): new_state is ``state`` itself after a step that does not
        write the memory (still tied to its frame), key_term this step's projection after a large step.
        """
        if tuple(frames.shape[-2:]) != self.image_hw:
            raise ValueError(f"frames of {tuple(frames.shape[-2:])} (H, W); this model takes INPUT.SIZE "
                             f"{list(self.image_hw)} (resize first, as StreamingDetector.step does)")
        head = self._part("head", self.head)
        if self.memory is None:
            if flow is not None or propagate:
                raise ValueError("TEST.MOTION moves the memory state: this ssdlite model has none")
            feats = self._part(f"extractor_{extractor}", self.extractor(extractor))(frames)
            return (*head(self._part("project", self.project)(feats)), None, None)
        if propagate and not self.residual:
            raise ValueError("TEST.MOTION.PROPAGATE replaces the frame term of a small step: it needs "
                             "MODEL.LSTM.RESIDUAL true")
        moved = state if flow is None else tuple(flow_warp(s, flow) for s in state)
        if extractor == "small" and propagate and key_term is not None:
            frame = key_term if flow is None else flow_warp(key_term, flow)
            combine = self._combine.block
            if self.from_state:
                out = combine(frame, moved[1])
            else:
                feats = self._part("extractor_small", self.extractor("small"))(frames)
                out = combine(frame, self.memory.steps[self.cell_of["small"]](feats, *moved)[0])
            new_state = state
        elif self.from_state and not self.writes_memory[extractor]:
            # a small step reading the carried state: its LSTM step's output is read by nothing (the
            # correction reads the state, and the step writes none), so the cell is not run
            feats = self._part(f"extractor_{extractor}", self.extractor(extractor))(frames)
            out, new_state = self._combine.block(self.memory_step(extractor).project(feats), moved[1]), state
        else:
            feats = self._part(f"extractor_{extractor}", self.extractor(extractor))(frames)
            out, c_new, h_new = self.memory_step(extractor)(feats, *moved)
            new_state = (c_new, h_new) if self.writes_memory[extractor] else state
            if extractor == "large" and propagate:
                key_term = self.project(feats)
        if head is not self.head:
            # the int8 head reads its input's raw memory: a step hybridized with the MKLDNN backend can
            # return oneDNN's blocked layout (the residual step does), which copy() turns into NCHW
            out = out.copy()
        cls, box = head(out)
        return cls, box, new_state, key_term

    def copy_large_into_small(self, names=None):
        """MODEL.SMALL.NET large, SHARE false: the small extractor and projection start as copies of the
        large ones. ``names``: structural names of the small parameters to fill (e.g. those MODEL.WEIGHTS
        left at their init; None = all), so a small extractor already trained is kept. Returns the names
        copied."""
        if not self.small_from_large or self.small_shares_large:
            raise ValueError("copy_large_into_small needs MODEL.SMALL.NET large with SHARE false")
        params = self._collect_params_with_prefix()
        copied = []
        for name, param in params.items():
            for small, large in (("small.", "large."), ("project_small.", "project.")):
                if name.startswith(small) and (names is None or name in names):
                    param.set_data(params[large + name[len(small):]].data())
                    copied.append(name)
        return copied

    def combine_block(self):
        """The MemoryCombine of a residual memory (None otherwise), for hybridizing it on its own."""
        return self._combine.block

    def _part(self, name, float_block):
        """The int8 copy of part ``name`` outside training after quantize_int8, else ``float_block``."""
        int8 = self._int8.get(name)
        if int8 is not None and not autograd.is_training():
            return int8
        return float_block

    @property
    def quantized(self):
        return bool(self._int8)

    @contextlib.contextmanager
    def float_parts(self):
        """Inside, ``step`` runs the float parts even after quantize_int8 (MAC counting hooks them)."""
        saved, self._int8 = self._int8, {}
        try:
            yield self
        finally:
            self._int8 = saved

    def quantize_int8(self, calib_frames, calib_mode="naive"):
        """int8 CPU inference (MXNet's MKLDNN quantization) of the extractors, the frame baseline's
        projection and the head. The Bottleneck-LSTM steps stay in float: MXNet 1.9.1 crashes building
        the quantized three-input step graph (lstm_ssd/README.md).

        ``calib_frames``: (B,3,H,W) RGB 0..255 frames at INPUT.SIZE (a few training frames; the
        callers spread them over the training set for varied scenes). The head is calibrated on the
        memory outputs of streaming them in order from a zero state (after every large step, also the
        small extractor's output from the same state). Afterwards
        ``step`` outside training runs the int8 graphs; the float parameters are untouched, so the int8
        copies are a snapshot (quantize again after further training; pruning drops them).
        """
        if not mx.runtime.Features().is_enabled("MKLDNN"):
            raise RuntimeError("int8 quantization needs an MXNet build with MKLDNN (oneDNN)")
        calib = mx.nd.array(np.asarray(calib_frames, np.float32))
        if calib.ndim != 4 or tuple(calib.shape[-2:]) != self.image_hw:
            raise ValueError(f"calibration frames of shape {tuple(calib.shape)}; expected (B, 3) + "
                             f"INPUT.SIZE {list(self.image_hw)}")
        self._int8.clear()
        int8 = {f"extractor_{e}": quantize_block(self.extractor(e), calib, calib_mode) for e in self.extractor_names}
        level0, features = [], []
        state = self.zero_state(1)
        for i in range(len(calib)):
            for e in self.extractor_names:
                feats = int8[f"extractor_{e}"](calib[i:i + 1])
                if self.memory is None:       # frame baseline: no state, the projection feeds the head
                    features.append(feats)
                    level0.append(self.project(feats))
                    continue
                out, c_new, h_new = self.memory_step(e)(feats, *state)
                level0.append(out)
                if self.writes_memory[e]:
                    next_state = (c_new, h_new)
            if self.memory is not None:
                state = next_state
        level0 = mx.nd.concat(*level0, dim=0)
        if self.memory is None:
            int8["project"] = quantize_block(self.project, mx.nd.concat(*features, dim=0), calib_mode)
        int8["head"] = quantize_block(self.head, level0, calib_mode)
        self._int8.update(int8)
        return self

    def forward(self, clip, state=None, schedule=None, state_keep=None, flows=None):
        """Unrolled graph. clip (B,T,3,H,W); schedule: extractor name per step (default all large);
        state_keep (B,T) of 0 / 1: the state of sequence b is zeroed before step t where it is 0
        (TRAIN.STATE_DROPOUT); flows: per step a (B,2,h,w) flow or None, the state moved along it
        before the step as ``step_moved`` moves it (TRAIN.MOVE_STATE, ``MemoryMotion.clip_flows``).

        Returns cls (B,T,P,C+1), box (B,T,P,4) and the final state.
        """
        batch, steps = clip.shape[0], clip.shape[1]
        schedule = schedule or ["large"] * steps
        if len(schedule) != steps:
            raise ValueError(f"schedule has {len(schedule)} entries for {steps} frames")
        if state is None:
            state = self.zero_state(batch, clip.context)
        if flows is not None and len(flows) != steps:
            raise ValueError(f"flows has {len(flows)} entries for {steps} frames")
        cls_all, box_all = [], []
        for t in range(steps):
            if state_keep is not None and state is not None:
                keep = state_keep[:, t].reshape((-1, 1, 1, 1))
                state = tuple(mx.nd.broadcast_mul(s, keep) for s in state)
            flow = flows[t] if flows is not None and state is not None else None
            cls, box, state, _ = self.step_moved(clip[:, t], state, schedule[t], flow)
            cls_all.append(cls)
            box_all.append(box)
        return mx.nd.stack(*cls_all, axis=1), mx.nd.stack(*box_all, axis=1), state

    # ---- outputs -----------------------------------------------------------------------------
    def postprocess(self, cls, box, widths, heights, post):
        """Raw outputs of one step -> per image (boxes (K,4) pixels, scores (K,), labels (K,) 0-based).

        ``post``: the TEST config (SCORE_THRESH, NMS_IOU, MAX_PER_CLASS, MAX_PER_IMAGE, PRE_NMS_TOP_K).
        """
        anchors = self.anchors()
        cls = cls.asnumpy() if isinstance(cls, mx.nd.NDArray) else cls
        box = box.asnumpy() if isinstance(box, mx.nd.NDArray) else box
        scores_all = 1.0 / (1.0 + np.exp(-cls[..., 1:]))   # sigmoid; column 0 is the background logit
        out = []
        for i in range(cls.shape[0]):
            boxes = decode_boxes(box[i], anchors, stds=tuple(self.cfg.BOX_STDS))
            boxes = boxes * np.array([widths[i], heights[i], widths[i], heights[i]], dtype=np.float32)
            boxes = clip_boxes(boxes, widths[i], heights[i])
            b, s, l = multiclass_nms(boxes, scores_all[i], post.SCORE_THRESH, post.NMS_IOU,
                                     post.MAX_PER_CLASS, post.MAX_PER_IMAGE,
                                     pre_nms_top_k=int(post.PRE_NMS_TOP_K))
            out.append((np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32).reshape(-1),
                        np.asarray(l, np.int64).reshape(-1)))
        return out

    # ---- pruning -----------------------------------------------------------------------------
    def prune_groups(self):
        groups = []
        if self.small_from_large and not self.small_shares_large:
            raise ValueError("filter pruning of a fast_slow model whose small extractor is a copy of the large one "
                             "(MODEL.SMALL.NET large, SHARE false) is not supported: the two would have to be cut alike")
        for n in self.extractor_names:
            if n == "small" and self.small_shares_large:
                continue        # its filters are the large extractor's
            groups += self.extractor(n).backbone.prune_groups(prefix=n)
        if self.type == "ssdlite":
            # the baseline's backbone output only feeds the 1x1 projection, so it can be cut too
            # (unless the last V2 block adds a residual, which pins its width)
            last = self.large.backbone.blocks_list[-1]
            last_conv = last.pw if self.large.backbone.version == "mobilenet_v1" else last.project
            if not getattr(last, "residual", False):
                groups.append(PruneGroup("large.last", last_conv, [], [self.project]))
            groups.append(self.head.level0_group(self.project, "project"))
        groups += self.head.prune_groups()
        return groups

    def channel_state(self):
        """Structural name -> (in, out, groups) of every ConvBN: enough to rebuild a pruned model."""
        out = {}
        for name, block in _named_blocks(self):
            if isinstance(block, ConvBN):
                out[name] = block.channel_state()
        return out

    def apply_channel_state(self, state):
        """Shrink a freshly built model to the channel counts of a pruned one (before loading params)."""
        if state == self.channel_state():
            return      # not pruned (the only state of extractors pruning does not support, e.g. Lite0)
        by_name = dict(_named_blocks(self))
        groups = self.prune_groups()
        for g in groups:
            name = _name_of(by_name, g.producer)
            target = state.get(name, {}).get("out")
            if target is None:
                raise ValueError(f"channel state has no entry for {name}")
            if target != g.channels:
                g.apply(list(range(target)))
        for name, block in by_name.items():
            if isinstance(block, ConvBN) and name in state and block.channel_state() != state[name]:
                raise ValueError(f"channel state for {name} is {state[name]}, model has {block.channel_state()}")
        self.clear_cached_graphs()


class MemoryCombine(gluon.HybridBlock):
    """The tail of ResidualStep: (frame term, memory input) -> level 0 = frame + [gate *] mix(memory).
    Run on its own by a propagated small step (TEST.MOTION.PROPAGATE), whose frame term is the last large
    frame's projection moved along the flow. Not a child of the detector: it re-uses its blocks."""

    def __init__(self, mix, gate=None, **kwargs):
        super().__init__(prefix="", **kwargs)
        self.mix, self.gate = mix, gate

    def hybrid_forward(self, F, frame, memory_in):
        memory = self.mix(memory_in)
        if self.gate is not None:
            weight = F.sigmoid(self.gate(F.concat(frame, memory, dim=1)))      # (B,1,H,W)
            memory = F.broadcast_mul(weight, memory)
        # add_n, not "+": MXNet 1.9's MKLDNN graph pass fails on project(x) + mix(out) (its conv + sum
        # fusion breaks the step's shape inference), so hybridize(backend='MKLDNN') could not build
        return F.add_n(frame, memory)


class ResidualStep(gluon.HybridBlock):
    """LSTM.RESIDUAL: level 0 = project(features) + mix(memory output). With ``mix`` at zero this is the
    frame baseline, so an LSTM-SSD warm-started from SSDLite starts at SSDLite's accuracy and the
    memory learns a correction (the plain cell, whose output replaces the features, starts from noise
    even with a trained backbone and head). With a ``gate`` (LSTM.RESIDUAL_GATE) the correction is
    weighted per cell by sigmoid(gate([projection, correction])): without it the memory's correction is
    the same on a sharp frame as on a blurred one, and what it gives the blurred ones it costs the sharp
    ones. With ``from_state`` (LSTM.RESIDUAL_INPUT previous_state) the mix reads the state h carried in
    from earlier frames instead of this frame's output: the correction is then evidence from the past
    only. Not a child of the detector: it re-uses its blocks."""

    def __init__(self, step, project, combine, from_state=False, **kwargs):
        super().__init__(prefix="", **kwargs)
        self.step, self.project, self.combine = step, project, combine
        self.from_state = bool(from_state)

    def hybrid_forward(self, F, x, c, h):
        out, c_new, h_new = self.step(x, c, h)
        return self.combine(self.project(x), h if self.from_state else out), c_new, h_new


class _Unregistered:
    """Holds a block that re-uses the detector's blocks without becoming a Gluon child of it."""

    def __init__(self, block):
        self.block = block


def _all_blocks(block):
    yield block
    for child in block._children.values():
        yield from _all_blocks(child)


def _named_blocks(block, prefix=""):
    """Structural names as in save_parameters (attribute paths), each block once."""
    seen = set()

    def walk(b, name):
        if id(b) in seen:
            return
        seen.add(id(b))
        yield name, b
        for key, child in b._children.items():
            yield from walk(child, f"{name}.{key}" if name else key)
    yield from walk(block, prefix)


def _name_of(by_name, block):
    for name, b in by_name.items():
        if b is block:
            return name
    raise KeyError("block not found in the model")


def build_detector(cfg, ctx=mx.cpu(), initialize=True):
    """cfg: full config (cfg.MODEL, cfg.INPUT.SIZE). Returns an initialised LSTMSSD."""
    try:
        net = LSTMSSD(cfg.MODEL, cfg.INPUT.SIZE)
    except ValueError as err:   # name the yaml file the bad MODEL value came from
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<defaults>'}: {err}") from None
    if initialize:
        net.initialize(ctx=ctx)
    return net


def save_model(net, path):
    """Write ``path`` (.params) and ``path`` minus .params + .channels.json (shapes after pruning)."""
    base = path[:-len(".params")] if path.endswith(".params") else path
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    atomic_save(base + ".params", net.save_parameters)
    atomic_write_json(base + ".channels.json", net.channel_state())
    return base + ".params"


def load_model(cfg, path, ctx=mx.cpu()):
    """Build from cfg, shrink to the saved channel counts if the model was pruned, load the params.
    A missing file is a FileNotFoundError; an unreadable one, or one of another model (names, shapes,
    channel state), a CheckpointError naming the file (lib.train.checkpoint's checked reader)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    net = build_detector(cfg, ctx)
    base = path[:-len(".params")] if path.endswith(".params") else path
    channels = base + ".channels.json"
    if os.path.isfile(channels):
        try:
            with open(channels, encoding="utf-8-sig") as f:
                state = json.load(f)
            net.apply_channel_state(state)
        except (ValueError, AttributeError) as err:   # bad JSON, or the state of another model
            raise CheckpointError(f"{channels}: channel counts of another model or not readable ({err})") from None
    try:
        load_weights(net, path, ctx=ctx)
    except CheckpointError as err:
        raise CheckpointError(f"{err} (config {cfg.get('CONFIG_FILE') or '<defaults>'})") from None
    return net


def load_pretrained(net, spec, ctx=None):
    """Backbone weights from a lib.pretrained ``spec`` (PRETRAINED) into every extractor that is an
    EfficientNet-Lite0 of full width (Looking Fast and Slow: the large one; a small one of another width
    stays random) -> [LoadReport]. Raises PretrainedError naming the file."""
    reports = []
    for name in net.extractor_names:
        if name == "small" and net.small_from_large:
            continue            # the large extractor's weights (or a copy of them: copy_large_into_small)
        extractor = net.extractor(name)
        spec_cfg = net.cfg.LARGE if name == "large" else net.cfg.SMALL
        if extractor.net_name != "efficientnet_lite0" or float(spec_cfg.WIDTH) != 1.0:
            if name == "large":
                raise pretrained.PretrainedError(
                    f"PRETRAINED {spec}: the ImageNet weights fit MODEL.LARGE.NET efficientnet_lite0 at WIDTH 1.0, "
                    f"not {spec_cfg.NET} at {spec_cfg.WIDTH}")
            continue
        reports.append(pretrained.load_into(extractor.backbone, spec, arch="efficientnet_lite0", prefix="net.",
                                            ctx=ctx))
    return reports
