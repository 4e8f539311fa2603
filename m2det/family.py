"""M2Det as a detector family of the shared registry (lib.family): a frame detector with a fixed
input size (S or [H, W]), exported as the standard single-frame artifact (m2det.export)."""
import re

from lib.config import ConfigError
from lib.family import DetectorFamily, register_family
from lib.streaming import FrameRunner
from lib.train.checkpoint import load_weights

from . import config as m2det_config
from .detector import M2Det, build_model, first_context, prior_spec
from .export import export_inference_model
from .inference import build_detector
from .train import run_training


@register_family
class M2DetFamily(DetectorFamily):
    name = "m2det"
    default_config = "experiments/m2det/cfgs/speedtrap_mobilenet.yaml"
    schema = m2det_config.SCHEMA

    def load_config(self, path=None, overrides=None):
        return m2det_config.load(path, overrides)

    def validate(self, cfg):
        source = cfg.get("CONFIG_FILE") or "<config>"
        if cfg.INPUT.SHORT_SIDE or cfg.INPUT.MAX_SIZE or cfg.INPUT.TRAIN_SCALES:
            raise ConfigError(f"{source}: INPUT.SHORT_SIDE / MAX_SIZE / TRAIN_SCALES (keep-ratio input) apply "
                              f"to rfcn / fgfa; m2det takes a fixed INPUT.SIZE")
        return cfg

    def backbone_keys(self, name, width):
        name = (name or "").lower()
        if "efficientnet_lite0" in name:
            return {"MODEL": {"BACKBONE": "efficientnet_lite0", "BACKBONE_WIDTH": float(width or 1.0)}}
        mobilenet = re.search(r"mobilenet_?v?([12])", name)
        depth = re.search(r"resnet_?v?1?_?(18|34|50|101)", name)
        if mobilenet and mobilenet.group(1) == "2":
            model = {"BACKBONE": "mobilenetv2"}
            if width:
                model["BACKBONE_WIDTH"] = float(width)
            return {"MODEL": model}
        if depth and depth.group(1) in ("50", "101"):
            return {"MODEL": {"BACKBONE": f"resnet{depth.group(1)}"}}
        if "vgg" in name:
            return {"MODEL": {"BACKBONE": "vgg16"}}
        return None

    def build(self, cfg, num_classes, ctx=None):
        return build_model(cfg, num_classes, ctx)

    def train(self, cfg, train_set, val_set=None, run=None, ctx=None):
        return run_training(cfg, train_set, val_set, run=run)

    def load(self, cfg, classes, checkpoint=None, folder=None, ctx=None):
        net = build_model(cfg, len(classes), ctx, pretrained_weights=False)     # the checkpoint holds them
        load_weights(net, checkpoint or folder, ctx=first_context(ctx))
        return net

    def runner(self, model):
        detector = build_detector(model.net, model.cfg, model.ctx)     # TEST.SIZES / TEST.FLIP: test-time augmentation
        # one image per call: the shape of the exported artifact, and no re-binding per batch size
        return FrameRunner(lambda image: detector.detect([image])[0])

    def export(self, model, out_dir, onnx=False, builtin_ops=False):
        return export_inference_model(model.net, model.cfg, model.classes, out_dir, onnx=onnx, ctx=model.ctx)

    def anchor_spec(self, cfg, num_classes=1):
        return prior_spec(M2Det(cfg.MODEL, int(num_classes), cfg.INPUT.SIZE))
