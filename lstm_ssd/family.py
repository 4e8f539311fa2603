"""SSDLite, LSTM-SSD and Looking Fast and Slow as detector families of the shared registry (lib.family).

One package, three families (MODEL.TYPE): ``ssdlite`` (the frame baseline, exported as the standard
single-frame artifact), ``lstm_ssd`` and ``fast_slow`` (a memory carried from frame to frame: video
families, run in process or as the part-wise export of lstm_ssd.export).
"""
import copy
import math
import re

import numpy as np

from lib.config import ConfigError
from lib.export import ExportNotSupported
from lib.family import DetectorFamily, register_family
from lib.train.checkpoint import load_weights

from . import config as lstm_config
from .detector import build_detector, load_model
from .export import export_ssdlite
from .streaming import StreamingDetector, preprocess
from .train import train_model


class _LSTMSSDBase(DetectorFamily):
    schema = lstm_config.SCHEMA
    normalizes_input = False      # the extractors scale / normalise inside the graph

    def load_config(self, path=None, overrides=None):
        return lstm_config.load(path, overrides)

    def validate(self, cfg):
        if cfg.INPUT.SHORT_SIDE or cfg.INPUT.MAX_SIZE or cfg.INPUT.TRAIN_SCALES:
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: INPUT.SHORT_SIDE / MAX_SIZE / TRAIN_SCALES "
                              f"(keep-ratio input) apply to rfcn / fgfa; {self.name} takes a fixed INPUT.SIZE")
        return cfg

    def family_keys(self, classes=None):
        keys = {"MODEL": {"TYPE": self.name}}
        if classes is not None:
            keys["MODEL"]["NUM_CLASSES"] = len(classes)
            keys["DATASET"] = {"CLASSES": list(classes)}
        return keys

    def backbone_keys(self, name, width):
        if "efficientnet_lite0" in (name or "").lower():
            return {"MODEL": {"LARGE": {"NET": "efficientnet_lite0", "WIDTH": float(width or 1.0), "NUM_BLOCKS": -1}}}
        mobilenet = re.search(r"mobilenet_?v?([12])", (name or "").lower())
        if not mobilenet:
            return None
        # a named standard backbone is used whole (the base config's cut point belongs to its own net)
        large = {"NET": f"mobilenet_v{mobilenet.group(1)}", "NUM_BLOCKS": -1}
        if width:
            large["WIDTH"] = float(width)
        return {"MODEL": {"LARGE": large}}

    def batches_per_epoch(self, cfg, train_size, still_images=0):
        # an epoch holds about one clip of UNROLL frames per UNROLL video frames, and one (pseudo-video)
        # clip per still image (training tiles are still images)
        unroll, mode = int(cfg.TRAIN.UNROLL), cfg.TRAIN.get("STILL_IMAGES", "pseudo")
        samples = (train_size - still_images) / unroll + (still_images if mode != "skip" else 0)
        return max(1, math.ceil(samples / int(cfg.TRAIN.BATCH_SIZE)))

    def _with_classes(self, cfg, num_classes):
        cfg = copy.deepcopy(cfg)
        cfg.MODEL.NUM_CLASSES = int(num_classes)
        return cfg

    def build(self, cfg, num_classes, ctx=None):
        return build_detector(self._with_classes(cfg, num_classes), ctx) if ctx else \
            build_detector(self._with_classes(cfg, num_classes))

    def train(self, cfg, train_set, val_set=None, run=None, ctx=None):
        kwargs = {"ctx": ctx} if ctx is not None else {}
        _, summary, _ = train_model(cfg, dataset=train_set, out_dir=run.path if run else None, run=run, **kwargs)
        return summary

    def load(self, cfg, classes, checkpoint=None, folder=None, ctx=None):
        cfg = self._with_classes(cfg, len(classes))
        if checkpoint and checkpoint.endswith(".params"):
            return load_model(cfg, checkpoint, ctx)      # a pruned model's channel counts come along
        net = build_detector(cfg, ctx)
        load_weights(net, checkpoint or folder, ctx=ctx)
        return net

    def runner(self, model):
        return StreamingDetector(model.net, model.cfg, ctx=model.ctx)

    def quantize_int8(self, model, images):
        model.runner()                  # hybridizes the float parts first, as at inference
        model.net.quantize_int8(np.concatenate([preprocess(im, model.net.image_hw).asnumpy() for im in images]))

    def anchor_spec(self, cfg, num_classes=1):
        net = build_detector(self._with_classes(cfg, num_classes), initialize=False)
        a = cfg.MODEL.ANCHORS
        return {"TYPE": "multiscale", "IMAGE_SIZE": list(net.image_hw),
                "FEATURE_SIZES": [list(hw) for hw in net.level_sizes], "MIN_SCALE": float(a.MIN_SCALE),
                "MAX_SCALE": float(a.MAX_SCALE), "ASPECT_RATIOS": [float(r) for r in a.ASPECT_RATIOS],
                "REDUCE_LOWEST": bool(a.REDUCE_LOWEST)}


@register_family
class SSDLiteFamily(_LSTMSSDBase):
    name = "ssdlite"
    default_config = "experiments/lstm_ssd/cfgs/speedtrap_ssdlite.yaml"

    def export(self, model, out_dir, onnx=False, builtin_ops=False):
        return export_ssdlite(model.net, model.cfg, model.classes, out_dir, onnx=onnx, ctx=model.ctx)


@register_family
class LSTMSSDFamily(_LSTMSSDBase):
    name = "lstm_ssd"
    video = True
    default_config = "experiments/lstm_ssd/cfgs/speedtrap_lstm_ssd.yaml"

    def export(self, model, out_dir, onnx=False, builtin_ops=False):
        raise ExportNotSupported(
            f"{self.name} keeps an LSTM memory from frame to frame; the single-frame artifact (input `data` only) "
            "cannot carry it. Export its parts with `python -m lstm_ssd.export --cfg RUN/config.yaml --model "
            "RUN/ckpt-NNNN.params --output PREFIX` (extractor, LSTM step and head, chained by the caller), or "
            "train DETECTOR: ssdlite for the standard artifact.")


@register_family
class FastSlowFamily(LSTMSSDFamily):
    name = "fast_slow"
    default_config = "experiments/lstm_ssd/cfgs/speedtrap_fast_slow.yaml"
