"""Detector registry: family name -> build from config, train, load a checkpoint, export an artifact.

The "own object from own video" recipe (docs/custom_workflow.md) chooses the detector with one key,
``DETECTOR: ssdlite | lstm_ssd | rfcn | fgfa | m2det``, in a family-agnostic yaml (experiments/custom/).
Each family keeps its own config (its ``BASE`` yaml plus ``OVERRIDES`` in that family's own keys); the
common keys of the recipe (input size, batch size, learning rate, iterations, augmentation on/off, the
datasets) are mapped onto it here, the same keys ``lib.tools.import_tf_pipeline`` emits. The adapters
only call each package's own functions (m2det.engine, lstm_ssd.detector/train, fgfa.train/test).

A run folder (OUTPUT_DIR) holds ``detector.json`` ({"detector", "classes"}), ``custom.yaml`` (the
resolved recipe config), ``family.yaml`` (the resolved family config) and lib.train checkpoints
(``ckpt-NNNN.json/.params``). ``load_model(run folder or checkpoint)`` rebuilds the model from them.

Exported artifact: docs/DESIGN.md "Exported inference artifact". m2det uses its own exporter; for
ssdlite and the R-FCN baseline this module wraps the network in a HybridBlock with decoding and
per-class NMS in the graph (R-FCN: also the stride padding and im_info, with the compiled proposal /
PS-RoI operators or MXNet's own). LSTM-SSD (memory across frames) and FGFA (a window of frames) cannot
be written as the single-input, single-frame artifact: ``export`` raises ``ExportNotSupported`` saying
what to use instead; so does an ONNX export of R-FCN (after writing its MXNet artifact).
"""
import copy
import json
import math
import os

import numpy as np

from easydict import EasyDict

from lib.config import PROJECT_ROOT, ConfigError, dump_config, load_config, merge, to_plain

FAMILIES = ("ssdlite", "lstm_ssd", "rfcn", "fgfa", "m2det")
VIDEO_FAMILIES = ("lstm_ssd", "fgfa")
RUN_META = "detector.json"

# the family config a recipe starts from when BASE is empty (the speedtrap CPU configs of each package)
DEFAULT_BASES = {
    "m2det": "experiments/m2det/cfgs/speedtrap_mobilenet.yaml",
    "ssdlite": "experiments/lstm_ssd/cfgs/speedtrap_ssdlite.yaml",
    "lstm_ssd": "experiments/lstm_ssd/cfgs/speedtrap_lstm_ssd.yaml",
    "rfcn": "experiments/rfcn/cfgs/rfcn_speedtrap_cpu.yaml",
    "fgfa": "experiments/fgfa_rfcn/cfgs/fgfa_rfcn_speedtrap_cpu.yaml",
}

# The recipe config. 0 / "" / [] / None mean "keep the family config's value".
CUSTOM_DEFAULTS = {
    "DETECTOR": "m2det",
    "BASE": "",                # family yaml (relative to the project root); "" = DEFAULT_BASES[DETECTOR]
    "OVERRIDES": {},           # nested mapping in the family's own keys, applied over BASE
    "NUM_CLASSES": 0,          # checked against the data when > 0
    "CLASSES": [],             # explicit class list (else the training data's)
    "BACKBONE": "",            # e.g. mobilenet_v2, resnet50 (TF OD names as ssd_mobilenet_v2 work too); "" = BASE's
    "WIDTH_MULTIPLIER": 0.0,   # MobileNet width (depth multiplier); 0 = BASE's
    # TRAIN_SCALES (rfcn, fgfa): training scales as factors of the input size, one drawn per sample,
    # e.g. [0.4, 0.6, 0.8, 1.0]: factors < 1 turn the larger objects into small training examples
    "INPUT": {"SIZE": [], "SHORT_SIDE": 0, "MAX_SIZE": 0, "TRAIN_SCALES": []},
    "TRAIN": {"BATCH_SIZE": 0, "EPOCHS": 0, "ITERATIONS": 0, "LR": 0.0, "OPTIMIZER": "", "AUGMENT": None,
              "BACKGROUND_IMAGES": True},   # false: drop training images without boxes (for comparisons)
    "DATA": {"TRAIN": None, "VAL": None},   # a lib.dataset spec, or a list of them (concatenated)
    "TILING": {
        # training on tiles of big frames, written once as JPEGs (works for every family)
        "TRAIN": {"ENABLED": False, "SIZE": [512, 512], "TILES_PER_IMAGE": 4, "OBJECT_PROB": 0.7,
                  "MIN_VISIBLE": 0.5, "KEEP_FULL_FRAMES": True, "SEED": 0},
        # inference by sliding tiles merged with NMS (lib.tiling.detect_tiled)
        "INFER": {"ENABLED": False, "SIZE": [512, 512], "OVERLAP": 64, "NMS_IOU": 0.5,
                  "INCLUDE_FULL_FRAME": True, "MAX_DETECTIONS": 100},
    },
    "EVAL": {"THRESHOLDS": [0.2, 0.5, 0.8], "SMALL_HEIGHT": 32.0},
    "OUTPUT_DIR": "output/custom/run",
    "CONTEXT": "cpu",
}
OPEN_KEYS = ("OVERRIDES", "DATA.TRAIN", "DATA.VAL")


class ExportNotSupported(RuntimeError):
    """This family cannot be written as the standard single-frame artifact (the message says why)."""


# ------------------------------------------------------------------------------------------------
# config

def _abs(path):
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(PROJECT_ROOT, path))


def _apply_data_overrides(cfg, items):
    """``DATA.TRAIN.SPLIT=path``-style overrides set one key inside the dataset spec(s) of that split
    (in every entry of a list except background folders), instead of replacing the whole spec."""
    from lib.config import parse_overrides
    for item in items:
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        split, spec_key = parts[1], ".".join(parts[2:])
        if split not in ("TRAIN", "VAL") or not spec_key:
            raise ConfigError(f"command line: {item!r}: use DATA.TRAIN.<KEY>=value or DATA.VAL.<KEY>=value")
        specs = cfg.DATA[split]
        if not specs:
            raise ConfigError(f"command line: {item!r}: DATA.{split} is empty in {cfg.CONFIG_FILE}")
        value = parse_overrides([f"{spec_key}={raw}"])
        for spec in specs if isinstance(specs, list) else [specs]:
            if str(spec.get("FORMAT", "")).lower() != "background":
                spec.update(value)


def load_custom_config(path=None, overrides=None):
    """The recipe yaml over CUSTOM_DEFAULTS (strict keys and types; errors name the key and file).

    Overrides are "KEY.SUB=value" strings; ``DATA.TRAIN.<KEY>=value`` / ``DATA.VAL.<KEY>=value`` change
    one key of the dataset spec(s), e.g. ``DATA.VAL.SPLIT=test_bg``.
    """
    overrides = list(overrides or [])
    data_items = [o for o in overrides if o.strip().upper().startswith(("DATA.TRAIN.", "DATA.VAL."))]
    overrides = [o for o in overrides if o not in data_items]
    cfg = load_config(path, CUSTOM_DEFAULTS, overrides=overrides, open_keys=OPEN_KEYS)
    _apply_data_overrides(cfg, data_items)
    source = cfg.CONFIG_FILE or "<config>"
    if cfg.DETECTOR not in FAMILIES:
        raise ConfigError(f"{source}: DETECTOR must be one of {', '.join(FAMILIES)}, got {cfg.DETECTOR!r}")
    size = list(cfg.INPUT.SIZE)
    if size and (len(size) not in (1, 2) or any(int(s) <= 0 for s in size)):
        raise ConfigError(f"{source}: INPUT.SIZE must be [size] or [height, width] in pixels, got {size}")
    augment = cfg.TRAIN.AUGMENT
    if augment is not None and not isinstance(augment, (list, bool)):
        raise ConfigError(f"{source}: TRAIN.AUGMENT must be a list of transform specs or true/false, "
                          f"got {augment!r}")
    scales = list(cfg.INPUT.TRAIN_SCALES)
    if scales and (cfg.DETECTOR not in ("rfcn", "fgfa") or any(not 0 < float(f) <= 4 for f in scales)):
        raise ConfigError(f"{source}: INPUT.TRAIN_SCALES {scales}: factors in (0, 4] of the input size, for "
                          f"rfcn/fgfa (the one-stage families zoom out with Expand in TRAIN.AUGMENT)")
    for key in ("TRAIN", "INFER"):
        tile = cfg.TILING[key].SIZE
        if len(tile) != 2 or min(tile) <= 0:
            raise ConfigError(f"{source}: TILING.{key}.SIZE must be [width, height], got {tile}")
    return cfg


def _augment_enabled(cfg):
    augment = cfg.TRAIN.AUGMENT
    return None if augment is None else bool(augment)


def _input_hw(cfg):
    size = [int(s) for s in cfg.INPUT.SIZE]
    return None if not size else (size[0], size[-1])


def _backbone_keys(family, name, width):
    """BACKBONE / WIDTH_MULTIPLIER (TF OD names such as ssd_mobilenet_v2, faster_rcnn_resnet101, or
    plain mobilenet_v2 / resnet50) -> the family's keys; None when this family has no such backbone."""
    import re
    name = (name or "").lower()
    if not name:
        return {}
    depth = re.search(r"resnet_?v?1?_?(18|34|50|101)", name)
    mobilenet = re.search(r"mobilenet_?v?([12])", name)
    if family == "m2det":
        if mobilenet and mobilenet.group(1) == "2":
            out = {"MODEL": {"BACKBONE": "mobilenetv2"}}
            if width:
                out["MODEL"]["MOBILENET_MULTIPLIER"] = float(width)
            return out
        if depth and depth.group(1) in ("50", "101"):
            return {"MODEL": {"BACKBONE": f"resnet{depth.group(1)}"}}
        if "vgg" in name:
            return {"MODEL": {"BACKBONE": "vgg16"}}
    elif family in ("ssdlite", "lstm_ssd"):
        if mobilenet:
            # a named standard backbone is used whole (the base config's cut point belongs to its own net)
            large = {"NET": f"mobilenet_v{mobilenet.group(1)}", "NUM_BLOCKS": -1}
            if width:
                large["WIDTH"] = float(width)
            return {"MODEL": {"LARGE": large}}
    elif depth:
        return {"NETWORK": {"DEPTH": int(depth.group(1))}}
    return None


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
    import logging
    logging.getLogger("detectors").info("%s: TRAIN.LR_STEPS %s of %s epochs -> %s of %s epochs",
                                        source, steps, base_epochs, new, epochs)
    train["LR_STEPS"] = new


def load_family_config(family, path, overrides=None):
    """A family yaml through that family's own loader (defaults merged, keys checked): a BASE, or a run's
    saved family.yaml (keys added since the run was saved get their defaults); ``overrides``: family
    "KEY.SUB=value" strings on top."""
    if family == "m2det":
        from m2det import engine
        return engine.build_config(path, overrides)
    if family in ("ssdlite", "lstm_ssd"):
        from lstm_ssd import config as lstm_config
        return lstm_config.load(path, overrides)
    if family in ("rfcn", "fgfa"):
        from fgfa.config import get_config
        return get_config(path, overrides)
    raise ValueError(f"unknown detector family {family!r}; one of {', '.join(FAMILIES)}")


def family_config(cfg, classes=None, train_size=None, still_images=0):
    """The family's own config (EasyDict) for a recipe config: BASE <- OVERRIDES <- mapped keys.

    ``classes`` / ``train_size`` (number of training images, ``still_images`` of them outside any
    video) complete the class count and turn TRAIN.ITERATIONS into epochs once the data is known.
    """
    family = cfg.DETECTOR
    base = _abs(cfg.BASE or DEFAULT_BASES[family])
    source = cfg.CONFIG_FILE or "<config>"
    mapped, batch = {}, int(cfg.TRAIN.BATCH_SIZE)
    hw = _input_hw(cfg)
    augment = _augment_enabled(cfg)
    # M2Det / SSDLite / LSTM-SSD take the list itself (lib.transforms names or specs, in order)
    augment_list = list(cfg.TRAIN.AUGMENT) if isinstance(cfg.TRAIN.AUGMENT, list) else []
    size_keys = ()
    if family == "m2det":
        from m2det import engine
        from m2det.config import OPEN_KEYS as open_keys
        fam = load_family_config(family, base)
        model, train = {}, {}
        if hw:
            if hw[0] != hw[1]:
                raise ConfigError(f"{source}: INPUT.SIZE {list(cfg.INPUT.SIZE)}: M2Det takes a square input")
            model["INPUT_SIZE"] = hw[0]
        if augment is not None:
            train["RANDOM_TRANSFORM"] = augment
        if augment_list:
            train["AUGMENTATIONS"] = augment_list
        batch_key = "BATCH_SIZE"
        cap_key = "MAX_ITERS_PER_EPOCH"
        mapped = {"MODEL": model, "TRAIN": train}
    elif family in ("ssdlite", "lstm_ssd"):
        from lstm_ssd import config as lstm_config
        fam = load_family_config(family, base)
        open_keys, size_keys = lstm_config.OPEN_KEYS, lstm_config.SIZE_KEYS
        model, train = {"TYPE": family}, {}
        if hw:
            model["IMAGE_SIZE"] = hw[0] if hw[0] == hw[1] else list(hw)
        if classes is not None:
            model["NUM_CLASSES"] = len(classes)
        if augment is not None:
            train["AUGMENT"] = augment
        if augment_list:
            train["AUGMENTATIONS"] = augment_list   # drawn once per clip
        batch_key, cap_key = "BATCH_SIZE", "MAX_BATCHES"
        mapped = {"MODEL": model, "TRAIN": train}
        if classes is not None:
            mapped["DATASET"] = {"CLASSES": list(classes)}
    else:
        from fgfa.config import OPEN_KEYS as fgfa_open, get_config, validate
        fam = load_family_config(family, base)
        open_keys = fgfa_open
        image, train = {}, {}
        if hw:
            image["SCALES"] = [[min(hw), max(hw)]]
            image["TEST_SCALE"] = [min(hw), max(hw)]
        if cfg.INPUT.SHORT_SIDE:
            long_side = int(cfg.INPUT.MAX_SIZE) or int(fam.IMAGE.TEST_SCALE[1])
            image["SCALES"] = [[int(cfg.INPUT.SHORT_SIDE), long_side]]
            image["TEST_SCALE"] = [int(cfg.INPUT.SHORT_SIDE), long_side]
        if cfg.INPUT.TRAIN_SCALES:
            short, long_side = image.get("TEST_SCALE", fam.IMAGE.TEST_SCALE)
            image["SCALES"] = [[int(round(short * float(f))), int(round(long_side * float(f)))]
                               for f in cfg.INPUT.TRAIN_SCALES]
        if isinstance(cfg.TRAIN.AUGMENT, list):
            image["FLIP"] = any(str(s.get("name", s.get("type", "")) if isinstance(s, dict) else s).lower()
                                in ("randomflip", "flip", "random_flip") for s in cfg.TRAIN.AUGMENT)
        elif augment is not None:
            image["FLIP"] = augment
        mapped = {"NETWORK": {"AGGREGATE": family == "fgfa"}, "IMAGE": image, "TRAIN": train}
        batch_key, cap_key = "BATCH_IMAGES", None
        if classes is not None:
            mapped["DATASET"] = {"CLASSES": list(classes)}
    backbone = _backbone_keys(family, cfg.BACKBONE, cfg.WIDTH_MULTIPLIER)
    if backbone is None:
        import logging
        logging.getLogger("detectors").warning(
            "%s: BACKBONE %r has no counterpart in %s; the backbone of %s is kept (set it in OVERRIDES)",
            source, cfg.BACKBONE, family, base)
    else:
        for key, value in backbone.items():
            mapped.setdefault(key, {}).update(value)
    if cfg.INPUT.SHORT_SIDE and family not in ("rfcn", "fgfa"):
        raise ConfigError(f"{source}: INPUT.SHORT_SIDE/MAX_SIZE (keep-ratio resize) apply to rfcn/fgfa; "
                          f"{family} takes a fixed INPUT.SIZE")
    train = mapped["TRAIN"]
    if batch:
        train[batch_key] = batch
    if cfg.TRAIN.LR:
        train["LR"] = float(cfg.TRAIN.LR)
    if cfg.TRAIN.OPTIMIZER:
        train["OPTIMIZER"] = cfg.TRAIN.OPTIMIZER
    if cfg.TRAIN.EPOCHS:
        train["EPOCHS"] = int(cfg.TRAIN.EPOCHS)
    plain = merge(to_plain(fam), to_plain(cfg.OVERRIDES), source=f"{source} (OVERRIDES)", open_keys=open_keys,
                  size_keys=size_keys)
    base_epochs = plain["TRAIN"].get("EPOCHS")
    plain = merge(plain, mapped, source=f"{source} (mapped keys)", open_keys=open_keys,
                  size_keys=size_keys)
    if cfg.TRAIN.ITERATIONS and train_size:
        batch, samples = int(plain["TRAIN"][batch_key]), train_size
        if family in ("ssdlite", "lstm_ssd"):
            # an epoch holds about one clip of UNROLL frames per UNROLL video frames, and one
            # (pseudo-video) clip per still image (training tiles are still images)
            unroll, mode = int(plain["TRAIN"]["UNROLL"]), plain["TRAIN"].get("STILL_IMAGES", "pseudo")
            samples = (train_size - still_images) / unroll + (still_images if mode != "skip" else 0)
        per_epoch = max(1, math.ceil(samples / batch))
        iterations = int(cfg.TRAIN.ITERATIONS)
        plain["TRAIN"]["EPOCHS"] = max(1, math.ceil(iterations / per_epoch))
        if cap_key and iterations < per_epoch:
            plain["TRAIN"][cap_key] = iterations
    _rescale_lr_steps(plain["TRAIN"], base_epochs, source=source,
                      overridden="LR_STEPS" in (to_plain(cfg.OVERRIDES) or {}).get("TRAIN", {}))
    plain["OUTPUT_DIR"] = _abs(cfg.OUTPUT_DIR)
    plain["CONTEXT"] = cfg.CONTEXT
    out = EasyDict(plain)
    out["CONFIG_FILE"] = cfg.CONFIG_FILE
    if family in ("rfcn", "fgfa"):
        validate(out)
    return out


# ------------------------------------------------------------------------------------------------
# data

_PATH_KEYS = ("ROOT", "ANNOTATIONS", "IMAGES_DIR", "ANNOTATIONS_DIR", "LABELS_DIR", "BASE_DIR", "PREFIX",
              "DESCRIPTIONS", "OUT_DIR", "LABEL_MAP", "PATHS", "CLASSES", "SPLIT")


def _resolve_spec(spec, cfg):
    """Relative paths -> absolute (project root); import_tf_pipeline's PATH -> PATHS (+ OUT_DIR)."""
    out = {str(k).upper(): v for k, v in dict(spec).items()}
    if "PATH" in out and str(out.get("FORMAT", "")).lower() == "tfrecord":
        out["PATHS"] = out.pop("PATH")
        out.setdefault("OUT_DIR", os.path.join(_abs(cfg.OUTPUT_DIR), "tfrecord_images"))
    if out.get("LABEL_MAP") is None:
        out.pop("LABEL_MAP", None)
    for key in _PATH_KEYS:
        value = out.get(key)
        if key == "SPLIT" and isinstance(value, str) and not (os.sep in value or value.endswith(".txt")):
            continue   # a split name, not a file
        if key == "CLASSES" and isinstance(value, list):
            continue
        if isinstance(value, str) and value and not os.path.isabs(value):
            out[key] = _abs(value)
        elif isinstance(value, list) and key == "PATHS":
            out[key] = [_abs(v) for v in value]
    return out


def background_dataset(images_dir, classes, name="background"):
    """Records without boxes for every image of a folder (frames with nothing to detect)."""
    from lib.dataset import DetectionDataset, Record, image_size, list_frames
    records = []
    for path in list_frames(images_dir):
        width, height = image_size(path)
        records.append(Record(image=os.path.abspath(path), width=width, height=height,
                              image_id=os.path.splitext(os.path.basename(path))[0]))
    return DetectionDataset(records, list(classes), name)


def load_data(cfg, split="TRAIN", classes=None):
    """DATA.TRAIN / DATA.VAL: one lib.dataset spec or a list of them, concatenated (same classes).

    A spec ``{FORMAT: background, IMAGES_DIR: folder}`` adds every image of a folder without boxes.
    Returns a DetectionDataset, or None when the split is empty.
    """
    from lib.dataset import DetectionDataset, load_dataset
    specs = cfg.DATA[split]
    source = cfg.CONFIG_FILE or "<config>"
    if not specs:
        return None
    specs = specs if isinstance(specs, list) else [specs]
    classes = list(classes or cfg.CLASSES) or None
    sets = []
    for k, spec in enumerate(specs):
        spec = _resolve_spec(spec, cfg)
        if str(spec.get("FORMAT", "")).lower() == "background":
            if "IMAGES_DIR" not in spec:
                raise ConfigError(f"{source}: DATA.{split}[{k}]: FORMAT background needs IMAGES_DIR")
            if classes is None:
                sets.append(("pending", spec))
                continue
            sets.append(background_dataset(spec["IMAGES_DIR"], classes))
            continue
        if classes is not None and "CLASSES" not in spec:
            spec["CLASSES"] = classes
        try:
            ds = load_dataset(spec)
        except Exception as err:
            raise ConfigError(f"{source}: DATA.{split}[{k}] {spec}: {err}") from None
        classes = classes or list(ds.classes)
        if list(ds.classes) != classes:
            raise ConfigError(f"{source}: DATA.{split}[{k}] has classes {list(ds.classes)}, expected {classes}")
        sets.append(ds)
    if classes is None:
        raise ConfigError(f"{source}: DATA.{split}: background images alone need CLASSES")
    sets = [background_dataset(s[1]["IMAGES_DIR"], classes) if isinstance(s, tuple) else s for s in sets]
    records = [r for ds in sets for r in ds.records]
    merged = DetectionDataset(records, classes, "+".join(ds.name for ds in sets))
    if cfg.NUM_CLASSES and cfg.NUM_CLASSES != len(classes):
        raise ConfigError(f"{source}: NUM_CLASSES is {cfg.NUM_CLASSES} but the data has {len(classes)} "
                          f"classes {classes}")
    return merged


def cap_key_frames(dataset, fam_cfg, iterations):
    """R-FCN / FGFA training has no per-epoch batch cap: TRAIN.ITERATIONS shorter than an epoch is
    met by training on fewer key frames (about ITERATIONS x BATCH_IMAGES). Still images: a seeded
    random subset; videos stay whole (FGFA's neighbours) with DATASET.FRAMES_PER_VIDEO key frames
    each, spread evenly. Returns (dataset, family config), both possibly changed."""
    from lib.dataset import DetectionDataset
    target = int(iterations) * int(fam_cfg.TRAIN.BATCH_IMAGES)
    if target >= len(dataset):
        return dataset, fam_cfg
    still = [r for r in dataset.records if r.video is None]
    videos = dataset.snippets()
    rng = np.random.RandomState(int(fam_cfg.TRAIN.SEED))
    if len(still) > target:
        still = [still[i] for i in sorted(rng.choice(len(still), target, replace=False))]
    remaining = target - len(still)
    records = list(still)
    if remaining > 0 and videos:
        per_video = max(1, remaining // len(videos))
        if fam_cfg.DATASET.FRAMES_PER_VIDEO > 0:
            per_video = min(per_video, int(fam_cfg.DATASET.FRAMES_PER_VIDEO))
        fam_cfg = copy.deepcopy(fam_cfg)
        fam_cfg.DATASET.FRAMES_PER_VIDEO = per_video
        records += [r for recs in videos.values() for r in recs]
    capped = DetectionDataset(records, dataset.classes, dataset.name)
    capped.video_info = getattr(dataset, "video_info", None) or {}
    return capped, fam_cfg


def tile_dataset(dataset, out_dir, tile_cfg):
    """Training tiles of big frames, written as JPEGs (lib.transforms.RandomTile, seeded).

    Per frame TILES_PER_IMAGE tiles, each around an object with probability OBJECT_PROB (else a random,
    mostly background tile); KEEP_FULL_FRAMES also keeps the whole frames. Works for every family since
    it only produces a new dataset. Frames not larger than the tile are kept as they are.
    """
    import cv2
    from lib.dataset import DetectionDataset, Record, read_image
    from lib.transforms import RandomTile
    width, height = (int(v) for v in tile_cfg.SIZE)
    tiler = RandomTile(size=[width, height], object_prob=float(tile_cfg.OBJECT_PROB),
                       min_visible=float(tile_cfg.MIN_VISIBLE), rng=np.random.RandomState(int(tile_cfg.SEED)))
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for index, rec in enumerate(dataset.records):
        if tile_cfg.KEEP_FULL_FRAMES or (rec.width <= width and rec.height <= height):
            records.append(rec)
        if rec.width <= width and rec.height <= height:
            continue
        image = read_image(rec.image)
        with_labels = np.concatenate([rec.boxes, rec.labels[:, None].astype(np.float32),
                                      rec.difficult[:, None].astype(np.float32)], axis=1)
        for t in range(int(tile_cfg.TILES_PER_IMAGE)):
            frames, boxes = tiler([image], [with_labels])
            tile, b = frames[0], np.asarray(boxes[0], np.float32).reshape(-1, 6)
            name = f"{index:06d}_{t}"
            path = os.path.join(out_dir, name + ".jpg")
            cv2.imwrite(path, cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            records.append(Record(image=path, width=tile.shape[1], height=tile.shape[0], boxes=b[:, :4],
                                  labels=b[:, 4].astype(np.int64), difficult=b[:, 5] > 0.5,
                                  image_id=f"tiles/{name}"))
    return DetectionDataset(records, dataset.classes, dataset.name + "+tiles")


# ------------------------------------------------------------------------------------------------
# anchor coverage: do the family's anchors fit the training boxes at the scale the network sees them?

COVERAGE_BANDS = (16, 32, 64)   # box height bands (network pixels) of the coverage report
COVERAGE_WARN = 0.5             # warn when fewer training boxes of a band than this have a matching anchor


def anchor_spec(family, fam_cfg, num_classes=1):
    """The family's anchors as a ``lib.tools.draw`` anchor configuration (TYPE rpn / ssd / multiscale)."""
    if family == "m2det":
        from m2det.cli import anchor_spec as m2det_anchor_spec
        from m2det.detector import M2Det
        return m2det_anchor_spec(M2Det(fam_cfg.MODEL, int(num_classes)))
    if family in ("ssdlite", "lstm_ssd"):
        from lstm_ssd.detector import build_detector
        net = build_detector(fam_cfg, initialize=False)
        a = fam_cfg.MODEL.ANCHORS
        return {"TYPE": "multiscale", "IMAGE_SIZE": list(net.image_hw),
                "FEATURE_SIZES": [list(hw) for hw in net.level_sizes], "MIN_SCALE": float(a.MIN_SCALE),
                "MAX_SCALE": float(a.MAX_SCALE), "ASPECT_RATIOS": [float(r) for r in a.ASPECT_RATIOS],
                "REDUCE_LOWEST": bool(a.REDUCE_LOWEST)}
    if family in ("rfcn", "fgfa"):
        net, short_long = fam_cfg.NETWORK, fam_cfg.IMAGE.TEST_SCALE
        return {"TYPE": "rpn", "LEVELS": [{"STRIDE": int(net.FEAT_STRIDE), "BASE_SIZE": float(net.ANCHOR_BASE),
                                           "SCALES": list(net.ANCHOR_SCALES), "RATIOS": list(net.ANCHOR_RATIOS)}],
                "RESIZE": {"SHORT": int(short_long[0]), "MAX": int(short_long[1])}}
    raise ValueError(f"unknown detector family {family!r}; one of {', '.join(FAMILIES)}")


def anchor_coverage(dataset, spec, iou=0.5, bands=COVERAGE_BANDS):
    """Share of the dataset's boxes whose best anchor has IoU >= ``iou``, per box-height band in the
    pixels the network sees (after its resize). Returns {"iou", "boxes", "matched", "bands": [...]}."""
    from lib.tools.draw import anchor_match, network_scale
    best, heights, cache = [], [], {}
    for rec in dataset.records:
        if not rec.num_boxes:
            continue
        b, _ = anchor_match(spec, rec.boxes, rec.width, rec.height, iou, cache=cache)
        sy = network_scale(spec, rec.width, rec.height)[1]
        best.append(b)
        heights.append((rec.boxes[:, 3] - rec.boxes[:, 1]) * sy)
    best = np.concatenate(best) if best else np.zeros(0)
    heights = np.concatenate(heights) if heights else np.zeros(0)
    edges = [0.0] + [float(v) for v in bands] + [math.inf]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (heights >= lo) & (heights < hi)
        rows.append({"min_height": lo, "max_height": None if math.isinf(hi) else hi, "boxes": int(sel.sum()),
                     "matched": int((best[sel] >= iou).sum())})
    return {"iou": float(iou), "boxes": int(len(best)), "matched": int((best >= iou).sum()), "bands": rows}


def coverage_warnings(coverage, min_boxes=10, warn_below=COVERAGE_WARN):
    """Messages for the height bands (with at least ``min_boxes`` boxes) that the anchors match poorly."""
    out = []
    for row in coverage["bands"]:
        if row["boxes"] >= min_boxes and row["matched"] < warn_below * row["boxes"]:
            band = (f"{row['min_height']:g}-{row['max_height']:g} px" if row["max_height"] is not None
                    else f">= {row['min_height']:g} px")
            out.append(f"anchors match only {row['matched']} of the {row['boxes']} training boxes {band} high "
                       f"(best IoU >= {coverage['iou']:g} after the network's resize); those boxes train "
                       f"with poor targets. Smaller or denser anchors (a stride-8 level), training tiles at "
                       f"native resolution or a larger input help; `python -m lib.tools.draw --anchors RUN_DIR` "
                       f"shows the boxes")
    return out


def _report_anchor_coverage(family, fam_cfg, train_set, num_classes, out_dir):
    import logging
    log = logging.getLogger("detectors")
    from lib.train.checkpoint import atomic_write_json
    coverage = anchor_coverage(train_set, anchor_spec(family, fam_cfg, num_classes))
    atomic_write_json(os.path.join(out_dir, "anchor_coverage.json"), coverage)
    log.info("anchor coverage (IoU >= %g): %d of %d training boxes; by height %s", coverage["iou"],
             coverage["matched"], coverage["boxes"],
             ", ".join(f"[{r['min_height']:g},{'inf' if r['max_height'] is None else format(r['max_height'], 'g')}) "
                       f"{r['matched']}/{r['boxes']}" for r in coverage["bands"]))
    if family in ("rfcn", "fgfa"):
        # two-stage: the RPN also takes each box's best anchor and the RoI head refines the proposal, so
        # a box without an IoU-0.5 anchor still trains (measured: speedtrap R-FCN, docs/custom_workflow.md)
        return coverage
    for message in coverage_warnings(coverage):
        log.warning(message)
    return coverage


# ------------------------------------------------------------------------------------------------
# run folders

def _write_run_meta(out_dir, cfg, fam_cfg, classes):
    os.makedirs(out_dir, exist_ok=True)
    from lib.train.checkpoint import atomic_write_json
    atomic_write_json(os.path.join(out_dir, RUN_META), {"detector": cfg.DETECTOR, "classes": list(classes)})
    dump_config(cfg, os.path.join(out_dir, "custom.yaml"))
    dump_config(fam_cfg, os.path.join(out_dir, "family.yaml"))


def resolve_run(path):
    """A run folder or a checkpoint file inside one -> (run folder, checkpoint path or None)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        folder, checkpoint = path, None
    elif os.path.isfile(path):
        folder, checkpoint = os.path.dirname(path), path
        if not path.endswith((".json", ".params")):
            raise ValueError(f"{path}: expected a run folder, a ckpt-*.json or a .params file")
    else:
        raise FileNotFoundError(f"model not found: {path}")
    if not os.path.isfile(os.path.join(folder, RUN_META)):
        raise FileNotFoundError(f"{folder}: no {RUN_META}; train with experiments/custom/train.py first")
    return folder, checkpoint


def family_overrides(overrides):
    """The ``OVERRIDES.<family key>=value`` items of recipe command-line overrides, as family overrides
    (``OVERRIDES.TEST.K=0`` -> ``TEST.K=0``): what a trained run's saved family config takes at test
    time (the other recipe keys were turned into family keys when the run was trained)."""
    prefix = "OVERRIDES."
    return [item.strip()[len(prefix):] for item in overrides or [] if item.strip().upper().startswith(prefix)]


def read_run(path, overrides=None):
    """-> (run folder, checkpoint or None, custom cfg, family cfg, classes). ``overrides``: family
    "KEY.SUB=value" strings applied to the run's saved family config."""
    from lib.config import read_yaml
    folder, checkpoint = resolve_run(path)
    with open(os.path.join(folder, RUN_META), "r", encoding="utf-8") as f:
        meta = json.load(f)
    saved = read_yaml(os.path.join(folder, "custom.yaml"))
    cfg = EasyDict(merge(CUSTOM_DEFAULTS, saved, source=os.path.join(folder, "custom.yaml"), open_keys=OPEN_KEYS))
    cfg["CONFIG_FILE"] = os.path.join(folder, "custom.yaml")
    fam = load_family_config(cfg.DETECTOR, os.path.join(folder, "family.yaml"), overrides)
    fam["CONFIG_FILE"] = os.path.join(folder, "family.yaml")
    fam["OUTPUT_DIR"] = folder
    if meta["detector"] != cfg.DETECTOR:
        raise ValueError(f"{folder}: {RUN_META} says {meta['detector']}, custom.yaml says {cfg.DETECTOR}")
    return folder, checkpoint, cfg, fam, meta["classes"]


# ------------------------------------------------------------------------------------------------
# the loaded model

class LoadedModel:
    """A trained detector in this process.

    ``detect(images)``: RGB uint8 images -> [(boxes (K,4) image pixels, scores, labels)] for still-image
    use (video families see each image as a one-frame video); ``detect_stream(images)``: one video in
    order, memory/window carried (the same as detect for frame detectors).
    """

    def __init__(self, family, net, cfg, classes, ctx):
        self.family, self.net, self.cfg, self.classes, self.ctx = family, net, cfg, list(classes), ctx
        self._runner = None

    # --- per family ---
    def _m2det(self):
        from m2det import engine
        if self._runner is None:
            self._runner = engine.Detector(self.net, self.cfg, self.ctx)
        return self._runner

    def _streaming(self):
        from lstm_ssd.streaming import StreamingDetector
        if self._runner is None:
            self._runner = StreamingDetector(self.net, self.cfg, policy="large", ctx=self.ctx)
        return self._runner

    def _window(self):
        from fgfa.data import make_preprocess
        from fgfa.detector import VideoDetector
        if self._runner is None:
            if self.cfg.TEST.HYBRIDIZE:
                self.net.hybridize_for_inference(self.ctx)
            self._runner = VideoDetector(self.net, self.ctx, preprocess=make_preprocess(self.cfg))
        return self._runner

    def quantize_int8(self, images):
        """int8 CPU inference in this process (MXNet's MKLDNN quantization), calibrated on RGB uint8
        ``images`` (a few training frames). What runs in int8 is the family's choice
        (``lstm_ssd.detector.VideoDetector.quantize_int8``: extractors and head, the LSTM in float;
        ``fgfa.detector.FGFA.quantize_int8``: backbone, head convolutions, embedding, FlowNet). M2Det is
        quantized as an exported artifact (``lib.tools.quantize``), the form it is deployed in."""
        images = list(images)
        if not images:
            raise ValueError("int8 calibration needs at least one frame")
        if self.family in ("ssdlite", "lstm_ssd"):
            from lstm_ssd.streaming import preprocess
            self._streaming()        # hybridizes the float parts first, as at inference
            self.net.quantize_int8(np.concatenate([preprocess(im, self.net.image_hw).asnumpy() for im in images]))
        elif self.family in ("rfcn", "fgfa"):
            from fgfa.data import make_preprocess
            self._window()
            preprocess = make_preprocess(self.cfg)
            frames = [preprocess(im)[0] for im in images]
            frames = [f for f in frames if f.shape == frames[0].shape]   # one input size for the graphs
            self.net.quantize_int8(np.stack(frames), self.cfg.TEST.CALIB_MODE, self.cfg.TEST.FLOW_CALIB_MODE)
        else:
            raise ValueError(f"{self.family}: int8 runs on the exported artifact: python -m lib.tools.export ..., "
                             f"then python -m lib.tools.quantize --model EXPORT_DIR --calib FRAMES --out DIR_INT8")
        return self

    def detect_stream(self, images):
        images = list(images)
        if self.family == "m2det":
            # one image per call: the shape of the exported artifact, and no re-binding per batch size
            runner = self._m2det()
            return [runner.detect([image])[0] for image in images]
        if self.family in ("ssdlite", "lstm_ssd"):
            runner = self._streaming()
            runner.reset()
            out = []
            for image in images:
                labels, scores, boxes = runner.step(image)
                out.append((np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                            np.asarray(labels, np.int64)))
            return out
        results = [None] * len(images)
        for t, result in self._window().detect_video(images):
            results[t] = result
        return results

    def detect(self, images):
        if self.family in ("m2det", "ssdlite", "rfcn"):
            return self.detect_stream(images)
        return [self.detect_stream([image])[0] for image in images]

    def detect_tiled(self, image, tiling):
        """One RGB image by sliding tiles (TILING.INFER keys) merged with NMS."""
        from lib.tiling import detect_tiled
        return detect_tiled(lambda crop: self.detect([crop])[0], image, tuple(int(v) for v in tiling.SIZE),
                            overlap=int(tiling.OVERLAP), nms_iou=float(tiling.NMS_IOU),
                            include_full_frame=bool(tiling.INCLUDE_FULL_FRAME),
                            max_detections=int(tiling.MAX_DETECTIONS))


# ------------------------------------------------------------------------------------------------
# build / train / load per family

def build_model(family, fam_cfg, num_classes, ctx=None):
    """An initialised training network of ``family`` for ``num_classes`` foreground classes."""
    import mxnet as mx
    ctx = ctx or mx.cpu()
    if family == "m2det":
        from m2det import engine
        return engine.build_model(fam_cfg, num_classes, ctx)
    if family in ("ssdlite", "lstm_ssd"):
        from lstm_ssd.detector import build_detector
        cfg = copy.deepcopy(fam_cfg)
        cfg.MODEL.NUM_CLASSES = int(num_classes)
        return build_detector(cfg, ctx)
    if family in ("rfcn", "fgfa"):
        from fgfa.train import build_model as fgfa_build
        return fgfa_build(fam_cfg, num_classes, ctx)
    raise ValueError(f"unknown detector family {family!r}; one of {', '.join(FAMILIES)}")


def train(cfg, train_set=None, val_set=None, progress=None):
    """Train the recipe config's detector; returns {"out_dir", "summary", "classes", "train_images"}."""
    import mxnet as mx
    from lib.runtime import get_context
    family = cfg.DETECTOR
    out_dir = _abs(cfg.OUTPUT_DIR)
    train_set = train_set if train_set is not None else load_data(cfg, "TRAIN")
    if train_set is None or len(train_set) == 0:
        raise ConfigError(f"{cfg.CONFIG_FILE or '<config>'}: DATA.TRAIN gives no training image")
    classes = list(train_set.classes)
    if not cfg.TRAIN.BACKGROUND_IMAGES:
        from lib.dataset import DetectionDataset
        train_set = DetectionDataset([r for r in train_set.records if r.num_boxes], classes,
                                     train_set.name + "-background")
    val_set = val_set if val_set is not None else load_data(cfg, "VAL", classes)
    if cfg.TILING.TRAIN.ENABLED:
        train_set = tile_dataset(train_set, os.path.join(out_dir, "train_tiles"), cfg.TILING.TRAIN)
    fam = family_config(cfg, classes, len(train_set), still_images=sum(r.video is None for r in train_set.records))
    if progress is not None:
        fam.TRAIN.PROGRESS = bool(progress)
    _write_run_meta(out_dir, cfg, fam, classes)
    _report_anchor_coverage(family, fam, train_set, len(classes), out_dir)
    ctx = get_context(cfg.CONTEXT)
    if family == "m2det":
        from m2det.cli import run_training
        summary = run_training(fam, train_set, val_set)
    elif family in ("ssdlite", "lstm_ssd"):
        from lstm_ssd.train import train as lstm_train
        net = build_model(family, fam, len(classes), ctx)
        summary = lstm_train(fam, net, out_dir=out_dir, dataset=train_set, ctx=ctx)
    else:
        from fgfa.train import train as fgfa_train
        if cfg.TRAIN.ITERATIONS:
            train_set, fam = cap_key_frames(train_set, fam, cfg.TRAIN.ITERATIONS)
            dump_config(fam, os.path.join(out_dir, "family.yaml"))
        summary = fgfa_train(fam, dataset=train_set)
        summary = {k: v for k, v in summary.items() if k not in ("model",)}
    mx.nd.waitall()
    return {"out_dir": out_dir, "summary": summary, "classes": classes, "train_images": len(train_set)}


def load_model(path, ctx=None, overrides=None):
    """A run folder (latest checkpoint) or a checkpoint in it -> LoadedModel. ``overrides``: family
    "KEY.SUB=value" strings for this use of the model (e.g. ``TEST.K=0``, ``IMAGE.TEST_SCALE=[1080,1920]``)."""
    import mxnet as mx
    folder, checkpoint, cfg, fam, classes = read_run(path, overrides)
    ctx = ctx or mx.cpu()
    family = cfg.DETECTOR
    if family == "m2det":
        from m2det import engine
        net, fam, classes = engine.load_trained_model(checkpoint or folder, ctx, overrides)
    elif family in ("ssdlite", "lstm_ssd"):
        from lib.train import CheckpointManager
        net = build_model(family, fam, len(classes), ctx)
        if checkpoint and checkpoint.endswith(".params"):
            net.load_parameters(checkpoint, ctx=ctx)
        else:
            CheckpointManager(folder).load(net, checkpoint=checkpoint, ctx=ctx, restore_rng=False)
    else:
        from fgfa.test import load_model as fgfa_load
        net, classes = fgfa_load(fam, classes, checkpoint, ctx)
    return LoadedModel(family, net, fam, classes, ctx)


# ------------------------------------------------------------------------------------------------
# export

def _ssdlite_inference_block(net, post):
    """HybridBlock: (1,3,H,W) RGB 0..255 -> ids, scores, boxes (input pixels), decode + NMS inside."""
    import mxnet as mx
    from mxnet import gluon
    from lib.bbox import decode_boxes_F

    class SSDLiteInference(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.extractor, self.project, self.head = net.large, net.project, net.head
            self.num_classes = net.num_classes
            self.height, self.width = (float(s) for s in net.image_hw)
            self.stds = tuple(float(s) for s in net.cfg.BOX_STDS)
            self.score_thresh = float(post.SCORE_THRESHOLD)
            self.nms_iou = float(post.IOU_THRESHOLD)
            # box_nms keeps the anchor count: at most that many rows per class
            self.max_per_class = min(int(post.MAX_PER_CLASS), int(net.anchors().shape[0]))
            self.max_total = int(post.MAX_TOTAL)
            top_k = int(post.PRE_NMS_TOP_K)
            self.pre_nms_top_k = top_k if 0 < top_k < int(net.anchors().shape[0]) else -1
            with self.name_scope():
                self.anchors = self.params.get_constant("anchors", mx.nd.array(net.anchors()[None]))

        def hybrid_forward(self, F, x, anchors):
            cls, box = self.head(self.project(self.extractor(x)))
            scores = F.sigmoid(F.slice_axis(cls, axis=-1, begin=1, end=None))  # column 0: background logit
            boxes = decode_boxes_F(F, box, anchors, stds=self.stds)
            # normalised corners -> input pixels, each coordinate scaled and clipped by its own axis
            x1, y1, x2, y2 = F.split(boxes, num_outputs=4, axis=-1)
            boxes = F.concat(F.clip(x1 * self.width, 0.0, self.width), F.clip(y1 * self.height, 0.0, self.height),
                             F.clip(x2 * self.width, 0.0, self.width), F.clip(y2 * self.height, 0.0, self.height),
                             dim=-1)
            per_class = []
            for c in range(self.num_classes):
                score = F.slice_axis(scores, axis=-1, begin=c, end=c + 1)
                dets = F.concat(F.ones_like(score) * c, score, boxes, dim=-1)
                dets = F.contrib.box_nms(dets, overlap_thresh=self.nms_iou, valid_thresh=self.score_thresh,
                                         topk=self.pre_nms_top_k, coord_start=2, score_index=1, id_index=-1,
                                         force_suppress=True)
                per_class.append(F.slice_axis(dets, axis=1, begin=0, end=self.max_per_class))
            # axis -2, not 1: MXNet int8 quantization leaves negative-axis concats in float (a quantized
            # concat would round the scores to the coarse uint8 grid of the box coordinates)
            dets = F.concat(*per_class, dim=-2) if len(per_class) > 1 else per_class[0]
            if self.num_classes > 1:   # sort everything kept by score (IoU never exceeds 1: no suppression)
                dets = F.contrib.box_nms(dets, overlap_thresh=1.0, valid_thresh=self.score_thresh, topk=-1,
                                         coord_start=2, score_index=1, id_index=-1, force_suppress=True)
            dets = F.slice_axis(dets, axis=1, begin=0, end=min(self.max_total, self.num_classes * self.max_per_class))
            return (F.slice_axis(dets, axis=-1, begin=0, end=1), F.slice_axis(dets, axis=-1, begin=1, end=2),
                    F.slice_axis(dets, axis=-1, begin=2, end=6))

    return SSDLiteInference(prefix="ssdlite_inference_")


def _rfcn_inference_block(model):
    """HybridBlock for the R-FCN baseline: (1,3,H,W) normalised, unpadded -> ids, scores, boxes.

    Inside the graph: zero padding to a multiple of IMAGE.PAD_STRIDE (as fgfa.data.prepare_image),
    im_info = [H, W, 1] from the input shape, features, RPN + MultiProposal + R-FCN (fgfa's
    InferenceHead, compiled operators), box decoding, clipping and per-class NMS (TEST.NMS).
    """
    import mxnet as mx
    from mxnet import gluon
    from lib.bbox import decode_boxes_F
    cfg = model.cfg
    net = model.net

    class RFCNInference(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.features, self.head = net.features, net.head
            self.num_classes = net.num_classes
            self.stride = int(cfg.IMAGE.PAD_STRIDE)
            self.stds = tuple(float(v) for v in cfg.NETWORK.RCNN_BBOX_STDS)
            self.score_thresh = float(cfg.TEST.SCORE_THRESH)
            self.nms_iou = float(cfg.TEST.NMS)
            self.max_per_class = min(int(cfg.TEST.MAX_PER_IMAGE), int(cfg.TEST.RPN_POST_NMS_TOP_N))
            self.max_total = int(cfg.TEST.MAX_PER_IMAGE)

        def hybrid_forward(self, F, x):
            s = self.stride
            # pad right/bottom to a multiple of the stride: pad by s-1, then cut to ceil(H/s)*s
            padded = F.pad(x, mode="constant", constant_value=0.0, pad_width=(0, 0, 0, 0, 0, s - 1, 0, s - 1))
            cells = F.Pooling(x, kernel=(s, s), stride=(s, s), pool_type="max", pooling_convention="full")
            target = F.UpSampling(cells, scale=s, sample_type="nearest")
            padded = F.slice_like(padded, target, axes=(2, 3))
            hw = F.cast(F.slice_axis(F.shape_array(x), axis=0, begin=2, end=4), "float32")      # [H, W]
            im_info = F.reshape(F.concat(hw, F.ones_like(F.slice_axis(hw, axis=0, begin=0, end=1)), dim=0),
                                (1, 3))
            rois, probs, deltas = self.head(self.features(padded), im_info)
            # MultiProposal rois are +1-inclusive: x2 + 1 gives our exclusive corners
            corners = F.slice_axis(rois, axis=1, begin=1, end=5)
            corners = F.broadcast_add(corners, F.reshape(F.concat(F.zeros((1, 2)), F.ones((1, 2)), dim=1), (1, 4)))
            boxes = decode_boxes_F(F, F.expand_dims(F.slice_axis(deltas, axis=1, begin=4, end=8), 0),
                                   F.expand_dims(corners, 0), stds=self.stds)
            limit = F.reshape(F.concat(F.reverse(hw, axis=0), F.reverse(hw, axis=0), dim=0), (1, 1, 4))
            boxes = F.broadcast_minimum(F.relu(boxes), limit)
            scores = F.expand_dims(F.slice_axis(probs, axis=-1, begin=1, end=None), 0)
            per_class = []
            for c in range(self.num_classes):
                score = F.slice_axis(scores, axis=-1, begin=c, end=c + 1)
                dets = F.concat(F.ones_like(score) * c, score, boxes, dim=-1)
                dets = F.contrib.box_nms(dets, overlap_thresh=self.nms_iou, valid_thresh=self.score_thresh,
                                         topk=-1, coord_start=2, score_index=1, id_index=-1, force_suppress=True)
                per_class.append(F.slice_axis(dets, axis=1, begin=0, end=self.max_per_class))
            # axis -2, not 1: MXNet int8 quantization leaves negative-axis concats in float (a quantized
            # concat would round the scores to the coarse uint8 grid of the box coordinates)
            dets = F.concat(*per_class, dim=-2) if len(per_class) > 1 else per_class[0]
            if self.num_classes > 1:
                dets = F.contrib.box_nms(dets, overlap_thresh=1.0, valid_thresh=self.score_thresh, topk=-1,
                                         coord_start=2, score_index=1, id_index=-1, force_suppress=True)
            dets = F.slice_axis(dets, axis=1, begin=0, end=min(self.max_total, self.num_classes * self.max_per_class))
            return (F.slice_axis(dets, axis=-1, begin=0, end=1), F.slice_axis(dets, axis=-1, begin=1, end=2),
                    F.slice_axis(dets, axis=-1, begin=2, end=6))

    return RFCNInference(prefix="rfcn_inference_")


def _write_meta(out_dir, meta):
    path = os.path.join(out_dir, "meta.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def export(model, out_dir, onnx=False, builtin_ops=False):
    """Write the inference artifact of a LoadedModel into ``out_dir``; returns a dict of paths.

    ``builtin_ops`` (rfcn): MXNet's own contrib MultiProposal / PSROIPooling in the graph instead of
    the compiled operators, so the artifact runs on a stock mxnet without lib/libdetops.so (slower on
    CPU). Raises ExportNotSupported for families the single-frame artifact cannot hold.
    """
    import mxnet as mx
    os.makedirs(out_dir, exist_ok=True)
    family = model.family
    if family == "m2det":
        from m2det import engine
        return engine.export_inference_model(model.net, model.cfg, model.classes, out_dir, onnx=onnx, ctx=model.ctx)
    if family == "ssdlite":
        block = _ssdlite_inference_block(model.net, model.cfg.POST_PROCESS)
        block.anchors.initialize(ctx=model.ctx)
        block.hybridize()
        height, width = model.net.image_hw
        block(mx.nd.zeros((1, 3, height, width), ctx=model.ctx))
        prefix = os.path.join(out_dir, "model")
        block.export(prefix, epoch=0)
        post = model.cfg.POST_PROCESS
        meta = {"detector": "ssdlite", "classes": model.classes,
                "input": {"resize": "fixed", "size": [height, width], "mean": [0.0, 0.0, 0.0],
                          "std": [1.0, 1.0, 1.0]},
                "ops_library": False, "nms": "hard", "score_threshold": float(post.SCORE_THRESHOLD),
                "nms_iou": float(post.IOU_THRESHOLD), "max_per_class": int(post.MAX_PER_CLASS),
                "max_per_image": int(post.MAX_TOTAL)}
        paths = {"symbol": prefix + "-symbol.json", "params": prefix + "-0000.params"}
        if onnx:
            from m2det.engine import export_onnx
            paths["onnx"] = export_onnx(paths["symbol"], paths["params"], (height, width),
                                        os.path.join(out_dir, "model.onnx"))
            with open(paths["symbol"], "r", encoding="utf-8") as f:
                graph = json.load(f)
            meta["onnx_outputs"] = [graph["nodes"][h[0]]["name"] for h in graph["heads"]]
        paths["meta"] = _write_meta(out_dir, meta)
        return paths
    if family == "lstm_ssd":
        raise ExportNotSupported(
            "lstm_ssd keeps an LSTM memory from frame to frame; the single-frame artifact (input `data` only) "
            "cannot carry it. Export its parts with `python -m lstm_ssd.export --cfg RUN/family.yaml --model "
            "RUN/ckpt-NNNN.params --output PREFIX` (extractor, LSTM step and head, chained by the caller), or "
            "train DETECTOR: ssdlite for the standard artifact.")
    if family == "fgfa":
        raise ExportNotSupported(
            "fgfa aggregates features of a window of 2K+1 frames; the single-frame artifact cannot hold the "
            "window. Run it with fgfa.demo / experiments/fgfa_rfcn/train_test.py, or train DETECTOR: m2det / "
            "ssdlite for an exported model.")
    # rfcn
    cfg = model.cfg
    previous = model.net.builtin_ops
    model.net.use_builtin_ops(True if builtin_ops else False)
    try:
        block = _rfcn_inference_block(model)
        block.hybridize()
        short, long_side = (int(v) for v in cfg.IMAGE.TEST_SCALE)
        block(mx.nd.zeros((1, 3, short, long_side), ctx=model.ctx))
        prefix = os.path.join(out_dir, "model")
        block.export(prefix, epoch=0)
    finally:
        model.net.use_builtin_ops(previous)
    paths = {"symbol": prefix + "-symbol.json", "params": prefix + "-0000.params"}
    meta = {"detector": "rfcn", "classes": model.classes,
            "input": {"resize": "keep_ratio", "short_side": short, "max_size": long_side,
                      "mean": [float(v) for v in cfg.IMAGE.MEAN], "std": [float(v) for v in cfg.IMAGE.STD]},
            "ops_library": not builtin_ops, "nms": "hard", "score_threshold": float(cfg.TEST.SCORE_THRESH),
            "nms_iou": float(cfg.TEST.NMS), "max_per_image": int(cfg.TEST.MAX_PER_IMAGE)}
    paths["meta"] = _write_meta(out_dir, meta)
    if onnx:
        raise ExportNotSupported(
            f"rfcn: the MXNet artifact is written to {out_dir}, but its proposal and position-sensitive RoI "
            "pooling operators have no ONNX mapping; run it with --runtime mxnet")
    return paths
