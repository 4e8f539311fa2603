"""yaml configs merged over per-method defaults, validated strictly.

Every method defines its defaults as a nested dict. A yaml file may override any of them and may
start from another yaml file with ``_BASE_: other.yaml`` (path relative to the file), or from several,
``_BASE_: [model.yaml, data.yaml]``, merged in that order (a later base wins). Unknown keys,
wrong types and missing required files are errors that name the key and the file.

One schema for the sections every detector family shares (``SHARED_DEFAULTS``): INPUT (input size,
normalisation), TRAIN (the training loop's keys: batch size, epochs or iterations, learning rate and
its schedule, optimizer, augmentation list, kvstore), DATASET (TRAIN / VAL as lists of
``lib.dataset.load_dataset`` specs, CLASSES) and TEST (score threshold, NMS, int8). Each family extends
them with its own keys (``extend_schema``). Keys renamed by this schema keep working for one release:
``load_config(..., renames=...)`` moves an old key to its new place and warns, naming the new key.
"""
import copy
import logging
import os
import re
import warnings

import yaml
from easydict import EasyDict

from lib.errors import UserError
from lib.fileio import atomic_open

BASE_KEY = "_BASE_"
# Relative paths in configs are resolved against the project root (the folder holding setup.py),
# as in the original FGFA repo whose commands run from the root.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the file and key."""


def project_path(path, base=None):
    """A path from a config: absolute as given, else relative to ``base`` (default: the project root)."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base or PROJECT_ROOT, path))


log = logging.getLogger("lib.config")

# The keys of the training loop (lib.train); every family's TRAIN section holds them.
TRAIN_DEFAULTS = {
    "OPTIMIZER": "sgd",
    "LR": 0.01,
    "MOMENTUM": 0.9,
    "WD": 0.0005,
    "ADAM_BETAS": [0.9, 0.999],
    "RMSPROP_DECAY": 0.9,
    "RMSPROP_CENTERED": False,
    "EPSILON": 1e-8,
    "EPOCHS": 10,
    "ITERS_PER_EPOCH": 0,
    "LR_SCHEDULE": "step",
    "LR_STEPS": [],
    "LR_STEP_UNIT": "epoch",
    "LR_FACTOR": 0.1,
    "LR_DECAY_PERIOD": 0.0,
    "LR_MIN": 0.0,
    "WARMUP_EPOCHS": 0.0,
    "WARMUP_ITERS": 0,
    "WARMUP_FACTOR": 0.1,
    "CLIP_GRAD_NORM": 0.0,
    "SEED": 0,
    "CHECKPOINT_EVERY": 1,
    "KEEP_LAST": 3,
    "LOG_EVERY": 20,
    "EVAL_EVERY": 1,
    "BEST_METRIC": "",
    "FREEZE_PATTERNS": [],
    "TRAINABLE_PATTERNS": [],
    "FROZEN_BN_STATS": False,
    "NO_WD_PATTERNS": [],
    "LR_MULT_PATTERNS": {},
    "KVSTORE": "device",
    "BATCH_SIZE": 1,
    "LR_SCALING": "none",
    "PROGRESS": True,
}

# The sections every family shares, with the same names and meanings in each.
SHARED_DEFAULTS = {
    "OUTPUT_DIR": "output/run",
    "CONTEXT": "cpu",                  # cpu | gpu | gpu:N
    # several devices in one process: e.g. [gpu(0), gpu(1)] (each batch split over them); [] = CONTEXT
    "CONTEXTS": [],
    # backbone weights to start from: a lib.pretrained spec (efficientnet_lite0:imagenet, vgg16_hed:bsds500,
    # gluoncv:<model name>, a .params / .pth file); "" = the family's initialisation
    "PRETRAINED": "",
    "INPUT": {
        "SIZE": 0,                     # fixed-size families: network input S or [H, W] (0 = the family's)
        "SHORT_SIDE": 0,               # keep-ratio families: the shorter side is resized to this ...
        "MAX_SIZE": 0,                 # ... unless the longer one would exceed this
        # keep-ratio families: training scales, one drawn per sample: factors of (SHORT_SIDE, MAX_SIZE)
        # (e.g. [0.5, 0.75, 1.0]) or [short, max] pairs ([[480, 854], [720, 1280]])
        "TRAIN_SCALES": [],
        "MEAN": [0.0, 0.0, 0.0],       # RGB, subtracted from 0-255 pixels ...
        "STD": [1.0, 1.0, 1.0],        # ... then divided by this
    },
    "TRAIN": dict(TRAIN_DEFAULTS, **{
        "BATCH_SIZE": 1,               # samples per batch of one process (images; clips for the memory detectors)
        "ITERATIONS": 0,               # > 0: train about this many batches (sets EPOCHS from the data)
        "MAX_BATCHES": 0,              # > 0: at most this many batches per epoch
        "AUGMENT": True,               # apply AUGMENTATIONS
        "AUGMENTATIONS": [],           # lib.transforms specs, in order (each family: what it supports)
    }),
    "DATASET": {
        "TRAIN": None,                 # a lib.dataset.load_dataset spec or a list of them (concatenated)
        "VAL": None,
        "CLASSES": [],                 # explicit class list (else the training data's)
        # training refuses a DATASET.TRAIN in which no box survived loading (a classes file that does
        # not list the class, unknown names, bad coordinates); true: background frames only, on purpose
        "ALLOW_BACKGROUND_ONLY": False,
    },
    "TEST": {
        "SCORE_THRESH": 0.01,          # detections below are dropped
        "NMS_IOU": 0.5,                # per-class NMS overlap
        "MAX_PER_CLASS": 100,
        "MAX_PER_IMAGE": 100,
        "PRE_NMS_TOP_K": 0,            # per class, best candidates entering NMS (0 = all)
        "QUANTIZE": "",                # int8: the family's int8 inference (CPU, oneDNN)
        "CALIB_FRAMES": 8,             #   calibrated on this many frames spread over DATASET.TRAIN
        # name -> frame list ("<video> <frame>" lines, lib.eval.subsets): mAP of those frames too, e.g.
        # the degraded_frames.txt / intact_frames.txt of lib.tools.degrade
        "SUBSETS": {},
        # a box-level memory for any streaming runner (lib.streaming.TrackedFusion): the last frame's
        # detections moved along DIS flow (PRESET at SCALE of the frame) and merged with this frame's, a
        # carried box's score times DECAY per frame; one that overlaps a detection of its class by IOU lifts
        # its score, one that overlaps none is added while it scores MIN_SCORE or more
        "FUSE": {"ENABLED": False, "DECAY": 0.7, "IOU": 0.5, "MIN_SCORE": 0.05, "PRESET": "ultrafast",
                 "SCALE": 0.5, "MIN_VISIBLE": 0.3},
    },
}

# mappings with free keys in every family's config
SHARED_OPEN_KEYS = ("TRAIN.LR_MULT_PATTERNS", "TEST.SUBSETS")
# dataset spec lists: a single mapping is accepted (a list of one); --set DATASET.TRAIN.KEY=value
# sets KEY in every spec of the list
SPEC_LIST_KEYS = ("DATASET.TRAIN", "DATASET.VAL")


def extend_schema(shared, family):
    """A family's defaults: ``shared`` with the family's values and keys merged in (no type checks:
    the family may add sections and change the shared defaults)."""
    out = copy.deepcopy(shared)
    for key, value in family.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = extend_schema(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(value):
    return type(value).__name__


def _check_type(default, value, key, source):
    """Values must keep the default's type; ints are accepted for floats, None default = any."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' must be a bool (true/false), got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)   # PyYAML reads 1e-3 (no dot) as a string; users write it that way
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {_type_name(value)} {value!r}")
        return list(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {_type_name(value)} {value!r}")
        return value
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        raise ConfigError(f"{source}: key '{key}' must be {_type_name(default)}, "
                          f"got {_type_name(value)} {value!r}")
    return value


def size_hw(value, key, unset_ok=False):
    """An image size from a config, S or [H, W], -> (H, W); ConfigError naming ``key`` otherwise.
    ``unset_ok``: 0 is accepted too (a default meaning "not set", e.g. "same as the image") -> None."""
    if unset_ok and isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{key} must be a positive integer S or a list [H, W], got {value!r}")
    return tuple(values)


def merge(defaults, overrides, source="<overrides>", prefix="", open_keys=(), size_keys=(), patch_open=False):
    """Return a deep copy of ``defaults`` updated by ``overrides`` with key and type checks.

    ``open_keys`` lists dotted keys whose mapping values accept any sub-keys (e.g. free-form
    per-dataset options); ``size_keys`` lists dotted keys that take an image size S or [H, W].
    A mapping given for an open key replaces the old one (a config file naming another dataset must
    not inherit its base's SPLIT), unless ``patch_open``: then only the keys given change (used for a
    command-line ``--set DATASET.TEST.SPLIT=...``).
    """
    out = copy.deepcopy(defaults)
    for key, value in (overrides or {}).items():
        dotted = f"{prefix}{key}"
        if key not in out:
            if prefix.rstrip(".") in open_keys:
                out[key] = copy.deepcopy(value)
                continue
            known = ", ".join(sorted(str(k) for k in out)) or "(none)"
            raise ConfigError(f"{source}: unknown key '{dotted}'. Known keys here: {known}")
        default = out[key]
        if dotted in size_keys:
            size_hw(value, f"{source}: key '{dotted}'", unset_ok=True)
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
            continue
        value = _check_type(default, value, dotted, source)
        if isinstance(default, dict) and isinstance(value, dict) and dotted not in open_keys:
            out[key] = merge(default, value, source, dotted + ".", open_keys, size_keys, patch_open)
        elif patch_open and isinstance(default, dict) and isinstance(value, dict):
            out[key] = _patched(default, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _patched(old, new):
    """Deep copy of mapping ``old`` with the keys of ``new`` set (recursively for mappings in both)."""
    out = copy.deepcopy(old)
    for key, value in new.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _patched(out[key], value) if both else copy.deepcopy(value)
    return out


def read_yaml(path):
    """safe_load a yaml file into a dict, with errors that name the file and line."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} invalid yaml: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {_type_name(data)}")
    return data


def _warn_renamed(source, old, new_keys):
    message = (f"{source}: key '{old}' is deprecated, use '{', '.join(new_keys)}' "
               f"(the old name is read until the next release)")
    warnings.warn(message, DeprecationWarning, stacklevel=4)
    log.warning(message)


def _set_dotted(data, dotted, value, source, old):
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: key '{old}' moves to '{dotted}', but '{part}' is not a mapping there")
    if parts[-1] in node:
        raise ConfigError(f"{source}: both '{old}' (deprecated) and its new name '{dotted}' are given; keep '{dotted}'")
    node[parts[-1]] = value


def apply_renames(data, renames, source):
    """Move the deprecated keys of a nested mapping to their new places, warning for each.

    ``renames``: {old dotted key: new dotted key, or a function value -> {new dotted key: value}} (for
    a key whose value changes form, e.g. [short, long] -> SHORT_SIDE and MAX_SIZE)."""
    for old, target in (renames or {}).items():
        parts = old.split(".")
        path = [data]
        for part in parts[:-1]:
            path.append(path[-1].get(part) if isinstance(path[-1], dict) else None)
        node = path[-1]
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        value = node.pop(parts[-1])
        for depth in range(len(parts) - 1, 0, -1):      # drop the sections the move emptied
            if path[depth] == {}:
                del path[depth - 1][parts[depth - 1]]
        moved = target(value) if callable(target) else {target: value}
        for new_key, new_value in moved.items():
            _set_dotted(data, new_key, new_value, source, old)
        _warn_renamed(source, old, list(moved))
    return data


class Schema:
    """How a family's config is read: defaults plus the keys with special handling (see ``merge``)."""

    def __init__(self, defaults, open_keys=(), size_keys=(), renames=None, spec_list_keys=()):
        self.defaults = defaults
        self.open_keys = tuple(open_keys) + tuple(spec_list_keys) + SHARED_OPEN_KEYS
        self.size_keys = tuple(size_keys)
        self.renames = dict(renames or {})
        self.spec_list_keys = tuple(spec_list_keys)

    def merge(self, cfg, data, source, patch_open=False):
        data = apply_renames(copy.deepcopy(data), self.renames, source)
        cfg, data = self.normalized(copy.deepcopy(cfg)), self.normalized(data)
        return merge(cfg, data, source=source, open_keys=self.open_keys, size_keys=self.size_keys,
                     patch_open=patch_open)

    def normalized(self, cfg):
        """``cfg`` with its dataset spec lists as lists (a single mapping: a list of one)."""
        for list_key in self.spec_list_keys:
            parent, parts = cfg, list_key.split(".")
            for part in parts[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and parts[-1] in parent:
                parent[parts[-1]] = _spec_list(parent[parts[-1]])
        return cfg


def _resolve_bases(path, schema, merged, seen):
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: {BASE_KEY} chain loops back to itself")
    data = read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and bases and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of file names, got {bases!r}")
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = _resolve_bases(base_path, schema, merged, seen | {path})
    return schema.merge(merged, data, source=path)


def _renamed_key(key, renames):
    """An override's dotted key under its new name (plain renames; value conversions happen on the value)."""
    for old, target in renames.items():
        if not callable(target) and (key == old or key.startswith(old + ".")):
            _warn_renamed("command line", old, [target])
            return target + key[len(old):]
    return key


def _spec_list(value):
    """A dataset spec list from what a config gives: None / {} -> [], a mapping -> [mapping]."""
    if value is None or value == {}:
        return []
    return [value] if isinstance(value, dict) else list(value)


def _override_specs(cfg, list_key, sub_key, raw, source):
    """``DATASET.TRAIN.SPLIT=path``: set one key inside every spec of that list (background folders aside)."""
    node = cfg
    for part in list_key.split("."):
        node = node[part]
    specs = _spec_list(node)
    if not specs:
        raise ConfigError(f"command line: {list_key}.{sub_key}={raw}: {list_key} is empty in {source}")
    value = parse_overrides([f"{sub_key}={raw}"])
    for spec in specs:
        if str(spec.get("FORMAT", "")).lower() != "background":
            spec.update(value)
    parent = cfg
    parts = list_key.split(".")
    for part in parts[:-1]:
        parent = parent[part]
    parent[parts[-1]] = specs
    return cfg


def load_config(path, defaults, overrides=None, open_keys=(), size_keys=(), renames=None, spec_list_keys=()):
    """Load ``path`` over ``defaults`` (nested dict) -> EasyDict.

    ``overrides``: optional list of "A.B=value" strings (yaml-parsed values) applied last, as given
    on a command line with ``--set``. ``open_keys``, ``size_keys``: as in ``merge``. ``renames``:
    deprecated keys (``apply_renames``). ``spec_list_keys``: keys holding dataset spec lists (a single
    mapping becomes a list of one; ``--set KEY.SUB=value`` sets SUB in every spec of the list).
    ``defaults`` may also be a ``Schema`` carrying all of these.
    """
    schema = defaults if isinstance(defaults, Schema) else Schema(defaults, open_keys, size_keys, renames,
                                                                   spec_list_keys)
    cfg = _resolve_bases(path, schema, schema.defaults, frozenset()) if path else copy.deepcopy(schema.defaults)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} must look like KEY.SUB=value")
        key, raw = item.split("=", 1)
        key = _renamed_key(key.strip(), schema.renames)
        below_list = [k for k in schema.spec_list_keys if key.startswith(k + ".")]
        if below_list:
            cfg = _override_specs(cfg, below_list[0], key[len(below_list[0]) + 1:], raw,
                                  os.path.abspath(path) if path else "the defaults")
            continue
        # KEY.SUB=value below an open key changes that one key; a whole mapping replaces the old one
        below_open = any(key.startswith(k + ".") for k in schema.open_keys)
        cfg = schema.merge(cfg, parse_overrides([f"{key}={raw}"]), source="command line", patch_open=below_open)
    out = EasyDict(schema.normalized(cfg))
    out["CONFIG_FILE"] = os.path.abspath(path) if path else None
    return out


def parse_overrides(items):
    """["TRAIN.LR=0.01", "MODEL.DEPTH=18"] -> nested dict with yaml-typed values."""
    nested = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} must look like KEY.SUB=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def require_files(cfg, keys, base_dir=None):
    """Check that each dotted key of ``cfg`` names an existing file or folder.

    Relative paths are resolved against ``base_dir`` (default: the project root);
    the resolved absolute path is written back. Raises ConfigError naming the key and the file.
    """
    source = cfg.get("CONFIG_FILE") or "<config>"
    base_dir = base_dir or PROJECT_ROOT
    for dotted in keys:
        node = cfg
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        value = node[parts[-1]]
        if not value:
            raise ConfigError(f"{source}: key '{dotted}' is empty but a file or folder is required")
        resolved = value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
        if not os.path.exists(resolved):
            raise ConfigError(f"{source}: key '{dotted}' names {value!r}, which does not exist "
                              f"(looked for {resolved})")
        node[parts[-1]] = resolved
    return cfg


def to_plain(cfg):
    """EasyDict -> plain nested dict/list (for yaml/json dumps next to checkpoints)."""
    if isinstance(cfg, dict):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def dump_config(cfg, path):
    """Write the resolved config as yaml (atomic)."""
    with atomic_open(path) as f:
        plain = {k: v for k, v in to_plain(cfg).items() if k != "CONFIG_FILE"}
        yaml.safe_dump(plain, f, sort_keys=False)
