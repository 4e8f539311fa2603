"""What a trainer needs to run on several devices and several workers with MXNet's kvstore.

MXNet does the communication: kvstore ``device`` sums the gradients of several contexts in one
process; ``dist_sync`` / ``dist_device_sync`` (ps-lite parameter server) sum them over worker
processes, started by ``python -m lib.tools.launch``. Nothing here reduces gradients itself; this
module holds the pieces around it:

- ``parse_contexts``: ``CONTEXTS`` config values -> list of ``mx.Context``.
- ``split_batch``: one batch over several contexts (arrays, per-sample lists, tuples of both).
- ``create_kvstore`` + ``DistributedInfo`` (``join_job`` makes both): the kvstore of the job and this
  worker's rank in it, ``is_chief`` (rank 0: the only one that writes the run folder, checkpoints, logs,
  TensorBoard, evaluation),
  ``sync_start`` (every worker starts from rank 0's parameters; call before the first step),
  ``broadcast_from_chief`` (rank 0's arrays to every worker), ``check_same_on_all`` (e.g. every
  rank resumed from rank 0's checkpoint), ``allreduce_sum`` (a few numbers summed over the workers),
  ``average_statistics`` (BatchNorm running statistics averaged over every worker and context);
  ``mark_finished`` at the normal end of a worker.
- ``shard``: each worker's part of the training set, reshuffled every epoch from the seed.
- ``effective_batch_size`` / ``scale_learning_rate``: the batch the optimizer sees and the LR rule.
- ``Watchdog``: bounds every wait of a worker, so a dead peer ends the job with a message instead of
  a process blocked forever in ps-lite.

Gradient scale: a kvstore SUMS the gradients of the contexts and of the workers. If every context's
loss is the mean over its own slice of the batch, the sum is ``num_contexts * num_workers`` times the
gradient of the mean over the whole effective batch, so the trainer updates with
``trainer.update(num_contexts * num_workers)`` (or normalises each loss by the effective batch and
updates with 1).
"""
import atexit
import contextlib
import ctypes
import math
import os
import re
import sys
import threading
import time
import weakref

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..config import ConfigError
from ..errors import UserError

# Keys this module gives the kvstore. gluon.Trainer numbers its parameters 0..P-1 on the same
# kvstore, so ours start above any parameter count. They must stay below 2**31 / 9973: ps-lite's
# kvstore picks a key's server as (key * 9973) % num_servers in a C int, and a larger key overflows
# to a negative server index (with 2+ servers the job then trains on corrupted values).
BROADCAST_KEY_BASE = 100_000
BROADCAST_KEY_LIMIT = (2 ** 31 - 1) // 9973
# exit code of a worker whose Watchdog fired (as GNU timeout)
WATCHDOG_EXIT_CODE = 124
LR_SCALING_RULES = ("none", "linear", "sqrt")


class DistributedError(UserError, RuntimeError):
    """The workers of a job disagree (e.g. resumed from different checkpoints)."""


# ----------------------------------------------------------------------------------------------
# contexts and batches

_CONTEXT_ITEM = re.compile(r"^(cpu|gpu)(?:\((\d+)\)|:(\d+))?$")


def parse_contexts(value, key="CONTEXTS", check_available=True):
    """A config value naming devices -> list of mx.Context.

    Accepted: a Context, ``"cpu"``, ``"gpu:1"``, ``"gpu(1)"``, ``"[gpu(0), gpu(1)]"``,
    ``"gpu:0,gpu:1"`` and lists of those strings (``["cpu(0)", "cpu(1)"]``). Several CPU contexts
    are allowed (MXNet runs them as separate devices on the same cores; useful for tests).
    ``check_available``: a GPU index this MXNet cannot see is an error (CPU wheel: no GPU at all).
    Raises ConfigError naming ``key`` and the value.
    """
    def bad(why):
        return ConfigError(f"{key}: {why} (got {value!r}); expected e.g. 'cpu', 'gpu:1', '[gpu(0), gpu(1)]' "
                           f"or a list of 'cpu(N)' / 'gpu(N)'")

    if isinstance(value, mx.Context):
        items = [value]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = [part.strip() for part in text.split(",")]
        if items == [""]:
            items = []
        if any(not part for part in items):
            raise bad("an empty entry")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise bad(f"a {type(value).__name__} is not a device list")
    if not items:
        raise bad("no device listed")
    contexts = []
    for item in items:
        if isinstance(item, mx.Context):
            ctx = item
        elif isinstance(item, str):
            match = _CONTEXT_ITEM.match(item.strip().replace(" ", ""))
            if not match:
                raise bad(f"{item!r} is not a device")
            index = match.group(2) or match.group(3) or "0"
            ctx = mx.Context(match.group(1), int(index))
        else:
            raise bad(f"{item!r} is not a device")
        if ctx in contexts:
            raise bad(f"{ctx} is listed twice")
        contexts.append(ctx)
    if check_available:
        gpus = [c for c in contexts if c.device_type == "gpu"]
        if gpus:
            visible = mx.context.num_gpus()
            missing = [str(c) for c in gpus if c.device_id >= visible]
            if missing:
                raise bad(f"{', '.join(missing)} requested but this MXNet sees {visible} GPU(s)"
                          + ("; the CPU wheel has none: install mxnet-cu112" if visible == 0 else ""))
    return contexts


def _split_bounds(size, num_parts, even_split):
    """[start, stop) of each part, as MXNet 1.9's gluon.utils.split_data cuts: sizes differ by at
    most one, the first ``size % num_parts`` parts one larger (uneven only if ``even_split`` is False)."""
    if num_parts < 1:
        raise ValueError(f"cannot split over {num_parts} contexts")
    if size < num_parts:
        raise ValueError(f"a batch of {size} sample(s) cannot be split over {num_parts} contexts: "
                         f"use a batch of at least one sample per context")
    if even_split and size % num_parts:
        raise ValueError(f"a batch of {size} samples cannot be split evenly over {num_parts} contexts "
                         f"(even_split=True)")
    each, extras = divmod(size, num_parts)
    stops = np.cumsum([each + 1] * extras + [each] * (num_parts - extras)).tolist()
    return list(zip([0] + stops[:-1], stops))


def _batch_len(field, batch_axis):
    if isinstance(field, (mx.nd.NDArray, np.ndarray)):
        return field.shape[batch_axis]
    if isinstance(field, list):
        return len(field)
    raise TypeError(f"cannot split a {type(field).__name__} over contexts: pass an NDArray, a numpy "
                    f"array, a list of per-sample items or a tuple of those")


def _split_field(field, bounds, ctxs, batch_axis, even_split):
    if isinstance(field, mx.nd.NDArray):
        return gluon.utils.split_and_load(field, ctxs, batch_axis=batch_axis, even_split=even_split)
    if isinstance(field, np.ndarray):
        index = [slice(None)] * field.ndim
        parts = []
        for start, stop in bounds:
            index[batch_axis] = slice(start, stop)
            parts.append(field[tuple(index)])
        return parts
    return [field[start:stop] for start, stop in bounds]


def split_batch(batch, ctxs, batch_axis=0, even_split=True):
    """One batch over ``ctxs`` -> a list with one part per context.

    - ``mx.nd.NDArray``: ``gluon.utils.split_and_load`` (each part on its context).
    - ``numpy.ndarray``: numpy slices (kept on the host: e.g. boxes from which targets are computed
      on the CPU; wrap in ``mx.nd.array`` first to get them loaded onto the contexts).
    - ``list``: per-sample items (video clips, records, variable-length boxes): contiguous
      sub-lists, the items untouched.
    - ``tuple``: fields of one batch (e.g. ``(images, im_info, boxes, labels)``): every field cut at
      the same sample boundaries; each part is a tuple of the fields' parts.
    Parts are cut as gluon cuts them: equal sizes, or with ``even_split=False`` sizes that differ by
    at most one (the first parts larger); every context gets at least one sample. ``batch_axis``
    applies to arrays; lists are always cut along their length.
    """
    ctxs = list(ctxs) if isinstance(ctxs, (list, tuple)) else [ctxs]
    fields = list(batch) if isinstance(batch, tuple) else [batch]
    if not fields:
        raise ValueError("cannot split an empty tuple")
    sizes = {_batch_len(f, batch_axis if not isinstance(f, list) else 0) for f in fields}
    if len(sizes) != 1:
        raise ValueError(f"the fields of the batch have different batch sizes {sorted(sizes)}")
    bounds = _split_bounds(sizes.pop(), len(ctxs), even_split)
    split = [_split_field(f, bounds, ctxs, batch_axis, even_split) for f in fields]
    if isinstance(batch, tuple):
        return [tuple(parts[i] for parts in split) for i in range(len(ctxs))]
    return split[0]


# ----------------------------------------------------------------------------------------------
# the job: kvstore, rank

def is_distributed_kvstore(kvstore):
    """True for ps-lite kvstores (``dist_sync``, ``dist_device_sync``, ... or such a KVStore)."""
    kind = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", None)
    return isinstance(kind, str) and kind.startswith("dist")


def launched_workers():
    """How many workers the launcher started this process among (1 when not launched)."""
    if os.environ.get("DMLC_ROLE") != "worker":
        return 1
    try:
        return int(os.environ.get("DMLC_NUM_WORKER", "1"))
    except ValueError:
        return 1


def create_kvstore(kind, key="TRAIN.KVSTORE"):
    """The kvstore for ``gluon.Trainer(..., kvstore=...)``.

    ``dist_*``: creates the ps-lite kvstore (joins the job; needs the environment of
    ``python -m lib.tools.launch``). ps-lite allows one kvstore per process: the first call creates it,
    later calls with the same kind return that same object (a family asks for its rank before
    training, the Trainer then trains on it).
    Anything else (``device``, ``local``, None): returned unchanged; gluon.Trainer builds it.
    Raises ConfigError naming ``key`` when the kind and the way the process was started disagree.
    """
    if not is_distributed_kvstore(kind):
        workers = launched_workers()
        if workers > 1:
            raise ConfigError(f"{key} = {kind!r}, but this process was started as one of {workers} workers "
                              f"(DMLC_NUM_WORKER): set {key}: dist_sync (or dist_device_sync)")
        return kind
    if "async" in kind:
        raise ConfigError(f"{key} = {kind!r}: asynchronous kvstores update on the servers, which "
                          f"cannot be checkpointed; use dist_sync or dist_device_sync")
    if os.environ.get("DMLC_ROLE") != "worker":
        raise ConfigError(f"{key} = {kind!r} needs a job started by the launcher: "
                          f"python -m lib.tools.launch -n WORKERS -s SERVERS -- <this command>")
    existing = _JOB["kvstore"]
    if existing is not None:
        if existing.type != kind:
            raise ConfigError(f"{key} = {kind!r}, but this process already joined its job with a "
                              f"{existing.type} kvstore (one per process)")
        return existing
    try:
        kvstore = mx.kv.create(kind)
    except mx.base.MXNetError as err:
        raise ConfigError(f"{key} = {kind!r}: MXNet cannot create it: {str(err).strip().splitlines()[-1]}") from None
    _JOB["kvstore"], _JOB["finished"] = kvstore, False
    if not _JOB["atexit"]:
        atexit.register(_leave_without_barrier_unless_finished)
        _JOB["atexit"] = True
    return kvstore


def join_job(kind, contexts=None, key="TRAIN.KVSTORE"):
    """This process's place in the training job of kvstore ``kind`` (TRAIN.KVSTORE): a DistributedInfo
    on ``create_kvstore(kind)``. Call it before writing anything: ``is_chief`` says whether this
    process writes the run folder (rank 0 of a distributed job, or a single process)."""
    return DistributedInfo(create_kvstore(kind, key=key), contexts)


# The dist kvstore of this process, and whether the job's work ended normally (mark_finished).
# "next_key": the next free kvstore key of this process's broadcasts and sums (every DistributedInfo
# on the kvstore takes its keys from it: two taking the same key would re-initialise it on the servers,
# which in sync mode waits for pushes that never come).
_JOB = {"kvstore": None, "finished": False, "atexit": False, "next_key": BROADCAST_KEY_BASE}


def mark_finished():
    """Say that this worker's part of the job ended normally: at exit its kvstore then waits at
    ps-lite's final barrier for the other workers, and rank 0 stops the servers (MXNet's normal end).
    Call it after training on every rank. Without it (an exception, sys.exit(2) on a config error)
    the process leaves without that barrier: otherwise a failing worker would block in its exit,
    waiting for workers that wait for it, and nobody would see it fail."""
    _JOB["finished"] = True


def _leave_without_barrier_unless_finished():
    kvstore = _JOB["kvstore"]
    if kvstore is not None and not _JOB["finished"]:
        mx.base.check_call(mx.base._LIB.MXKVStoreSetBarrierBeforeExit(kvstore.handle, ctypes.c_int(0)))


class DistributedInfo:
    """This worker's place in the job.

    ``rank`` comes from the kvstore: ps-lite's scheduler assigns it when the workers connect, so it
    need not equal the launcher's worker index (DMLC_WORKER_ID, the prefix of its output lines).
    Without a distributed kvstore: rank 0 of 1.
    """

    def __init__(self, kvstore=None, contexts=None):
        self.kvstore = kvstore
        self.distributed = is_distributed_kvstore(kvstore) and not isinstance(kvstore, str)
        if is_distributed_kvstore(kvstore) and isinstance(kvstore, str):
            raise ValueError(f"pass the KVStore object of create_kvstore({kvstore!r}), not its name")
        self.rank = int(kvstore.rank) if self.distributed else 0
        self.num_workers = int(kvstore.num_workers) if self.distributed else 1
        self.contexts = list(contexts) if contexts else [mx.cpu()]
        self.launch_index = os.environ.get("DMLC_WORKER_ID")
        self._sum_keys = {}

    @classmethod
    def from_kvstore(cls, kvstore, contexts=None):
        return cls(kvstore, contexts)

    @property
    def is_chief(self):
        """Rank 0: writes checkpoints, logs, TensorBoard, runs evaluation."""
        return self.rank == 0

    @property
    def kind(self):
        if self.kvstore is None or isinstance(self.kvstore, str):
            return self.kvstore
        return self.kvstore.type

    def describe(self):
        where = ", ".join(str(c) for c in self.contexts)
        if not self.distributed:
            return f"single worker, kvstore {self.kind!r}, contexts [{where}]"
        return (f"rank {self.rank} of {self.num_workers} workers (kvstore {self.kind}, launch index "
                f"{self.launch_index}), contexts [{where}]")

    def _keys(self, count):
        """Fresh kvstore keys, unique in this process (every rank takes them in the same order)."""
        first = _JOB["next_key"]
        keys = list(range(first, first + count))
        _JOB["next_key"] = first + count
        if first + count > BROADCAST_KEY_LIMIT:
            raise DistributedError(f"out of kvstore keys: broadcasts used {first + count - BROADCAST_KEY_BASE} "
                                   f"arrays (at most {BROADCAST_KEY_LIMIT - BROADCAST_KEY_BASE}); broadcast fewer, "
                                   f"larger arrays")
        return keys

    def broadcast_from_chief(self, arrays):
        """Overwrite ``arrays`` in place with rank 0's values on every worker (a collective: every
        worker calls it with arrays of the same shapes in the same order). Each entry is an NDArray
        or a list of NDArrays (one value, several copies: e.g. a parameter on every context; the
        first copy is rank 0's value). No-op without a distributed kvstore. Uses the kvstore's own
        init (rank 0 pushes, all wait at a barrier) and pull; each call takes fresh keys, and the
        servers keep one copy of what was broadcast.

        Arrays of another type than float32 travel as their bytes, in 16-bit pieces held by float32
        numbers (exact): MXNet 1.9.1's server never initialises its ``multi_precision_`` flag, and in
        a server process where that memory happens to be non-zero it keeps every key of another type
        in float32 (a float64 value came back rounded to float32 in whole series of jobs here)."""
        if not self.distributed or not arrays:
            return
        groups = [a if isinstance(a, (list, tuple)) else [a] for a in arrays]
        carriers = [group if group[0].dtype == np.float32 else [mx.nd.array(_bytes_as_float32(group[0]))]
                    for group in groups]
        keys = self._keys(len(groups))
        self.kvstore.init(keys, [carrier[0] for carrier in carriers])
        self.kvstore.pull(keys, out=[list(carrier) for carrier in carriers])
        for group, carrier in zip(groups, carriers):
            if carrier is not group:
                value = _float32_as_array(carrier[0].asnumpy(), group[0].dtype, group[0].shape)
                for array in group:
                    array[:] = mx.nd.array(value, ctx=array.context, dtype=array.dtype)
            for array in group:
                array.wait_to_read()

    def allreduce_sum(self, name, values):
        """The sum over every worker of ``values`` (a few numbers; a collective: every worker calls it
        with the same ``name`` and size at the same point). One kvstore key per name, taken at the first
        call and reused (push sums the workers' values on the servers, pull reads the sum back).
        Without a distributed kvstore: ``values`` themselves."""
        values = np.asarray(values, dtype=np.float32).ravel()
        if not self.distributed:
            return values
        array = mx.nd.array(values)
        if name not in self._sum_keys:
            self._sum_keys[name] = self._keys(1)[0]
            self.kvstore.init(self._sum_keys[name], mx.nd.zeros_like(array))
        key = self._sum_keys[name]
        self.kvstore.push(key, array)
        out = mx.nd.zeros_like(array)
        self.kvstore.pull(key, out=out)
        return out.asnumpy()

    def average_statistics(self, block):
        """Set the running statistics of ``block`` (the parameters declared ``differentiable=False``:
        BatchNorm's running mean and variance) on every worker and context to their mean over all
        the workers' contexts. A collective: every worker calls it at the same point.

        Why: BatchNorm normalises each device's slice of the batch with that slice's statistics and
        keeps its own running averages. One process with several contexts saves the MEAN of its
        contexts' copies (MXNet's ``save_parameters`` reduces a parameter over its contexts); in a job
        rank 0 alone saves, and without this its checkpoint would hold only its own workers' share.
        The running averages are linear in the batch statistics, so averaging at an epoch's end and
        going on gives the same mean as averaging only when saving. No-op without a distributed
        kvstore."""
        if not self.distributed:
            return
        stats, seen = [], set()
        for name, param in sorted(block._collect_params_with_prefix().items()):
            if param._differentiable or param._data is None or id(param) in seen:
                continue
            seen.add(id(param))
            stats.append(param)
        if not stats:
            return
        # each worker's sum over its contexts, summed over the workers, / (workers x contexts)
        local = [np.sum(np.stack([d.asnumpy().astype(np.float32) for d in p.list_data()]), axis=0) for p in stats]
        copies = float(self.allreduce_sum("running_statistics_copies", [len(self.contexts)])[0])
        total = self.allreduce_sum("running_statistics", np.concatenate([a.ravel() for a in local]))
        offset = 0
        for param, array in zip(stats, local):
            mean = (total[offset:offset + array.size] / np.float32(copies)).reshape(array.shape)
            offset += array.size
            for data in param.list_data():
                data[:] = mx.nd.array(mean, ctx=data.context, dtype=data.dtype)
        for param in stats:
            for data in param.list_data():
                data.wait_to_read()

    def broadcast_parameters(self, block_or_params):
        """Every parameter of a Block (or a ParameterDict / {name: Parameter}) set to rank 0's
        values on every worker and context, including those the Trainer does not train (BatchNorm
        running statistics, frozen layers): call once after initialising or loading, before the
        first step. Deferred (not yet shaped) parameters are an error: run one forward pass first."""
        if not self.distributed:
            return
        if isinstance(block_or_params, gluon.Block):
            params = block_or_params._collect_params_with_prefix()
        else:
            params = block_or_params
        seen, groups = set(), []
        for name in sorted(params):
            param = params[name]
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param._deferred_init:
                raise DistributedError(f"parameter {name} has no shape yet: run one forward pass before "
                                       f"broadcasting")
            groups.append(param)
        _fresh_default_layout(groups)   # the dist kvstore cannot send oneDNN-layout weights (sync_start)
        self.broadcast_from_chief([param.list_data() for param in groups])

    def sync_start(self, trainer, block=None):
        """Make every worker start from rank 0's state; call after building (or resuming) the
        net and the Trainer, before the first forward pass, on every rank.

        1. The Trainer's kvstore is initialised now and its parameters broadcast from rank 0 (and
           waited for). gluon.Trainer would do it lazily inside its first step(), where the pull of
           rank 0's weights and the first push of gradients use the same kvstore key with no order
           between them: in 4 of about 25 two-worker dist_sync runs here a worker then ended with
           the summed gradients as its weights.
        2. With ``block``: its parameters the Trainer does not hold (BatchNorm running statistics,
           frozen layers) are broadcast from rank 0 too (``broadcast_from_chief``).
        3. (distributed only) every parameter is first copied into fresh arrays: after a forward pass
           outside autograd (a model materialised with a tiny input, an evaluation) MXNet's CPU
           convolution keeps its weights in oneDNN's blocked layout, which the dist kvstore cannot
           send ("We can't generate TBlob for MKLDNN data"). The copies are exact.
        Deferred (not yet shaped) parameters are an error: run one forward pass first.
        """
        pending = [p.name for p in trainer._params if p._deferred_init]
        if pending:
            raise DistributedError(f"parameters without a shape yet ({', '.join(pending[:5])}): run one "
                                   f"forward pass before sync_start")
        if self.distributed:
            params = list(trainer._params)
            if block is not None:
                params += list(block._collect_params_with_prefix().values())
            _fresh_default_layout(params)
        if not trainer._kv_initialized:
            trainer._init_kvstore()
        if trainer._params_to_init:
            trainer._init_params()
        for param in trainer._params:
            for array in param.list_data():
                array.wait_to_read()
        if block is not None and self.distributed:
            held = {id(p) for p in trainer._params}
            others = {name: p for name, p in block._collect_params_with_prefix().items() if id(p) not in held}
            self.broadcast_parameters(others)

    def values_of_chief(self, values):
        """Rank 0's ``values`` (a few numbers; a collective, the same size on every worker) as a
        float64 numpy array; without a distributed kvstore ``values`` themselves."""
        mine = np.asarray(values, dtype=np.float64).ravel()
        if not self.distributed:
            return mine
        chief = mx.nd.array(mine, dtype=np.float64)
        self.broadcast_from_chief([chief])
        return chief.asnumpy()

    def check_same_on_all(self, values, what):
        """Raise DistributedError on a worker whose ``values`` (a few numbers, e.g. the resumed
        epoch and iteration) differ from rank 0's. Returns rank 0's values (as floats)."""
        mine = np.asarray(values, dtype=np.float64).ravel()
        chief = self.values_of_chief(mine)
        if not np.array_equal(chief, mine):
            def show(values):
                return "[" + ", ".join(f"{v:g}" for v in values) + "]"
            raise DistributedError(f"rank {self.rank}: {what} is {show(mine)} here but {show(chief)} on rank 0")
        return chief.tolist()

    def barrier(self):
        """Wait until every worker gets here (ps-lite barrier; unbounded: run it under a Watchdog)."""
        if self.distributed:
            self.kvstore._barrier()

    def watchdog(self, timeout, what="training step"):
        """A started ``Watchdog`` naming this rank (see there)."""
        return Watchdog(timeout, what=what, label=f"rank {self.rank}" if self.distributed else "worker").start()


def _bytes_as_float32(array):
    """The bytes of an NDArray as 16-bit unsigned integers held by float32 numbers (all exact)."""
    raw = array.asnumpy().tobytes()
    if len(raw) % 2:
        raw += b"\0"
    return np.frombuffer(raw, dtype=np.uint16).astype(np.float32)


def _float32_as_array(pieces, dtype, shape):
    """Inverse of _bytes_as_float32: the numpy array of ``dtype`` and ``shape``."""
    raw = np.asarray(pieces).astype(np.uint16).tobytes()
    count = int(np.prod(shape)) if len(shape) else 1
    return np.frombuffer(raw[:count * np.dtype(dtype).itemsize], dtype=dtype).reshape(shape)


def _fresh_default_layout(params):
    """Copy each parameter's data into new arrays in MXNet's default layout (Parameter.reset_ctx
    re-creates them from one copy; through a single context first, because with several it would
    average the copies, which need not give back the same float)."""
    seen = set()
    for param in params:
        if id(param) in seen or param._data is None:
            continue
        seen.add(id(param))
        ctxs = param.list_ctx()
        if len(ctxs) > 1:
            param.reset_ctx(ctxs[0])
        param.reset_ctx(ctxs)


# ----------------------------------------------------------------------------------------------
# data sharding, batch and learning rate

def _shard_seed(seed, epoch):
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2 ** 32)


def deal_batches(order, batch_size, rank, num_workers):
    """This worker's batches of an epoch: ``order`` (the epoch's sample order, the same on every worker)
    cut into batches of ``batch_size``, dealt out in turn (worker r: batches r, r + W, ...), so one
    step of the W workers trains on ``order``'s next W x batch_size samples, as one step of a single
    process with W times the batch. Equal steps on every worker (dist_sync waits for all): the order is
    first extended by its own first samples to a multiple of W x batch_size (fewer than that many
    samples of the epoch are seen twice). Returns a list of index arrays."""
    order = np.asarray(order).ravel()
    if not len(order):
        raise ValueError("cannot deal out an empty epoch")
    step = int(batch_size) * int(num_workers)
    padding = -len(order) % step
    if padding:
        order = np.concatenate([order, np.resize(order, padding)])
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return batches[rank::num_workers]


def config_contexts(cfg):
    """The contexts a config trains on: CONTEXTS when it lists several, else CONTEXT."""
    listed = cfg.get("CONTEXTS")
    if listed:
        return parse_contexts(listed, key="CONTEXTS")
    return parse_contexts(cfg.get("CONTEXT") or "cpu", key="CONTEXT")


def shard(indices_or_n, rank, num_workers, seed, epoch):
    """This worker's part of the training set for ``epoch`` (np.int64 array).

    Every worker draws the same permutation of the whole set from (seed, epoch) and takes every
    ``num_workers``-th element of it starting at ``rank``, so the shards are disjoint, their union
    is the whole set, and they change every epoch. Padding: the shards have equal sizes
    ``ceil(n / num_workers)`` (dist_sync needs the same number of steps on every worker), so when
    n is not a multiple of num_workers the permutation is extended by its FIRST
    ``ceil(n / num_workers) * num_workers - n`` elements (fewer than num_workers samples of the
    epoch, different ones each epoch, are seen twice, by different workers).
    ``indices_or_n``: an int n (indices 0..n-1) or the indices (e.g. of the usable samples).
    """
    if isinstance(indices_or_n, (int, np.integer)):
        indices = np.arange(int(indices_or_n), dtype=np.int64)
    else:
        indices = np.asarray(indices_or_n, dtype=np.int64).ravel()
    if not (isinstance(num_workers, (int, np.integer)) and num_workers >= 1):
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if not (isinstance(rank, (int, np.integer)) and 0 <= rank < num_workers):
        raise ValueError(f"rank must be in [0, {num_workers}), got {rank!r}")
    n = len(indices)
    if n == 0:
        raise ValueError("cannot shard an empty training set")
    order = indices[np.random.RandomState(_shard_seed(seed, epoch)).permutation(n)]
    per_worker = -(-n // num_workers)
    padding = per_worker * num_workers - n
    order = np.concatenate([order, np.resize(order, padding)]) if padding else order
    return order[rank::num_workers].copy()


def effective_batch_size(per_context, num_contexts=1, num_workers=1):
    """Samples per optimizer step over the whole job."""
    for name, value in (("per_context", per_context), ("num_contexts", num_contexts),
                        ("num_workers", num_workers)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(per_context) * int(num_contexts) * int(num_workers)


def scale_learning_rate(base_lr, base_batch, effective_batch, rule="linear"):
    """The learning rate for ``effective_batch`` when ``base_lr`` was tuned for ``base_batch``.

    ``linear``: base_lr * effective / base (Goyal et al. 2017, "Accurate, Large Minibatch SGD":
    pair it with a warm-up when the factor is large); ``sqrt``: base_lr * sqrt(effective / base)
    (adaptive optimizers); ``none``: base_lr.
    """
    if rule not in LR_SCALING_RULES:
        raise ValueError(f"LR scaling rule must be one of {LR_SCALING_RULES}, got {rule!r}")
    if base_batch < 1 or effective_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got base {base_batch}, effective {effective_batch}")
    ratio = effective_batch / base_batch
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr


def describe_scaling(base_lr, base_batch, per_context, num_contexts, num_workers, rule="linear"):
    """(lr, one log line) for the trainer: effective batch and the LR it leads to."""
    batch = effective_batch_size(per_context, num_contexts, num_workers)
    lr = scale_learning_rate(base_lr, base_batch, batch, rule)
    line = (f"effective batch {batch} = {per_context} per context x {num_contexts} context(s) x "
            f"{num_workers} worker(s); LR {lr:.6g} ({rule} scaling of {base_lr:g} tuned for batch {base_batch})")
    return lr, line


# ----------------------------------------------------------------------------------------------
# bounded waits

class Watchdog:
    """Ends this process when no progress was reported for ``timeout`` seconds.

    A worker blocked in ps-lite (a peer or server died, the network is gone) cannot be interrupted
    from Python; this thread prints one line saying what was being waited for and calls
    ``os._exit(WATCHDOG_EXIT_CODE)``, so the launcher (or the user's shell) sees the job end.
    ``kick()`` after every step; ``phase(what, timeout)`` for a longer wait with its own bound (the
    non-chief ranks waiting while rank 0 evaluates). ``timeout`` 0 or None disables it.
    """

    def __init__(self, timeout, what="training step", label="worker", stream=None,
                 exit_code=WATCHDOG_EXIT_CODE):
        self.timeout = float(timeout or 0)
        self.what = what
        self.label = label
        self.stream = stream
        self.exit_code = exit_code
        self._lock = threading.Lock()
        self._deadline = None
        self._current_timeout = self.timeout
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self.timeout > 0 and self._thread is None:
            self.kick()
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()
            _RUNNING_WATCHDOGS.add(self)
        return self

    def kick(self, what=None):
        with self._lock:
            if what is not None:
                self.what = what
            self._deadline = time.monotonic() + self.timeout
            self._current_timeout = self.timeout

    @contextlib.contextmanager
    def phase(self, what, timeout=None):
        """Bound one wait by ``timeout`` seconds (default: the watchdog's), then go back to steps."""
        previous = self.what
        with self._lock:
            self.what = what
            self._current_timeout = float(timeout if timeout is not None else self.timeout)
            self._deadline = time.monotonic() + self._current_timeout
        try:
            yield self
        finally:
            self.kick(previous)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        _RUNNING_WATCHDOGS.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        while not self._stop.wait(0.2):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what, waited = self.what, self._current_timeout
            if late:
                stream = self.stream or sys.stderr
                stream.write(f"{self.label}: no progress for {waited:g} s during {what}: a worker or "
                             f"server of the job has died or is stuck; ending this process "
                             f"(exit {self.exit_code})\n")
                stream.flush()
                os._exit(self.exit_code)


# A daemon thread still alive when the interpreter finalizes is ended with pthread_exit, which
# aborts the process through MXNet's C++ frames ("terminate called without an active exception",
# SIGABRT instead of the worker's exit code): stop every watchdog before that.
_RUNNING_WATCHDOGS = weakref.WeakSet()


@atexit.register
def _stop_watchdogs():
    for watchdog in list(_RUNNING_WATCHDOGS):
        watchdog.stop()
