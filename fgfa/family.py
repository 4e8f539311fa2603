"""FGFA and its R-FCN frame baseline as detector families of the shared registry (lib.family).

``rfcn`` is the frame detector (NETWORK.AGGREGATE false) and exports as the standard single-frame
artifact; ``fgfa`` aggregates a window of 2K+1 frames (a video family: its results need the frames
around each output frame) and runs in process only.
"""
import re

import numpy as np

from lib.config import ConfigError
from lib.export import ExportNotSupported
from lib.family import DetectorFamily, register_family

from . import config as fgfa_config
from .data import make_preprocess
from .export import export_rfcn
from .test import load_model
from .train import build_model, train
from .window import WindowRunner


class _RFCNBase(DetectorFamily):
    schema = fgfa_config.SCHEMA
    keep_ratio_input = True
    # two-stage: the RPN also takes each box's best anchor and the RoI head refines the proposal, so a
    # box without an IoU-0.5 anchor still trains (measured: speedtrap R-FCN, docs/custom_workflow.md)
    coverage_warnings = False
    aggregate = False

    def load_config(self, path=None, overrides=None):
        return fgfa_config.get_config(path, overrides)

    def validate(self, cfg):
        return fgfa_config.validate(cfg)

    def family_keys(self, classes=None):
        keys = {"NETWORK": {"AGGREGATE": self.aggregate}}
        if classes is not None:
            keys["DATASET"] = {"CLASSES": list(classes)}
        return keys

    def backbone_keys(self, name, width):
        name = (name or "").lower()
        if "efficientnet_lite0" in name:
            return {"NETWORK": {"BACKBONE": "efficientnet_lite0", "WIDTH": float(width or 1.0)}}
        depth = re.search(r"resnet_?v?1?_?(18|34|50|101)", name)
        return {"NETWORK": {"BACKBONE": "resnet", "DEPTH": int(depth.group(1))}} if depth else None

    def build(self, cfg, num_classes, ctx=None):
        return build_model(cfg, num_classes, ctx)

    def train(self, cfg, train_set, val_set=None, run=None, ctx=None):
        summary = train(cfg, dataset=train_set, run=run)
        return {k: v for k, v in summary.items() if k != "model"}

    def load(self, cfg, classes, checkpoint=None, folder=None, ctx=None):
        net, _ = load_model(cfg, classes, checkpoint, ctx)
        return net

    def runner(self, model):
        if model.cfg.TEST.HYBRIDIZE:
            model.net.hybridize_for_inference(model.ctx)
        return WindowRunner(model.net, model.ctx, preprocess=make_preprocess(model.cfg))

    def quantize_int8(self, model, images):
        model.runner()                  # hybridized float parts first, as at inference
        preprocess = make_preprocess(model.cfg)
        frames = [preprocess(im)[0] for im in images]
        frames = [f for f in frames if f.shape == frames[0].shape]   # one input size for the graphs
        model.net.quantize_int8(np.stack(frames), model.cfg.TEST.CALIB_MODE, model.cfg.TEST.FLOW_CALIB_MODE)
        model._runner = model._stream_runner = None     # the next runner uses the int8 parts

    def anchor_spec(self, cfg, num_classes=1):
        net = cfg.NETWORK
        short, long_side = fgfa_config.input_scale(cfg)
        return {"TYPE": "rpn", "LEVELS": [{"STRIDE": int(net.FEAT_STRIDE), "BASE_SIZE": float(net.ANCHOR_BASE),
                                           "SCALES": list(net.ANCHOR_SCALES), "RATIOS": list(net.ANCHOR_RATIOS)}],
                "RESIZE": {"SHORT": short, "MAX": long_side}}


@register_family
class RFCNFamily(_RFCNBase):
    name = "rfcn"
    default_config = "experiments/rfcn/cfgs/rfcn_speedtrap_cpu.yaml"

    def validate(self, cfg):
        if cfg.NETWORK.AGGREGATE:
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: NETWORK.AGGREGATE is true: that is the "
                              f"fgfa family, not rfcn")
        return super().validate(cfg)

    def export(self, model, out_dir, onnx=False, builtin_ops=False):
        return export_rfcn(model.net, model.cfg, model.classes, out_dir, onnx=onnx, builtin_ops=builtin_ops,
                           ctx=model.ctx)


@register_family
class FGFAFamily(_RFCNBase):
    name = "fgfa"
    video = True
    aggregate = True
    default_config = "experiments/fgfa_rfcn/cfgs/fgfa_rfcn_speedtrap_cpu.yaml"

    def export(self, model, out_dir, onnx=False, builtin_ops=False):
        raise ExportNotSupported(
            "fgfa aggregates features of a window of 2K+1 frames; the single-frame artifact cannot hold the "
            "window. Run it with fgfa.demo / experiments/fgfa_rfcn/train_test.py, or train DETECTOR: m2det / "
            "ssdlite for an exported model.")
