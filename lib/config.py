"""yaml configs merged over per-method defaults, validated strictly.

Every method defines its defaults as a nested dict. A yaml file may override any of them and may
start from another yaml file with ``_BASE_: other.yaml`` (path relative to the file), or from several,
``_BASE_: [model.yaml, data.yaml]``, merged in that order (a later base wins). Unknown keys,
wrong types and missing required files are errors that name the key and the file.
"""
import copy
import os

import yaml
from easydict import EasyDict

BASE_KEY = "_BASE_"
# Relative paths in configs are resolved against the project root (the folder holding setup.py),
# as in the original FGFA repo whose commands run from the root.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and key."""


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


def _resolve_bases(path, defaults, open_keys, seen, size_keys=()):
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
    merged = defaults
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = _resolve_bases(base_path, merged, open_keys, seen | {path}, size_keys)
    return merge(merged, data, source=path, open_keys=open_keys, size_keys=size_keys)


def load_config(path, defaults, overrides=None, open_keys=(), size_keys=()):
    """Load ``path`` over ``defaults`` (nested dict) -> EasyDict.

    ``overrides``: optional list of "A.B=value" strings (yaml-parsed values) applied last, as given
    on a command line with ``--set``. ``open_keys``, ``size_keys``: as in ``merge``.
    """
    open_keys, size_keys = tuple(open_keys), tuple(size_keys)
    cfg = _resolve_bases(path, defaults, open_keys, frozenset(), size_keys) if path else copy.deepcopy(defaults)
    if overrides:
        for item in overrides:
            # KEY.SUB=value below an open key changes that one key; a whole mapping replaces the old one
            key = item.split("=", 1)[0].strip()
            below_open = any(key.startswith(k + ".") for k in open_keys)
            cfg = merge(cfg, parse_overrides([item]), source="command line", open_keys=open_keys,
                        size_keys=size_keys, patch_open=below_open)
    out = EasyDict(cfg)
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
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        plain = {k: v for k, v in to_plain(cfg).items() if k != "CONFIG_FILE"}
        yaml.safe_dump(plain, f, sort_keys=False)
    os.replace(tmp, path)
