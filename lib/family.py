"""What a detector family is, the registry the families fill, and a trained model loaded from its run.

A detector family (``rfcn``, ``fgfa``, ``ssdlite``, ``lstm_ssd``, ``m2det``, or a user's own) is a
``DetectorFamily`` subclass in its method package (``fgfa/family.py``, ...), registered with
``@register_family``. The registry imports the providers named by the ``videodet.families`` entry
points of the installed packages (setup.py) on first use, so ``lib`` names no method package. The
shared tools (``lib.tools.export``, ``lib.tools.draw``), the recipe (``experiments/custom``) and the
benchmarks ask ``get_family(name)`` and talk to the family only through the methods below.

    family.load_config(path, overrides) -> config     the family's yaml over its defaults (strict)
    family.build(cfg, num_classes, ctx) -> net        an initialised training network
    family.train(cfg, train_set, val_set, run, ctx)   train into a RunFolder -> summary dict
    family.load(cfg, classes, checkpoint, folder, ctx) -> net with trained weights
    family.runner(model) -> lib.streaming.StreamRunner   (the one streaming contract)
    family.quantize_int8(model, images)               int8 inference in this process
    family.export(model, out_dir, onnx, builtin_ops)  the single-frame artifact (or ExportNotSupported)
    family.anchor_spec(cfg, num_classes) -> dict      its anchors for lib.anchor_coverage / lib.tools.draw
"""
import math
import os

import mxnet as mx

from lib import pretrained
from lib.config import ConfigError
from lib.export import ExportNotSupported, record_fusion
from lib.registry import Registry
from lib.streaming import checked_fusion_settings, fused_runner
from lib.tiling import detect_tiled
from lib.train.run import RunFolder, resolve_run

FAMILIES = Registry("detector family", entry_point_group="videodet.families")

__all__ = ["DetectorFamily", "FAMILIES", "register_family", "get_family", "family_names", "LoadedModel",
           "load_model", "ExportNotSupported"]


def register_family(cls):
    """Class decorator: register an instance of a DetectorFamily subclass under ``cls.name``."""
    FAMILIES.register(cls(), name=cls.name)
    return cls


def get_family(name):
    return FAMILIES.get(name)


def family_names():
    return FAMILIES.names()


class DetectorFamily:
    """Base class of the detector families. Subclasses set the class attributes and implement the
    methods that raise NotImplementedError; the others have defaults that fit most families."""

    name = ""
    video = False            # True: results depend on the frames before/after (memory, window)
    default_config = ""      # the family yaml a recipe starts from (relative to the project root)
    keep_ratio_input = False  # True: INPUT.SHORT_SIDE / MAX_SIZE; False: a fixed INPUT.SIZE
    coverage_warnings = True  # warn when anchors match few training boxes (two-stage heads refine)
    schema = None            # lib.config.Schema of the family's config (defaults, renamed keys, ...)

    # ---- config -------------------------------------------------------------------------------
    def load_config(self, path=None, overrides=None):
        raise NotImplementedError

    def validate(self, cfg):
        """Check a merged config (the recipe calls it after mapping its keys); raise ConfigError."""
        return cfg

    def family_keys(self, classes=None):
        """{section: {key: value}} a config of this family needs for these classes (the recipe merges
        them): by default the class list."""
        return {"DATASET": {"CLASSES": list(classes)}} if classes is not None else {}

    normalizes_input = True   # INPUT.MEAN / STD normalise its input (False: the network does it inside)

    def pretrained_keys(self, spec):
        """{section: {key: value}} for starting from the backbone weights of a lib.pretrained ``spec``:
        PRETRAINED itself and, where INPUT.MEAN / STD normalise the input, what the weights expect (the
        VGG16 conversion folds the family's own normalisation into its first layer instead)."""
        keys = {"PRETRAINED": spec}
        norm = pretrained.input_normalization(spec)
        if self.normalizes_input and norm and not str(spec).startswith("vgg16"):
            keys["INPUT"] = {"MEAN": [float(v) for v in norm["mean"]], "STD": [float(v) for v in norm["std"]]}
        return keys

    def backbone_keys(self, name, width):
        """A recipe's BACKBONE / WIDTH_MULTIPLIER (TF-OD names such as ssd_mobilenet_v2 work too) ->
        {section: {key: value}} of this family; None when the family has no such backbone."""
        return None

    def batches_per_epoch(self, cfg, train_size, still_images=0):
        """Training batches in one epoch over ``train_size`` images (for TRAIN.ITERATIONS)."""
        return max(1, math.ceil(train_size / int(cfg.TRAIN.BATCH_SIZE)))

    # ---- model ----------------------------------------------------------------------------------
    def build(self, cfg, num_classes, ctx=None):
        raise NotImplementedError

    def train(self, cfg, train_set, val_set=None, run=None, ctx=None):
        """Train into ``run`` (a RunFolder, already written); returns a summary dict with at least
        "checkpoint" and "wall_time"."""
        raise NotImplementedError

    def load(self, cfg, classes, checkpoint=None, folder=None, ctx=None):
        raise NotImplementedError

    def runner(self, model):
        """A lib.streaming.StreamRunner for a LoadedModel."""
        raise NotImplementedError

    def quantize_int8(self, model, images):
        raise ValueError(f"{self.name}: int8 runs on the exported artifact: python -m lib.tools.export ..., then "
                         f"python -m lib.tools.quantize --model EXPORT_DIR --calib FRAMES --out DIR_INT8")

    def export(self, model, out_dir, onnx=False, builtin_ops=False):
        raise ExportNotSupported(f"{self.name} has no single-frame artifact")

    def anchor_spec(self, cfg, num_classes=1):
        raise NotImplementedError

    def __repr__(self):
        return f"<detector family {self.name}>"


class LoadedModel:
    """A trained detector in this process.

    ``detect(images)``: RGB uint8 images -> [(boxes (K,4) image pixels, scores, labels)] for still-image
    use (video families see each image as a one-frame video); ``detect_stream(images)``: one video in
    order, memory / window carried (the same as ``detect`` for frame detectors).
    ``family`` is the family's name, ``impl`` its DetectorFamily.
    """

    def __init__(self, family, net, cfg, classes, ctx, impl=None):
        self.family, self.net, self.cfg, self.classes, self.ctx = family, net, cfg, list(classes), ctx
        self.impl = impl or get_family(family)
        self._runner = self._stream_runner = None

    @property
    def video(self):
        return self.impl.video

    def runner(self):
        """The family's runner: one image after another, independent for a frame detector."""
        if self._runner is None:
            self._runner = self.impl.runner(self)
        return self._runner

    def stream_runner(self):
        """The runner for one video in order: ``runner()``, with TEST.FUSE's box-level memory if enabled."""
        if self._stream_runner is None:
            self._stream_runner = fused_runner(self.runner(), self.cfg.TEST, self.cfg.get("CONFIG_FILE") or "config")
        return self._stream_runner

    def quantize_int8(self, images):
        """int8 CPU inference in this process (MXNet's MKLDNN quantization), calibrated on RGB uint8
        ``images`` (a few training frames); what runs in int8 is the family's choice."""
        images = list(images)
        if not images:
            raise ValueError("int8 calibration needs at least one frame")
        self.impl.quantize_int8(self, images)
        return self

    def detect_stream(self, images):
        return self.stream_runner().detect_video(list(images))

    def detect(self, images):
        images = list(images)
        if not self.video:
            return self.runner().detect_video(images)
        return [self.detect_stream([image])[0] for image in images]

    def detect_tiled(self, image, tiling):
        """One RGB image by sliding tiles (TILING.INFER keys) merged with NMS."""
        return detect_tiled(lambda crop: self.detect([crop])[0], image, tuple(int(v) for v in tiling.SIZE),
                            overlap=int(tiling.OVERLAP), nms_iou=float(tiling.NMS_IOU),
                            include_full_frame=bool(tiling.INCLUDE_FULL_FRAME),
                            max_detections=int(tiling.MAX_DETECTIONS))

    def export(self, out_dir, onnx=False, builtin_ops=False):
        # checked before anything is written: an artifact never carries a fusion infer would refuse
        fusion = checked_fusion_settings(self.cfg.TEST, self.cfg.get("CONFIG_FILE") or "config")
        os.makedirs(out_dir, exist_ok=True)
        paths = self.impl.export(self, out_dir, onnx=onnx, builtin_ops=builtin_ops)
        if "meta" in paths:       # the run's box-level memory goes with the artifact (lib.tools.infer --fuse)
            record_fusion(paths["meta"], fusion)
        return paths


def read_run(path, overrides=None):
    """A run folder or a checkpoint in it -> (RunFolder, checkpoint or None, DetectorFamily, family config).
    ``overrides``: family "KEY.SUB=value" strings applied to the saved config."""
    folder, checkpoint = resolve_run(path)
    run = RunFolder.read(folder)
    if run.family is None:
        raise ConfigError(f"{folder}: the run folder does not say which detector family it holds; "
                          f"test it with its family's train_test.py --cfg")
    family = get_family(run.family)
    if run.config_path is None:
        raise ConfigError(f"{folder}: no saved config in this run folder; test it with its family's "
                          f"train_test.py --cfg")
    cfg = family.load_config(run.config_path, overrides)
    cfg["CONFIG_FILE"] = run.config_path
    cfg["OUTPUT_DIR"] = folder
    return run, checkpoint, family, cfg


def load_model(path, ctx=None, overrides=None):
    """A run folder (latest checkpoint) or a checkpoint in it -> LoadedModel. ``overrides``: family
    "KEY.SUB=value" strings for this use of the model (e.g. ``TEST.K=0``, ``INPUT.SHORT_SIDE=1080``)."""
    run, checkpoint, family, cfg = read_run(path, overrides)
    ctx = ctx or mx.cpu()
    net = family.load(cfg, run.classes, checkpoint, run.path, ctx)
    return LoadedModel(family.name, net, cfg, run.classes, ctx, impl=family)
