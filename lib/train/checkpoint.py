"""Atomic checkpoints with exact resume and keep-last-N pruning.

A checkpoint of epoch E is three files in ``out_dir``:
  <prefix>-EEEE.params  network parameters (``net.save_parameters``: structured names)
  <prefix>-EEEE.states  optimizer state as npz (momentum/moments per parameter name + update counters)
  <prefix>-EEEE.json    epoch, iteration, lr, RNG states, user extras -- written LAST
Every file is written to a temporary name and moved into place with ``os.replace``; the JSON goes last,
so a checkpoint interrupted half-way is never found by ``latest()``. What a crash cannot explain (a
truncated .params, a JSON that is not JSON, an unreadable .states: a disk that filled up, a copy cut
short) is a ``CorruptCheckpointError``: resuming from the latest checkpoint then falls back to the
newest one that loads, and says so (``CheckpointManager.load``). ``remove_stale_temporaries`` deletes
the temporary files an interrupted writer left behind.

The optimizer state is stored in npz + JSON instead of ``Trainer.save_states`` because MXNet pickles
those (the project uses no pickle). MXNet's random generator cannot be read back: the training loop
reseeds mx/np/random from (seed, epoch) at the start of every epoch, which is what makes resume exact.
"""
import glob
import json
import logging
import os
import random
import re
import zipfile

import mxnet as mx
import numpy as np

from lib.errors import UserError
from lib.fileio import atomic_open, atomic_save, atomic_write_json, stale_temporaries, temporary_pid

FORMAT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the network / trainer."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file exists but cannot be read (truncated, not JSON / npz / .params)."""


log = logging.getLogger("lib.train.checkpoint")


def model_sidecar(model_path):
    """The JSON written beside a model file (a demo's default model: classes, config, network, ...)."""
    return os.path.splitext(model_path)[0] + ".json"


def read_model_sidecar(model_path, expected_keys=("classes", "config")):
    """The sidecar's content, or {} when there is none; a malformed one is a CheckpointError naming it."""
    path = model_sidecar(model_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            meta = json.load(f)
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); delete it to retrain the default model") from None
    if not isinstance(meta, dict):
        keys = " and ".join(f"'{k}'" for k in expected_keys)
        raise CheckpointError(f"{path}: expected a JSON object with {keys}")
    return meta


def structured_param_names(net):
    """{id(Parameter): structured name} as ``net.save_parameters`` writes them."""
    return {id(p): name for name, p in net._collect_params_with_prefix().items()}


def rng_state():
    """Python and numpy global RNG states as JSON-able data."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"python": [py_version, list(py_state), py_gauss],
            "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)]}


def set_rng_state(state):
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss,
                         np_gauss))


# ---------------------------------------------------------------------------------------------
# Optimizer state <-> npz

def _trainer_updaters(trainer):
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._update_on_kvstore:
        raise CheckpointError("optimizer state lives in the kvstore (update_on_kvstore=True); "
                              "create the Trainer with update_on_kvstore=False to checkpoint it")
    return trainer._updaters


def _flatten_state(state, key, arrays):
    """Nested optimizer state (None / NDArray / tuple) -> JSON structure + arrays dict."""
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        arrays[key] = state.asnumpy()
        return {"array": key}
    if isinstance(state, (tuple, list)):
        return {"tuple" if isinstance(state, tuple) else "list":
                [_flatten_state(s, f"{key}/{i}", arrays) for i, s in enumerate(state)]}
    raise CheckpointError(f"cannot checkpoint optimizer state of type {type(state).__name__}")


def _unflatten_state(spec, arrays, ctx, source):
    if spec is None:
        return None
    if "array" in spec:
        if spec["array"] not in arrays:
            raise CheckpointError(f"{source}: array {spec['array']!r} is missing")
        return mx.nd.array(arrays[spec["array"]], ctx=ctx, dtype=arrays[spec["array"]].dtype)
    kind = "tuple" if "tuple" in spec else "list"
    items = [_unflatten_state(s, arrays, ctx, source) for s in spec[kind]]
    return tuple(items) if kind == "tuple" else items


def save_trainer_states(trainer, path, names_by_id):
    """Write the optimizer state of ``trainer`` to ``path`` (npz; structure as JSON inside)."""
    updater = _trainer_updaters(trainer)[0]
    optimizer = trainer._optimizer
    index_to_name = {i: names_by_id.get(id(p), p.name) for i, p in enumerate(trainer._params)}
    arrays, states = {}, {}
    for index, state in updater.states.items():
        name = index_to_name[index]
        states[name] = _flatten_state(state, f"s{index}", arrays)
    counts = {str(dev): {index_to_name[i]: int(c) for i, c in per_dev.items()}
              for dev, per_dev in optimizer._all_index_update_counts.items()}
    meta = {"format": FORMAT_VERSION, "optimizer": type(optimizer).__name__.lower(),
            "num_update": int(optimizer.num_update), "index_update_counts": counts,
            "states": states}
    arrays["__meta__"] = np.array(json.dumps(meta))
    with atomic_open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def load_trainer_states(trainer, path, names_by_id):
    """Restore what ``save_trainer_states`` wrote into ``trainer`` (matching by parameter name)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"optimizer state file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise CorruptCheckpointError(f"{path}: not a readable optimizer state file (npz): {err}") from None
    if "__meta__" not in arrays:
        raise CorruptCheckpointError(f"{path}: not an optimizer state file (no __meta__ entry)")
    try:
        meta = json.loads(str(arrays.pop("__meta__")))
    except ValueError as err:
        raise CorruptCheckpointError(f"{path}: its __meta__ entry is not JSON ({err})") from None
    optimizer = trainer._optimizer
    saved_opt, this_opt = meta["optimizer"], type(optimizer).__name__.lower()
    if saved_opt is None:  # a weights-only checkpoint: the optimizer starts fresh
        return
    if saved_opt != this_opt:
        raise CheckpointError(f"{path}: saved with optimizer '{saved_opt}' but the trainer uses "
                              f"'{this_opt}'")
    name_to_index = {names_by_id.get(id(p), p.name): i for i, p in enumerate(trainer._params)}
    unknown = sorted(set(meta["states"]) - set(name_to_index))
    if unknown:
        raise CheckpointError(f"{path}: optimizer state for parameters the trainer does not train: "
                              f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    for updater, ctx in zip(_trainer_updaters(trainer), trainer._contexts):
        states = {}
        for name, spec in meta["states"].items():
            index = name_to_index[name]
            state = _unflatten_state(spec, arrays, ctx, path)
            expected = trainer._params[index].shape
            first = state[0] if isinstance(state, (tuple, list)) and state else state
            if isinstance(first, mx.nd.NDArray) and expected and 0 not in expected \
                    and first.shape != tuple(expected):
                raise CheckpointError(f"{path}: optimizer state of '{name}' has shape {first.shape}, "
                                      f"parameter has {tuple(expected)}")
            states[index] = state
        updater.states = states
        updater.states_synced = dict.fromkeys(states, True)
    optimizer.num_update = meta["num_update"]
    optimizer._all_index_update_counts = {
        int(dev): {name_to_index[n]: c for n, c in per_dev.items()}
        for dev, per_dev in meta["index_update_counts"].items()} or {0: {}}
    optimizer._all_index_update_counts.setdefault(0, {})
    optimizer._index_update_count = optimizer._all_index_update_counts[0]


# ---------------------------------------------------------------------------------------------
# Parameters

def read_params_file(path, error=None):
    """{name: NDArray} of an MXNet ``.params`` file; ``error`` (default CheckpointError; an unreadable
    file: CorruptCheckpointError) names the file when it is missing, unreadable or an unnamed array list."""
    if not path or not os.path.isfile(path):
        raise (error or CheckpointError)(f"parameter file not found: {path}")
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        size = os.path.getsize(path)
        what = "an empty file" if size == 0 else f"{size} bytes: truncated, or not an MXNet .params file"
        raise (error or CorruptCheckpointError)(f"{path}: cannot read parameters ({what}; MXNet says: "
                                                f"{_first_line(err)})") from None
    error = error or CheckpointError
    if not isinstance(loaded, dict):
        raise error(f"{path}: holds an unnamed array list, not network parameters")
    return loaded


def _first_line(err):
    """MXNet's own message without the C++ stack trace around it ('Check failed: ...')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("MXNetError:"):
            return line[len("MXNetError:"):].strip()
    lines = [line for line in lines if not line.startswith(("Traceback", "File ", "Stack trace", "["))]
    return lines[0] if lines else type(err).__name__


def check_params_file(net, path):
    """Raise CheckpointError naming ``path`` if its names/shapes do not match ``net``."""
    loaded = read_params_file(path)
    expected = net._collect_params_with_prefix()
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    wrong = []
    for name in sorted(set(expected) & set(loaded)):
        want = expected[name].shape
        got = loaded[name].shape
        # Deferred-initialisation shapes hold 0 for unknown dimensions.
        if want and (len(want) != len(got) or any(w not in (0, g) for w, g in zip(want, got))):
            wrong.append(f"{name}: file {got} vs network {tuple(want)}")
    problems = []
    if missing:
        problems.append(f"missing in file: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"not in network: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
    if problems:
        raise CheckpointError(f"{path} does not match the network ({type(net).__name__}): "
                              + " | ".join(problems))


def load_matching_parameters(net, path):
    """Fine-tuning start: load every parameter of ``path`` whose structured name and shape match one
    of ``net`` (e.g. an SSDLite model into LSTM-SSD, an R-FCN model into FGFA); the others keep
    their initialisation. Returns (loaded names, names left at their init)."""
    saved = read_params_file(path)
    loaded, skipped = [], []
    for name, param in net._collect_params_with_prefix().items():
        if name in saved and saved[name].shape == param.shape:
            param.set_data(saved[name])
            loaded.append(name)
        else:
            skipped.append(name)
    if not loaded:
        raise CheckpointError(f"{path}: no parameter matches the network ({type(net).__name__}) by name and shape")
    return loaded, skipped


class CheckpointManager:
    """Save / find / load / prune checkpoints in ``out_dir``.

    ``keep_last``: how many checkpoints to keep (older ones are deleted after each save);
    0 or None keeps all.
    """

    def __init__(self, out_dir, keep_last=3, prefix="ckpt"):
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", prefix):
            raise ValueError(f"checkpoint prefix must be a plain file name part, got {prefix!r}")
        self.out_dir = out_dir
        self.keep_last = keep_last
        self.prefix = prefix

    def paths(self, epoch):
        stem = os.path.join(self.out_dir, f"{self.prefix}-{int(epoch):04d}")
        return {"params": stem + ".params", "states": stem + ".states", "json": stem + ".json"}

    def list_epochs(self):
        """Epochs with a complete checkpoint (JSON + params + states), ascending."""
        epochs = []
        pattern = re.compile(re.escape(self.prefix) + r"-(\d+)\.json$")
        for path in glob.glob(os.path.join(self.out_dir, f"{self.prefix}-*.json")):
            match = pattern.search(os.path.basename(path))
            if not match:
                continue
            epoch = int(match.group(1))
            if all(os.path.isfile(p) for p in self.paths(epoch).values()):
                epochs.append(epoch)
        return sorted(epochs)

    def latest(self):
        """Path of the newest complete checkpoint's JSON, or None."""
        epochs = self.list_epochs()
        return self.paths(epochs[-1])["json"] if epochs else None

    def save(self, epoch, net, trainer=None, extra=None, iteration=None, lr=None):
        """Write the checkpoint of ``epoch`` (number of finished epochs); returns the JSON path."""
        os.makedirs(self.out_dir, exist_ok=True)   # here, not before: reading a folder creates nothing
        paths = self.paths(epoch)
        atomic_save(paths["params"], net.save_parameters)
        names = structured_param_names(net)
        if trainer is not None:
            save_trainer_states(trainer, paths["states"], names)
        else:  # keep the three-file layout: an empty state file
            with atomic_open(paths["states"], "wb") as f:
                np.savez(f, __meta__=np.array(json.dumps({"format": FORMAT_VERSION, "optimizer": None,
                                                          "num_update": 0, "index_update_counts": {},
                                                          "states": {}})))
        record = {"format": FORMAT_VERSION, "epoch": int(epoch),
                  "iteration": None if iteration is None else int(iteration),
                  "lr": None if lr is None else float(lr),
                  "rng": rng_state(), "params": os.path.basename(paths["params"]),
                  "states": os.path.basename(paths["states"]), "extra": extra or {}}
        atomic_write_json(paths["json"], record)
        self.prune()
        return paths["json"]

    def prune(self):
        if not self.keep_last or self.keep_last <= 0:
            return
        for epoch in self.list_epochs()[:-self.keep_last]:
            paths = self.paths(epoch)
            # JSON first: a partly deleted checkpoint must never look complete.
            for key in ("json", "params", "states"):
                if os.path.exists(paths[key]):
                    os.remove(paths[key])

    def read(self, checkpoint=None):
        """The JSON record of ``checkpoint`` (epoch number, JSON path, or None = latest)."""
        path = self._resolve(checkpoint)
        try:
            with open(path, "r", encoding="utf-8") as f:
                record = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            where = f"at line {err.lineno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else f"({err})"
            raise CorruptCheckpointError(f"{path}: invalid JSON {where}") from None
        if not isinstance(record, dict):
            raise CorruptCheckpointError(f"{path}: not a checkpoint record (a JSON {type(record).__name__})")
        for key in ("epoch", "params", "states"):
            if key not in record:
                raise CorruptCheckpointError(f"{path}: key '{key}' is missing")
        record["path"] = path
        return record

    @staticmethod
    def params_of(record):
        """The .params path of a checkpoint record (``read``)."""
        return os.path.join(os.path.dirname(record["path"]), record["params"])

    def _resolve(self, checkpoint):
        if checkpoint is None:
            path = self.latest()
            if path is None:
                raise CheckpointError(f"no complete checkpoint '{self.prefix}-*.json' in {self.out_dir}")
            return path
        if isinstance(checkpoint, int):
            path = self.paths(checkpoint)["json"]
        else:
            path = str(checkpoint)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint file not found: {path}")
        return path

    def load(self, net, trainer=None, checkpoint=None, ctx=None, restore_rng=True, warn=None):
        """Load parameters (and optimizer state, RNG state) of ``checkpoint`` (None = latest).

        Returns the JSON record (epoch, iteration, lr, extra, path; ``skipped``: the newer checkpoints
        that could not be read). Raises CheckpointError naming the file when it is missing or does not
        match the network's parameter names/shapes. With ``checkpoint=None`` a latest checkpoint that
        cannot be read (CorruptCheckpointError: truncated .params, bad JSON, unreadable .states) falls
        back to the newest one that loads, and ``warn`` (default: this module's logger) says so; when
        none loads, the newest one's error is raised.
        """
        if checkpoint is not None:
            return self._load_one(net, trainer, checkpoint, ctx, restore_rng)
        warn = warn or log.warning
        epochs = self.list_epochs()
        if not epochs:
            self._resolve(None)                 # raises "no complete checkpoint"
        failures = []
        for epoch in reversed(epochs):
            try:
                record = self._load_one(net, trainer, epoch, ctx, restore_rng)
            except CorruptCheckpointError as err:
                failures.append(err)
                continue
            if failures:
                warn(f"the latest checkpoint{'s' if len(failures) > 1 else ''} cannot be read, resuming from epoch "
                     f"{record['epoch']} ({record['path']}) instead: " + "; ".join(str(e) for e in failures))
            record["skipped"] = [str(e) for e in failures]
            return record
        others = "; ".join(str(e) for e in failures[1:])
        raise CorruptCheckpointError(f"{failures[0]} (and no earlier checkpoint in {self.out_dir} can be read"
                                     + (f": {others})" if others else ")"))

    def remove_stale_temporaries(self, warn=None):
        """Delete the temporary files (``*.tmp<pid>*``, lib.fileio) that interrupted writers left in
        ``out_dir``; a file of a process that is still running is kept. Returns the removed paths."""
        removed = []
        for path in stale_temporaries(self.out_dir):
            pid = temporary_pid(path)
            if pid is not None and pid != os.getpid() and _process_alive(pid):
                continue
            try:
                os.remove(path)
            except OSError:
                continue
            removed.append(path)
        if removed:
            names = ", ".join(os.path.basename(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
            (warn or log.warning)(f"removed {len(removed)} temporary file(s) an interrupted run left in "
                                  f"{self.out_dir}: {names}")
        return removed

    def _load_one(self, net, trainer, checkpoint, ctx, restore_rng):
        record = self.read(checkpoint)
        folder = os.path.dirname(record["path"])
        params_path = os.path.join(folder, record["params"])
        check_params_file(net, params_path)
        if ctx is None:
            ctx = _net_context(net)
        net.load_parameters(params_path, ctx=ctx)
        if trainer is not None:
            load_trainer_states(trainer, os.path.join(folder, record["states"]),
                                structured_param_names(net))
        if restore_rng and "rng" in record:
            set_rng_state(record["rng"])
        return record


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def params_path(path):
    """A run folder (its newest checkpoint), a checkpoint JSON or a .params file -> the .params path."""
    if os.path.isdir(path):
        return CheckpointManager.params_of(CheckpointManager(path).read())
    if path.endswith(".json"):
        return CheckpointManager.params_of(CheckpointManager(os.path.dirname(os.path.abspath(path))).read(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"parameter file not found: {path}")
    return path


def load_weights(net, path, ctx=None):
    """Trained weights into ``net`` from a run folder, a checkpoint JSON or a .params file, checked first:
    a missing, unreadable or other network's file is a CheckpointError naming the file and parameter."""
    params = params_path(path)
    check_params_file(net, params)
    net.load_parameters(params, ctx=ctx if ctx is not None else _net_context(net))
    return params


def _net_context(net):
    for param in net.collect_params().values():
        try:
            return param.list_ctx()
        except RuntimeError:  # deferred initialisation: no context yet
            continue
    return mx.cpu()
