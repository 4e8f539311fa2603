"""Read PyTorch checkpoints (``.pth`` / ``.pt`` state dicts) with numpy alone, never running their code.

A PyTorch file is one or more pickles, and unpickling can call any importable function (``os.system``
included). Every pickle of the file, the legacy format's header pickles too, goes through
``RestrictedUnpickler``, whose ``find_class`` hands out only:

- ``collections.OrderedDict`` (the state dict, the empty backward-hook dicts),
- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, replaced by numpy stand-ins that only
  record (storage, offset, size, stride),
- the ``torch.<Type>Storage`` names of plain numeric dtypes, replaced by dtype markers,

and refuses every other global with a ``PretrainedError`` naming it. Before that, each pickle's
opcode stream is scanned without running it (``pickletools.genops``): opcodes a state dict never uses
(object construction by class, extension codes, out-of-band buffers, bytearrays) and absurd memo
indices are refused, so a crafted file cannot make the unpickler allocate memory its size does not
justify. The stand-in objects cannot be altered by the pickle (no attributes to set). Tensor data is
never a pickle: it is copied from raw bytes once the pickles are read, every view bounds-checked
against its storage.

Two layouts:
- legacy (torch < 1.6, and the EfficientNet-Lite0 package): five pickles in a row: magic number,
  protocol version (1001), system info, the object, the list of storage keys; then per key an 8-byte
  little-endian element count and the raw little-endian data.
- zip (torch >= 1.6): ``<folder>/data.pkl`` holds the object; ``<folder>/data/<key>`` the raw data of
  each storage (``<folder>/byteorder`` says "little" or "big" in newer files).
"""
import collections
import io
import pickle
import pickletools
import zipfile
import zlib

import numpy as np

from .errors import PretrainedError

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
MAX_PICKLE_BYTES = 256 << 20   # a zip checkpoint's data.pkl: names and shapes only, never this big
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


# opcodes a tensor state dict never needs: construction by class, the extension registry,
# protocol-5 out-of-band buffers, bytearrays (whose size the C unpickler allocates up front)
REFUSED_OPCODES = frozenset({"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID",
                             "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"})
_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


class _Sealed:
    """Stand-ins the pickle cannot modify: a BUILD opcode aimed at them fails (no __dict__, no setattr)."""
    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def _init(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)


class StorageType(_Sealed):
    """Stand-in for ``torch.<Type>Storage``: only the element dtype."""
    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self._init(name=name, dtype=np.dtype(STORAGE_DTYPES[name]))


class StorageRef(_Sealed):
    """A storage named in a persistent id; ``array`` is filled (by us) once its bytes are read."""
    __slots__ = ("key", "dtype", "numel", "array")

    def __init__(self, key, storage_type, numel):
        self._init(key=key, dtype=storage_type.dtype, numel=numel, array=None)

    def set_array(self, array):
        object.__setattr__(self, "array", array)


class TensorRef(_Sealed):
    """What ``_rebuild_tensor_v2`` was asked to build: a strided view of a storage."""
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self._init(storage=storage, offset=offset, size=size, stride=stride)


class _BadTensor(ValueError):
    """A tensor description that makes no sense; ``_unpickle`` adds the file's name."""


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _BadTensor(f"tensor {what} must be a tuple of non-negative ints, got {ascii(value)[:80]}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, StorageRef):
        raise _BadTensor(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise _BadTensor(f"tensor storage offset {ascii(storage_offset)[:40]} is not a non-negative int")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise _BadTensor(f"tensor size {size} and stride {stride} differ in length")
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, TensorRef):
        raise _BadTensor(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a plain tensor state dict needs (module docstring).

    ``storages`` collects the storages named by persistent ids, by key.
    """

    def __init__(self, file, source, storages):
        super().__init__(file, encoding="utf-8")
        self.source = source
        self.storages = storages

    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise PretrainedError(f"{self.source}: refused to load: the file's pickle asks for the global "
                              f"{module}.{name}, which a plain tensor state dict never needs "
                              "(an altered or unsafe file?)")

    def persistent_load(self, pid):
        # legacy: ('storage', type, key, location, numel, view_metadata); zip: the first five
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise PretrainedError(f"{self.source}: unexpected persistent id {ascii(pid)[:80]} (not a tensor storage)")
        if len(pid) == 6 and pid[5] is not None:
            raise PretrainedError(f"{self.source}: storage views (torch < 0.4 files) are not supported")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = StorageRef(key, storage_type, numel)
        elif ref.dtype != storage_type.dtype or ref.numel != numel:
            raise PretrainedError(f"{self.source}: storage {key!r} is declared twice with different "
                                  "types or sizes")
        return ref


def _brief(exc):
    """One printable line about an exception raised by malformed data (its text may hold raw bytes)."""
    return f"{type(exc).__name__}: {ascii(str(exc))[1:-1][:80]}"


def _scan_pickle(data, start, source):
    """End offset of the pickle starting at ``data[start]``, after checking its opcodes (not run)."""
    stream = io.BytesIO(data)
    stream.seek(start)
    count, end = 0, None
    try:
        for opcode, arg, pos in pickletools.genops(stream):
            count += 1
            if opcode.name in REFUSED_OPCODES:
                raise PretrainedError(f"{source}: refused to load: its pickle uses the {opcode.name} opcode, "
                                      "which a plain tensor state dict never needs (an altered or unsafe file?)")
            if opcode.name in _MEMO_OPCODES and int(arg) > count:
                raise PretrainedError(f"{source}: refused to load: its pickle uses memo index {arg} after "
                                      f"{count} opcodes (a crafted file?)")
            end = pos
    except PretrainedError:
        raise
    except Exception as exc:   # truncated data, unknown opcode, bad argument
        raise PretrainedError(f"{source}: not a readable PyTorch checkpoint ({_brief(exc)})") from None
    if end is None:
        raise PretrainedError(f"{source}: not a readable PyTorch checkpoint (no pickle at byte {start})")
    return end + 1


def _unpickle(data, start, source, storages):
    """-> (object, end offset) of the pickle at ``data[start]``: scanned, then restricted-unpickled."""
    end = _scan_pickle(data, start, source)
    try:
        return RestrictedUnpickler(io.BytesIO(data[start:end]), source, storages).load(), end
    except PretrainedError:
        raise
    except _BadTensor as exc:
        raise PretrainedError(f"{source}: {exc}") from None
    except Exception as exc:   # wrong argument types or counts for the allowed callables, ...
        raise PretrainedError(f"{source}: not a readable PyTorch checkpoint ({_brief(exc)})") from None


def _materialise(obj, source):
    """Replace every TensorRef in nested dicts / lists / tuples by a numpy array (a copy)."""
    if isinstance(obj, TensorRef):
        flat = obj.storage.array
        if flat is None:
            raise PretrainedError(f"{source}: storage {obj.storage.key!r} has no data in the file")
        if 0 in obj.size:
            return np.zeros(obj.size, flat.dtype)
        last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
        if last >= flat.size:
            raise PretrainedError(f"{source}: a tensor of size {obj.size} reads past the end of storage "
                                  f"{obj.storage.key!r} ({flat.size} elements)")
        view = np.lib.stride_tricks.as_strided(flat[obj.offset:], shape=obj.size,
                                               strides=[s * flat.itemsize for s in obj.stride],
                                               writeable=False)
        return np.array(view)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, source)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, source) for v in obj)
    return obj


def _read_legacy(data, source):
    storages = {}
    magic, pos = _unpickle(data, 0, source, storages)
    if magic != LEGACY_MAGIC:
        raise PretrainedError(f"{source}: not a PyTorch checkpoint (no zip archive, no legacy magic number)")
    protocol, pos = _unpickle(data, pos, source, storages)
    if protocol != LEGACY_PROTOCOL:
        raise PretrainedError(f"{source}: legacy PyTorch protocol {ascii(protocol)[:40]} is not supported "
                              f"(only {LEGACY_PROTOCOL})")
    sys_info, pos = _unpickle(data, pos, source, storages)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise PretrainedError(f"{source}: only little-endian legacy checkpoints are supported")
    obj, pos = _unpickle(data, pos, source, storages)
    keys, pos = _unpickle(data, pos, source, storages)
    if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            or len(keys) != len(storages) or set(keys) != set(storages)):
        raise PretrainedError(f"{source}: the storage key list does not match the storages the "
                              "object refers to")
    for key in keys:
        ref = storages[key]
        if pos + 8 > len(data):
            raise PretrainedError(f"{source}: truncated: storage {key!r} is missing")
        numel = int.from_bytes(data[pos:pos + 8], "little")
        if numel != ref.numel:
            raise PretrainedError(f"{source}: storage {key!r} holds {numel} elements, the pickle "
                                  f"declared {ref.numel}")
        nbytes = numel * ref.dtype.itemsize
        blob = data[pos + 8:pos + 8 + nbytes]
        if len(blob) != nbytes:
            raise PretrainedError(f"{source}: truncated: storage {key!r} has {len(blob)} of {nbytes} bytes")
        ref.set_array(np.frombuffer(blob, ref.dtype.newbyteorder("<")))
        pos += 8 + nbytes
    return _materialise(obj, source)


def _read_zip(path, source):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise PretrainedError(f"{source}: damaged zip archive ({exc})") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise PretrainedError(f"{source}: a PyTorch zip checkpoint has exactly one <folder>/data.pkl; "
                                  f"found {len(pickles)}")
        folder = pickles[0][:-len("data.pkl")]
        byteorder = "little"
        if folder + "byteorder" in names:
            with archive.open(folder + "byteorder") as member:
                byteorder = member.read(16).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise PretrainedError(f"{source}: unknown byteorder {byteorder!r}")
        storages = {}
        with archive.open(pickles[0]) as member:     # bounded reads: a zip member may be a zip bomb
            pickled = member.read(MAX_PICKLE_BYTES + 1)
        if len(pickled) > MAX_PICKLE_BYTES:
            raise PretrainedError(f"{source}: {pickles[0]} is over {MAX_PICKLE_BYTES >> 20} MB, no state dict's pickle")
        obj, _ = _unpickle(pickled, 0, source, storages)
        for key, ref in storages.items():
            member = f"{folder}data/{key}"
            if member not in names:
                raise PretrainedError(f"{source}: storage {key!r} has no member {member}")
            nbytes = ref.numel * ref.dtype.itemsize
            with archive.open(member) as stream:
                data = stream.read(nbytes)
            if len(data) < nbytes:
                raise PretrainedError(f"{source}: {member} has {len(data)} bytes, {nbytes} expected")
            order = "<" if byteorder == "little" else ">"
            ref.set_array(np.frombuffer(data[:nbytes], ref.dtype.newbyteorder(order)).astype(ref.dtype))
    return _materialise(obj, source)


def read_torch_checkpoint(path, source=None):
    """The object of a PyTorch checkpoint file with every tensor as a numpy array (module docstring).

    ``source`` names the file in error messages (default: the path). Raises ``PretrainedError``.
    """
    source = source or path
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path, source)
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise PretrainedError(f"{source}: cannot read ({exc.strerror or exc})") from None
    # damaged zip members: bad CRC / deflate data, unsupported compression, encryption
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise PretrainedError(f"{source}: damaged zip archive ({_brief(exc)})") from None
    return _read_legacy(data, source)


def read_torch_state_dict(path, source=None):
    """An ``OrderedDict`` name -> numpy array from a PyTorch state-dict file.

    Accepts a bare state dict or a dict holding one under ``state_dict`` / ``model``; every value of
    the state dict must be a tensor.
    """
    source = source or path
    obj = read_torch_checkpoint(path, source)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise PretrainedError(f"{source}: holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise PretrainedError(f"{source}: state dict entry {bad[0]!r} is not a named tensor")
    return collections.OrderedDict(obj)
