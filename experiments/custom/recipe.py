"""The "own object from own video" recipe (docs/custom_workflow.md): one config for every detector family.

The recipe picks the detector with one key, ``DETECTOR: ssdlite | lstm_ssd | fast_slow | rfcn | fgfa |
m2det`` (any family of lib.family's registry), in a family-agnostic yaml (experiments/custom/*.yaml).
It sits above the families and talks to them only through lib.family: the family's own config (its
``BASE`` yaml plus ``OVERRIDES`` in its own keys) gets the recipe's shared sections, which have the same
names and meanings in every family (lib.config.SHARED_DEFAULTS: INPUT, TRAIN, DATASET), plus what the
family derives from the data (its class count) and from BACKBONE.

A run folder (OUTPUT_DIR, lib.train.run) holds run.json (family, classes), config.yaml (the family
config), recipe.yaml (this config) and the checkpoints; ``lib.family.load_model`` rebuilds the model.
"""
import logging
import math
import os

import mxnet as mx
from easydict import EasyDict

from lib.anchor_coverage import anchor_coverage, coverage_warnings
from lib.config import ConfigError, load_config, merge, project_path, to_plain
from lib.dataset import DetectionDataset
from lib.dataset.specs import load_datasets
from lib.family import family_names, get_family
from lib.fileio import atomic_write_json
from lib.registry import UnknownNameError
from lib.tiling import tile_dataset
from lib.train.distributed import config_contexts, join_job
from lib.train.run import RunFolder

log = logging.getLogger("recipe")

# The recipe config. 0 / "" / [] / None mean "keep the family config's value".
RECIPE_DEFAULTS = {
    "DETECTOR": "m2det",
    "BASE": "",                # family yaml (relative to the project root); "" = the family's default config
    "OVERRIDES": {},           # nested mapping in the family's own keys, applied over BASE
    "NUM_CLASSES": 0,          # checked against the data when > 0
    "CLASSES": [],             # explicit class list (else the training data's)
    "BACKBONE": "",            # e.g. mobilenet_v2, resnet50 (TF OD names as ssd_mobilenet_v2 work too); "" = BASE's
    "WIDTH_MULTIPLIER": 0.0,   # MobileNet width (depth multiplier); 0 = BASE's
    # backbone weights (lib.pretrained: efficientnet_lite0:imagenet, vgg16_hed:bsds500, gluoncv:<name>, a
    # .params); with it the input normalisation the weights expect; "" = BASE's (random init)
    "PRETRAINED": "",
    # the shared INPUT keys (lib.config.SHARED_DEFAULTS): SIZE for fixed-size families, SHORT_SIDE /
    # MAX_SIZE / TRAIN_SCALES (factors of the input size, one drawn per sample) for rfcn / fgfa
    "INPUT": {"SIZE": [], "SHORT_SIDE": 0, "MAX_SIZE": 0, "TRAIN_SCALES": []},
    # AUGMENT: true / false, or the list of lib.transforms specs (each family trains with what it supports)
    "TRAIN": {"BATCH_SIZE": 0, "EPOCHS": 0, "ITERATIONS": 0, "LR": 0.0, "OPTIMIZER": "", "AUGMENT": None,
              "BACKGROUND_IMAGES": True,   # false: drop training images without boxes (for comparisons)
              # several workers (docs/distributed.md): dist_sync under python -m lib.tools.launch; the LR
              # rule for the job's effective batch (none | linear | sqrt)
              "KVSTORE": "", "LR_SCALING": ""},
    # TRAIN / VAL: a lib.dataset spec, or a list of them (concatenated); ALLOW_BACKGROUND_ONLY: train even
    # when no box survived loading (else refused: a classes file that does not list the class, ...)
    "DATASET": {"TRAIN": None, "VAL": None, "ALLOW_BACKGROUND_ONLY": False},
    "TILING": {
        # training on tiles of big frames, written once as JPEGs (works for every family)
        "TRAIN": {"ENABLED": False, "SIZE": [512, 512], "TILES_PER_IMAGE": 4, "OBJECT_PROB": 0.7,
                  "MIN_VISIBLE": 0.5, "KEEP_FULL_FRAMES": True, "SEED": 0},
        # inference by sliding tiles merged with NMS (lib.tiling.detect_tiled)
        "INFER": {"ENABLED": False, "SIZE": [512, 512], "OVERLAP": 64, "NMS_IOU": 0.5,
                  "INCLUDE_FULL_FRAME": True, "MAX_DETECTIONS": 100},
    },
    # SUBSETS: name -> frame list (lib.eval.subsets, the families' TEST.SUBSETS), e.g. lib.tools.degrade's
    # degraded_frames.txt / intact_frames.txt: evaluate also reports the mAP of those frames
    "EVAL": {"THRESHOLDS": [0.2, 0.5, 0.8], "SMALL_HEIGHT": 32.0, "SUBSETS": {}, "CONTEXT": "video"},
    "OUTPUT_DIR": "output/custom/run",
    "CONTEXT": "cpu",
    "CONTEXTS": [],            # several devices in one process, e.g. [gpu(0), gpu(1)]; [] = CONTEXT
}
OPEN_KEYS = ("OVERRIDES", "EVAL.SUBSETS")
SPEC_LIST_KEYS = ("DATASET.TRAIN", "DATASET.VAL")
RENAMES = {"DATA": "DATASET"}      # the recipe's name of the dataset section before the shared schema


def load_recipe_config(path=None, overrides=None):
    """The recipe yaml over RECIPE_DEFAULTS (strict keys and types; errors name the key and file).

    Overrides are "KEY.SUB=value" strings; ``DATASET.TRAIN.<KEY>=value`` / ``DATASET.VAL.<KEY>=value``
    change one key of the dataset spec(s), e.g. ``DATASET.VAL.SPLIT=test_bg``.
    """
    cfg = load_config(path, RECIPE_DEFAULTS, overrides=overrides, open_keys=OPEN_KEYS, renames=RENAMES,
                      spec_list_keys=SPEC_LIST_KEYS)
    source = cfg.CONFIG_FILE or "<config>"
    try:
        family = get_family(cfg.DETECTOR)
    except UnknownNameError:
        raise ConfigError(f"{source}: DETECTOR must be one of {', '.join(family_names())}, "
                          f"got {cfg.DETECTOR!r}") from None
    size = list(cfg.INPUT.SIZE)
    if size and (len(size) not in (1, 2) or any(int(s) <= 0 for s in size)):
        raise ConfigError(f"{source}: INPUT.SIZE must be [size] or [height, width] in pixels, got {size}")
    augment = cfg.TRAIN.AUGMENT
    if augment is not None and not isinstance(augment, (list, bool)):
        raise ConfigError(f"{source}: TRAIN.AUGMENT must be a list of transform specs or true/false, "
                          f"got {augment!r}")
    scales = list(cfg.INPUT.TRAIN_SCALES)
    if scales and (not family.keep_ratio_input or any(not 0 < float(f) <= 4 for f in scales)):
        raise ConfigError(f"{source}: INPUT.TRAIN_SCALES {scales}: factors in (0, 4] of the input size, for "
                          f"rfcn/fgfa (the one-stage families zoom out with Expand in TRAIN.AUGMENT)")
    if (cfg.INPUT.SHORT_SIDE or cfg.INPUT.MAX_SIZE) and not family.keep_ratio_input:
        raise ConfigError(f"{source}: INPUT.SHORT_SIDE/MAX_SIZE (keep-ratio resize) apply to rfcn/fgfa; "
                          f"{cfg.DETECTOR} takes a fixed INPUT.SIZE")
    for key in ("TRAIN", "INFER"):
        tile = cfg.TILING[key].SIZE
        if len(tile) != 2 or min(tile) <= 0:
            raise ConfigError(f"{source}: TILING.{key}.SIZE must be [width, height], got {tile}")
    return cfg


def _input_keys(cfg, family, base):
    """The recipe's INPUT section in the family's INPUT keys (the same names; only the form differs)."""
    inp = {}
    size = [int(s) for s in cfg.INPUT.SIZE]
    hw = (size[0], size[-1]) if size else None
    if family.keep_ratio_input:
        if hw:
            inp.update(SHORT_SIDE=min(hw), MAX_SIZE=max(hw), TRAIN_SCALES=[])
        if cfg.INPUT.SHORT_SIDE:
            inp.update(SHORT_SIDE=int(cfg.INPUT.SHORT_SIDE),
                       MAX_SIZE=int(cfg.INPUT.MAX_SIZE) or int(base.INPUT.MAX_SIZE), TRAIN_SCALES=[])
        if cfg.INPUT.TRAIN_SCALES:
            inp["TRAIN_SCALES"] = [float(f) for f in cfg.INPUT.TRAIN_SCALES]
    elif hw:
        inp["SIZE"] = hw[0] if hw[0] == hw[1] else list(hw)
    return inp


def _train_keys(cfg):
    train = {}
    augment = cfg.TRAIN.AUGMENT
    if augment is not None:
        train["AUGMENT"] = bool(augment)
    if isinstance(augment, list) and augment:
        train["AUGMENTATIONS"] = list(augment)
    for key, cast in (("BATCH_SIZE", int), ("LR", float), ("OPTIMIZER", str), ("EPOCHS", int),
                      ("KVSTORE", str), ("LR_SCALING", str)):
        if cfg.TRAIN[key]:
            train[key] = cast(cfg.TRAIN[key])
    return train


def _rescale_lr_steps(train, base_epochs, source, overridden):
    """Keep the family's LR drops at the same fraction of training when the recipe changes the epochs.

    BASE configs give LR_STEPS in epochs of their own schedule (e.g. [22, 27] of 30); a recipe with
    EPOCHS: 12 would otherwise never drop the rate. Steps set in OVERRIDES are the user's and are kept.
    """
    epochs, steps = train.get("EPOCHS"), list(train.get("LR_STEPS") or [])
    if (overridden or not steps or not base_epochs or not epochs or int(epochs) == int(base_epochs)
            or train.get("LR_STEP_UNIT", "epoch") != "epoch"):
        return
    scale = float(epochs) / float(base_epochs)
    integral = all(float(s).is_integer() for s in steps)
    new = [max(1, round(s * scale)) if integral else round(s * scale, 3) for s in steps]
    if integral and len(set(new)) < len(new):        # integer epochs collapsed: keep the fractions
        new = [round(s * scale, 3) for s in steps]
    log.info("%s: TRAIN.LR_STEPS %s of %s epochs -> %s of %s epochs", source, steps, base_epochs, new, epochs)
    train["LR_STEPS"] = new


def family_config(cfg, classes=None, train_size=None, still_images=0):
    """The family's own config (EasyDict) for a recipe config: BASE <- OVERRIDES <- the recipe's keys.

    ``classes`` / ``train_size`` (number of training images, ``still_images`` of them outside any video)
    complete the class count and turn TRAIN.ITERATIONS into epochs once the data is known.
    """
    family = get_family(cfg.DETECTOR)
    source = cfg.CONFIG_FILE or "<config>"
    base = family.load_config(project_path(cfg.BASE or family.default_config))
    schema = family.schema
    plain = schema.merge(to_plain(base), to_plain(cfg.OVERRIDES), source=f"{source} (OVERRIDES)")
    base_epochs = plain["TRAIN"].get("EPOCHS")
    mapped = {"INPUT": _input_keys(cfg, family, base), "TRAIN": _train_keys(cfg)}
    for section, keys in family.family_keys(classes).items():
        mapped.setdefault(section, {}).update(keys)
    backbone = family.backbone_keys(cfg.BACKBONE, cfg.WIDTH_MULTIPLIER) if cfg.BACKBONE else {}
    if backbone is None:
        log.warning("%s: BACKBONE %r has no counterpart in %s; the backbone of %s is kept (set it in OVERRIDES)",
                    source, cfg.BACKBONE, family.name, cfg.BASE or family.default_config)
    for section, keys in (backbone or {}).items():
        mapped.setdefault(section, {}).update(keys)
    if cfg.PRETRAINED:
        for section, keys in family.pretrained_keys(cfg.PRETRAINED).items():
            if isinstance(keys, dict):
                mapped.setdefault(section, {}).update(keys)
            else:
                mapped[section] = keys
    plain = merge(plain, mapped, source=f"{source} (recipe keys)", open_keys=schema.open_keys,
                  size_keys=schema.size_keys)
    if cfg.TRAIN.ITERATIONS and train_size:
        fam_now = EasyDict(plain)
        per_epoch = family.batches_per_epoch(fam_now, train_size, still_images)
        iterations = int(cfg.TRAIN.ITERATIONS)
        plain["TRAIN"]["EPOCHS"] = max(1, math.ceil(iterations / per_epoch))
        if iterations < per_epoch:
            plain["TRAIN"]["MAX_BATCHES"] = iterations
    _rescale_lr_steps(plain["TRAIN"], base_epochs, source=source,
                      overridden="LR_STEPS" in (to_plain(cfg.OVERRIDES) or {}).get("TRAIN", {}))
    plain["OUTPUT_DIR"] = project_path(cfg.OUTPUT_DIR)
    plain["CONTEXT"] = cfg.CONTEXT
    plain["DATASET"]["ALLOW_BACKGROUND_ONLY"] = bool(cfg.DATASET.ALLOW_BACKGROUND_ONLY)
    if cfg.CONTEXTS:
        plain["CONTEXTS"] = list(cfg.CONTEXTS)
    out = EasyDict(plain)
    out["CONFIG_FILE"] = cfg.CONFIG_FILE
    return family.validate(out)


def load_data(cfg, split="TRAIN", classes=None):
    """DATASET.TRAIN / DATASET.VAL: one lib.dataset spec or a list of them, concatenated (same classes);
    ``{FORMAT: background, IMAGES_DIR: folder}`` adds every image of a folder without boxes.
    Returns a DetectionDataset, or None when the split is empty."""
    source = cfg.CONFIG_FILE or "<config>"
    dataset = load_datasets(cfg.DATASET[split], classes=list(classes or cfg.CLASSES) or None, source=source,
                            key=f"DATASET.{split}", out_dir=project_path(cfg.OUTPUT_DIR))
    if dataset is not None and cfg.NUM_CLASSES and cfg.NUM_CLASSES != len(dataset.classes):
        raise ConfigError(f"{source}: NUM_CLASSES is {cfg.NUM_CLASSES} but the data has {len(dataset.classes)} "
                          f"classes {dataset.classes}")
    return dataset


def report_anchor_coverage(family, fam_cfg, train_set, num_classes, out_dir):
    """How many training boxes the family's anchors match, by height (anchor_coverage.json, the log)."""
    coverage = anchor_coverage(train_set, family.anchor_spec(fam_cfg, num_classes))
    atomic_write_json(os.path.join(out_dir, "anchor_coverage.json"), coverage)
    log.info("anchor coverage (IoU >= %g): %d of %d training boxes; by height %s", coverage["iou"],
             coverage["matched"], coverage["boxes"],
             ", ".join(f"[{r['min_height']:g},{'inf' if r['max_height'] is None else format(r['max_height'], 'g')}) "
                       f"{r['matched']}/{r['boxes']}" for r in coverage["bands"]))
    if family.coverage_warnings:
        for message in coverage_warnings(coverage):
            log.warning(message)
    return coverage


def train(cfg, train_set=None, val_set=None, progress=None):
    """Train the recipe config's detector; returns {"out_dir", "summary", "classes", "train_images"}
    (``summary["rank"]``: 0 for the process that wrote OUTPUT_DIR, see TRAIN.KVSTORE)."""
    family = get_family(cfg.DETECTOR)
    out_dir = project_path(cfg.OUTPUT_DIR)
    train_set = train_set if train_set is not None else load_data(cfg, "TRAIN")
    if train_set is None or len(train_set) == 0:
        raise ConfigError(f"{cfg.CONFIG_FILE or '<config>'}: DATASET.TRAIN gives no training image")
    # no box survived loading (e.g. a classes file that does not list the class): refused unless asked for
    train_set.require_boxes(f"{cfg.CONFIG_FILE or '<config>'}: DATASET.TRAIN",
                            allow_background_only=cfg.DATASET.ALLOW_BACKGROUND_ONLY)
    classes = list(train_set.classes)
    if not cfg.TRAIN.BACKGROUND_IMAGES:
        train_set = DetectionDataset([r for r in train_set.records if r.num_boxes], classes,
                                     train_set.name + "-background")
    val_set = val_set if val_set is not None else load_data(cfg, "VAL", classes)
    # this process's place in the job (TRAIN.KVSTORE), before anything is written: rank 0 alone writes
    resolved = family_config(cfg, classes, len(train_set))
    job = join_job(resolved.TRAIN.KVSTORE, config_contexts(resolved))
    if cfg.TILING.TRAIN.ENABLED:
        # the other workers cut the same tiles (seeded) and read rank 0's files: every worker's first
        # collective (the start of training) comes after rank 0 wrote them
        train_set = tile_dataset(train_set, os.path.join(out_dir, "train_tiles"), cfg.TILING.TRAIN,
                                 write=job.is_chief)
    fam = family_config(cfg, classes, len(train_set), still_images=sum(r.video is None for r in train_set.records))
    if progress is not None:
        fam.TRAIN.PROGRESS = bool(progress)
    run = None
    if job.is_chief:
        run = RunFolder(out_dir).write(family.name, classes, fam, recipe=cfg)
        report_anchor_coverage(family, fam, train_set, len(classes), out_dir)
    summary = family.train(fam, train_set, val_set, run=run, ctx=config_contexts(fam))
    mx.nd.waitall()
    return {"out_dir": out_dir, "summary": summary, "classes": classes, "train_images": len(train_set)}


def family_overrides(overrides):
    """The ``OVERRIDES.<family key>=value`` items of recipe command-line overrides, as family overrides
    (``OVERRIDES.TEST.K=0`` -> ``TEST.K=0``): what a trained run's saved family config takes at test
    time (the other recipe keys were turned into family keys when the run was trained)."""
    prefix = "OVERRIDES."
    return [item.strip()[len(prefix):] for item in overrides or [] if item.strip().upper().startswith(prefix)]


def run_recipe(path, overrides=None):
    """The recipe config a run folder was trained with (recipe.yaml; custom.yaml in older runs)."""
    run = RunFolder.read(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    if run.recipe_path is None:
        raise ConfigError(f"{run.path}: not a recipe run (no recipe.yaml); give the recipe config with --cfg")
    return load_recipe_config(run.recipe_path, overrides)


__all__ = ["RECIPE_DEFAULTS", "load_recipe_config", "family_config", "load_data", "train", "family_overrides",
           "run_recipe", "report_anchor_coverage"]
