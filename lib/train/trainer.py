"""The training loop every detector (and the FlowNet pre-training and the LSTM-SSD policy) trains through.

``Trainer(task, data, cfg, out_dir, ...).train()`` runs the steps; what happens around them is a list
of hooks (``Hook``: before_train / before_epoch / after_step / after_epoch / after_train), in the
spirit of detectron2's ``engine/train_loop.py`` + ``engine/hooks.py``:

    NonFiniteGuard   stop with a TrainingError naming the step when the loss or gradient is not finite
    LogHook          train.log / console lines every LOG_EVERY steps and per epoch; history points
    ProgressHook     a tqdm bar per epoch (PROGRESS)
    TensorBoardHook  tensorboardX scalars in OUT/tb (purged past the resumed step)
    ValidationHook   val_fn every EVAL_EVERY epochs and at the end; best.params for BEST_METRIC
    CheckpointHook   atomic checkpoints every CHECKPOINT_EVERY epochs (and the last), history.json,
                     loss_curve.png

The task: ``task.net`` (initialised Block) and ``task.loss(batch) -> (loss, {name: float})``, where
``loss`` is a scalar NDArray or a list of them, one per context, whose SUM is the loss of the batch.
The data: ``data(epoch) -> iterable of batches``; the trainer reseeds python / numpy / MXNet from
(SEED, epoch) before calling it, so an epoch is a pure function of the seed (exact resume).

Several devices and workers (lib.train.distributed; MXNet's kvstore does the communication):
- ``contexts`` (CONTEXTS): the task splits each batch over them; the kvstore ``device`` sums the
  gradients.
- TRAIN.KVSTORE ``dist_sync`` / ``dist_device_sync``: one process per worker (started by
  ``python -m lib.tools.launch``). The epoch's batches are dealt out in turn, worker r taking
  batches r, r + W, r + 2W, ... (``data(epoch)`` must return an object with ``shard(rank, workers)``,
  which the families' data do, equal step counts on every worker), so one step of the job trains on the
  same samples as one step of a single process with W times the batch split over W contexts. Rank 0
  alone writes (OUTPUT_DIR itself, checkpoints, logs, TensorBoard) and runs the validation; every rank
  resumes from the checkpoint in OUTPUT_DIR (a shared filesystem) and checks that the others resumed
  the same epoch; at every epoch's end the BatchNorm running statistics are averaged over the workers
  (DistributedInfo.average_statistics: rank 0's checkpoint then holds what a single process with all
  the contexts saves); at the end the workers check that their trained parameters are identical.
  The gradient of a step is the sum over workers: a task whose loss is normalised over the whole job
  (``task.global_normalization``, e.g. M2Det's positives counted over every worker) updates with 1,
  any other with the number of workers (the mean of the workers' per-batch means).
"""
import json
import math
import os
import time

import mxnet as mx
import numpy as np
import tqdm
from mxnet import autograd, gluon

from ..config import ConfigError, dump_config, to_plain
from ..fileio import atomic_save, atomic_write_json
from .checkpoint import CheckpointManager, structured_param_names
from .distributed import DistributedError, DistributedInfo, create_kvstore, describe_scaling, mark_finished
from .logger import setup_logger
from .loop import (TrainingError, build_trainer, prepare_params, seed_everything, training_config,
                   write_loss_curve)
from .schedule import build_lr_schedule


class Hook:
    """Something done around the steps; every method is optional and gets the Trainer."""

    def before_train(self, trainer):
        pass

    def before_epoch(self, trainer):
        pass

    def after_step(self, trainer):
        pass

    def after_epoch(self, trainer):
        pass

    def after_train(self, trainer):
        pass

    def close(self, trainer):
        """Always called at the end (also after an exception): release files, bars, writers."""


class NonFiniteGuard(Hook):
    def after_step(self, trainer):
        loss = trainer.values["loss"]
        if not math.isfinite(loss):
            raise TrainingError(
                f"loss is {loss} at epoch {trainer.epoch + 1}, iteration {trainer.batch_index - 1} of the epoch "
                f"(global iteration {trainer.iteration - 1}), lr {trainer.lr:g}; parts: "
                f"{ {k: v for k, v in trainer.values.items() if k != 'loss'} }")
        norm = trainer.values.get("grad_norm")
        if norm is not None and not math.isfinite(norm):
            raise TrainingError(f"gradient norm is {norm} at epoch {trainer.epoch + 1}, iteration "
                                f"{trainer.batch_index - 1} of the epoch (global iteration {trainer.iteration - 1})")


class LogHook(Hook):
    """Loss windows every LOG_EVERY steps (log lines and history points), epoch means, validation."""

    def before_epoch(self, trainer):
        self.window, self.count, self.started = {}, 0, time.time()

    def after_step(self, trainer):
        for key, value in trainer.values.items():
            self.window[key] = self.window.get(key, 0.0) + value
        self.count += 1
        if self.count == trainer.cfg["LOG_EVERY"]:
            self._flush(trainer, log=True)

    def _flush(self, trainer, log):
        means = {k: v / self.count for k, v in self.window.items()}
        trainer.history["points"].append({"iteration": trainer.iteration, "epoch": trainer.epoch + 1, "losses": means})
        trainer.emit_scalars({f"train/{k}": v for k, v in means.items()}, trainer.iteration)
        trainer.emit_scalars({"train/lr": trainer.lr}, trainer.iteration)
        if log:
            speed = trainer.steps_this_epoch / max(time.time() - self.started, 1e-9)
            trainer.logger.info("epoch %d iter %d%s lr %.3g %s (%.2f it/s)", trainer.epoch + 1, trainer.batch_index,
                                f"/{trainer.num_batches}" if trainer.num_batches else "", trainer.lr,
                                " ".join(f"{k} {v:.4f}" for k, v in means.items()), speed)
        self.window, self.count = {}, 0

    def after_epoch(self, trainer):
        if self.count:        # the tail of the epoch still gets a point on the curve
            self._flush(trainer, log=False)
        trainer.logger.info("epoch %d done in %.1fs: %s", trainer.epoch + 1, trainer.epoch_seconds,
                            " ".join(f"{k} {v:.4f}" for k, v in trainer.epoch_means.items()))


class ProgressHook(Hook):
    def __init__(self):
        self.bar = None

    def before_epoch(self, trainer):
        self.bar = tqdm.tqdm(total=trainer.num_batches, desc=f"epoch {trainer.epoch + 1}/{trainer.cfg['EPOCHS']}",
                             dynamic_ncols=True, leave=False)

    def after_step(self, trainer):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{trainer.values['loss']:.4f}", lr=f"{trainer.lr:.2e}", refresh=False)

    def after_epoch(self, trainer):
        self.close(trainer)

    def close(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoardHook(Hook):
    def __init__(self):
        self.writer = None

    def before_train(self, trainer):
        from tensorboardX import SummaryWriter   # optional at import time of the library
        # purge_step drops events a crashed run logged after the checkpoint we resume from
        self.writer = SummaryWriter(os.path.join(trainer.out_dir, "tb"),
                                    purge_step=trainer.iteration if trainer.start_epoch else None)
        trainer.scalar_sinks.append(self.writer.add_scalar)

    def after_epoch(self, trainer):
        self.writer.flush()

    def close(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ValidationHook(Hook):
    """``val_fn(net, epoch) -> {metric: value}`` every EVAL_EVERY epochs and after the last; with
    BEST_METRIC the best epoch's parameters are kept in best.params (+ best.json)."""

    def __init__(self, val_fn):
        self.val_fn = val_fn

    def after_epoch(self, trainer):
        cfg, epoch = trainer.cfg, trainer.epoch + 1
        if not (trainer.last_epoch or (cfg["EVAL_EVERY"] and epoch % cfg["EVAL_EVERY"] == 0)):
            return
        metrics = {k: float(v) for k, v in (self.val_fn(trainer.net, epoch) or {}).items()}
        trainer.val_metrics = metrics
        trainer.history["val"].append({"epoch": epoch, "metrics": metrics})
        trainer.emit_scalars({f"val/{k}": v for k, v in metrics.items()}, epoch)
        trainer.logger.info("epoch %d validation: %s", epoch, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if cfg["BEST_METRIC"]:
            self._save_if_best(trainer, cfg["BEST_METRIC"], epoch)

    def _save_if_best(self, trainer, metric, epoch):
        scores = [(v["metrics"][metric], v["epoch"]) for v in trainer.history["val"] if metric in v["metrics"]]
        if not scores or scores[-1][1] != epoch:
            raise TrainingError(f"BEST_METRIC '{metric}' is not among the metrics val_fn returned at "
                                f"epoch {epoch}: {sorted(trainer.history['val'][-1]['metrics'])}")
        value = scores[-1][0]
        if any(previous >= value for previous, _ in scores[:-1]):
            return
        path = os.path.join(trainer.out_dir, "best.params")
        atomic_save(path, trainer.net.save_parameters)
        atomic_write_json(os.path.join(trainer.out_dir, "best.json"),
                          {"epoch": epoch, "metric": metric, "value": value, "params": "best.params"})
        trainer.logger.info("new best %s %.4f at epoch %d: saved %s", metric, value, epoch, path)


class CheckpointHook(Hook):
    def after_epoch(self, trainer):
        epoch = trainer.epoch + 1
        if trainer.last_epoch or epoch % trainer.cfg["CHECKPOINT_EVERY"] == 0:
            path = trainer.manager.save(epoch, trainer.net, trainer.trainer, iteration=trainer.iteration,
                                        lr=trainer.lr, extra={"history": trainer.history, "seed": trainer.cfg["SEED"]})
            trainer.logger.info("saved checkpoint %s", path)
        atomic_write_json(os.path.join(trainer.out_dir, "history.json"), trainer.history)
        write_loss_curve(trainer.history, os.path.join(trainer.out_dir, "loss_curve.png"))


def _as_float(value, what):
    if isinstance(value, mx.nd.NDArray):
        return float(value.sum().asscalar())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"task.loss returned a non-numeric {what}: {value!r}") from None


def _contexts(ctx):
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


class Trainer:
    """Train ``task.net`` (see the module docstring). ``ctx``: a context or the list of contexts the
    task splits its batches over; ``hooks``: more Hooks, run after the default ones."""

    def __init__(self, task, data, cfg, out_dir, ctx=None, val_fn=None, resume=True, logger=None, hooks=(),
                 kvstore=None):
        self.cfg = training_config(cfg)
        self.task, self.data, self.out_dir, self.resume = task, data, out_dir, resume
        self.net = task.net
        self.contexts = _contexts(ctx)
        self.kvstore = kvstore if kvstore is not None else create_kvstore(self.cfg["KVSTORE"], key="TRAIN.KVSTORE")
        self.dist = DistributedInfo(self.kvstore, self.contexts)
        if self.dist.is_chief:
            os.makedirs(out_dir, exist_ok=True)
            self.logger = logger or setup_logger(out_dir, "train")
        else:   # other ranks: console only (the launcher prefixes their lines)
            self.logger = logger or setup_logger(None, f"train.rank{self.dist.rank}")
        self.params = prepare_params(self.net, self.cfg)
        self.base_lr = self.cfg["LR"]
        batch = max(int(self.cfg["BATCH_SIZE"]), len(self.contexts))
        lr, self.scaling_line = describe_scaling(self.base_lr, batch, batch // len(self.contexts),
                                                 len(self.contexts), self.dist.num_workers, self.cfg["LR_SCALING"])
        self.lr_scale = lr / self.base_lr if self.base_lr else 1.0
        self.trainer = build_trainer(self.params, self.cfg, kvstore=self.kvstore)
        self.manager = CheckpointManager(out_dir, keep_last=self.cfg["KEEP_LAST"])
        self.history = {"points": [], "epochs": [], "val": [], "epoch_ends": []}
        self.start_epoch, self.iteration, self.epoch = 0, 0, 0
        self.epoch_means = {}
        self.val_metrics = {}
        self.values, self.lr = {}, self.base_lr
        self.scalar_sinks = []
        self.hooks = [NonFiniteGuard()]
        if self.dist.is_chief:
            self.hooks.append(LogHook())
            if self.cfg["PROGRESS"]:
                self.hooks.append(ProgressHook())
            self.hooks.append(TensorBoardHook())
            if val_fn is not None:
                self.hooks.append(ValidationHook(val_fn))
            self.hooks.append(CheckpointHook())
        self.hooks.extend(hooks)
        self.update_scale = 1 if getattr(task, "global_normalization", False) else self.dist.num_workers
        if hasattr(task, "set_distributed"):
            task.set_distributed(self.dist)

    # ---- pieces the hooks use --------------------------------------------------------------------
    def emit_scalars(self, scalars, step):
        for sink in self.scalar_sinks:
            for key, value in scalars.items():
                sink(key, value, step)

    @property
    def last_epoch(self):
        return self.epoch + 1 == self.cfg["EPOCHS"]

    def _call(self, name):
        for hook in self.hooks:
            getattr(hook, name)(self)

    # ---- the loop -------------------------------------------------------------------------------
    def _resume(self):
        if self.resume and self.dist.is_chief:
            # what an interrupted run's writers left (*.tmp<pid>): never read, only in the way
            self.manager.remove_stale_temporaries(warn=self.logger.warning)
        latest = self.manager.latest()
        if not self.resume and latest and self.dist.is_chief:
            # starting over would interleave new and old checkpoints (and prune the new ones)
            raise TrainingError(f"{self.out_dir} already holds checkpoints (latest {latest}) and resume is off: "
                                f"delete them or train into another folder")
        if self.resume and latest:
            # a latest checkpoint that cannot be read falls back to the newest one that can (logged)
            record = self.manager.load(self.net, self.trainer, ctx=self.contexts, warn=self.logger.warning)
            self.start_epoch = record["epoch"]
            self.iteration = record["iteration"] or 0
            self.history = record.get("extra", {}).get("history", self.history)
            self.logger.info("resumed from %s (epoch %d, iteration %d)", record["path"], self.start_epoch,
                             self.iteration)
        self.dist.check_same_on_all([self.start_epoch, self.iteration],
                                    "the resumed (epoch, iteration): every worker must see rank 0's checkpoints "
                                    "in OUTPUT_DIR (a shared filesystem)")

    def train(self):
        """Run the epochs; returns {epochs, start_epoch, iterations, final_losses, val, wall_time,
        checkpoint, out_dir, rank, workers} (``rank`` 0 is the process that wrote OUTPUT_DIR)."""
        self._resume()
        if self.dist.is_chief:
            dump_config(self.cfg, os.path.join(self.out_dir, "train_config.yaml"))
        all_params = {id(p) for p in self.net._collect_params_with_prefix().values()}
        self.logger.info("training %d parameter arrays (%d others frozen or statistics) with %s on %s; %s; config %s",
                         len(self.params), len(all_params) - len(self.params), self.cfg["OPTIMIZER"],
                         self.dist.describe(), self.scaling_line, json.dumps(to_plain(self.cfg), sort_keys=True))
        self.dist.sync_start(self.trainer, self.net)
        started = time.time()
        self.epoch_means = self.history["epochs"][-1]["losses"] if self.history["epochs"] else {}
        self.val_metrics = self.history["val"][-1]["metrics"] if self.history["val"] else {}
        self._names = structured_param_names(self.net)
        self._warned_stale = False
        schedule = None
        try:
            self._call("before_train")
            for self.epoch in range(self.start_epoch, self.cfg["EPOCHS"]):
                seed_everything(self.cfg["SEED"], self.epoch)
                batches = self.data(self.epoch)
                if self.dist.distributed:
                    if not hasattr(batches, "shard"):
                        raise ConfigError("TRAIN.KVSTORE: this training data cannot be split over workers "
                                          "(its epochs have no shard())")
                    batches = batches.shard(self.dist.rank, self.dist.num_workers)
                try:
                    self.num_batches = len(batches)
                except TypeError:
                    self.num_batches = self.cfg["ITERS_PER_EPOCH"] or None
                if schedule is None:
                    schedule = build_lr_schedule(self.cfg, iters_per_epoch=self.num_batches)
                    self.logger.info("lr schedule: %r", schedule)
                self.sums, self.steps_this_epoch = {}, 0
                epoch_start = time.time()
                self._call("before_epoch")
                for self.batch_index, batch in enumerate(batches, 1):
                    self.lr = schedule(self.iteration) * self.lr_scale
                    self.step(batch)
                    self._call("after_step")
                if self.steps_this_epoch == 0:
                    raise TrainingError(f"data({self.epoch}) yielded no batch")
                self.epoch_means = {k: v / self.steps_this_epoch for k, v in self.sums.items()}
                self.epoch_seconds = time.time() - epoch_start
                self.history["epochs"].append({"epoch": self.epoch + 1, "losses": self.epoch_means,
                                               "seconds": self.epoch_seconds})
                self.history["epoch_ends"].append(self.iteration)
                self.emit_scalars({f"epoch/{k}": v for k, v in self.epoch_means.items()}, self.epoch + 1)
                self.dist.average_statistics(self.net)    # before rank 0 validates and saves
                self._call("after_epoch")
            self._call("after_train")
        finally:
            for hook in self.hooks:
                hook.close(self)
        if self.dist.distributed:
            self._check_workers_agree()
        wall = time.time() - started
        if self.start_epoch >= self.cfg["EPOCHS"]:
            self.logger.info("nothing to do: checkpoint epoch %d >= EPOCHS %d", self.start_epoch, self.cfg["EPOCHS"])
        summary = {"epochs": self.cfg["EPOCHS"], "start_epoch": self.start_epoch, "iterations": self.iteration,
                   "final_losses": self.epoch_means, "val": self.val_metrics, "wall_time": wall,
                   "checkpoint": self.manager.latest(), "out_dir": self.out_dir,
                   "rank": self.dist.rank, "workers": self.dist.num_workers}
        self.logger.info("training finished: %s", json.dumps(summary, sort_keys=True))
        mark_finished()
        return summary

    def step(self, batch):
        """One optimizer step on ``batch``: forward + backward (recorded), gradients summed over the
        contexts and workers, clipped, applied. Sets ``self.values`` (float losses, grad_norm)."""
        self.trainer.set_learning_rate(self.lr)
        with autograd.record():
            output = self.task.loss(batch)
            if not (isinstance(output, tuple) and len(output) == 2):
                raise TrainingError(f"task.loss(batch) must return (loss, {{name: float}}), got {type(output).__name__}")
            loss, parts = output
        losses = loss if isinstance(loss, (list, tuple)) else [loss]
        autograd.backward(losses)
        values = {"loss": sum(_as_float(l, "loss") for l in losses)}
        for key, value in (parts or {}).items():
            if key != "loss":   # the total is computed here
                values[key] = _as_float(value, f"loss part '{key}'")
        if math.isfinite(values["loss"]):
            self.trainer.allreduce_grads()
            fresh = [p for p in self.params.values() if p.list_data()[0]._fresh_grad]
            if not self._warned_stale and len(fresh) < len(self.params):
                stale = sorted(set(self.params) - {self._names.get(id(p), p.name) for p in fresh})
                self.logger.warning("%d trained parameters got no gradient in the first iteration "
                                    "(not used by the loss?): %s", len(stale), stale[:10])
            self._warned_stale = True
            if self.cfg["CLIP_GRAD_NORM"] > 0 and fresh:
                values["grad_norm"] = self._clip(fresh)
            if math.isfinite(values.get("grad_norm", 0.0)):
                self.trainer.update(self.update_scale, ignore_stale_grad=True)
        self.values = values
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps_this_epoch += 1
        self.iteration += 1

    def _clip(self, fresh):
        """Clip the global L2 norm of the summed gradients (on every context alike); returns the norm."""
        norm = None
        for device in range(len(fresh[0].list_grad())):
            grads = [p.list_grad()[device] for p in fresh]
            if self.update_scale != 1:     # the norm of the gradient of the mean over the workers
                for g in grads:
                    g /= self.update_scale
            device_norm = gluon.utils.clip_global_norm(grads, self.cfg["CLIP_GRAD_NORM"], check_isfinite=False)
            if self.update_scale != 1:
                for g in grads:
                    g *= self.update_scale
            if norm is None:
                norm = float(device_norm.asscalar())
        return norm

    def _check_workers_agree(self):
        """Every worker must end with rank 0's trained parameters (compared by their sums)."""
        names = list(self.params)
        digest = np.array([p.data().asnumpy().astype(np.float64).sum() for p in self.params.values()])
        chief = self.dist.values_of_chief(digest)
        differ = [i for i in range(len(names)) if digest[i] != chief[i]]
        if differ:
            examples = ", ".join(f"{names[i]} (sum {digest[i]:.9g} here, {chief[i]:.9g} on rank 0)" for i in differ[:3])
            raise DistributedError(f"rank {self.dist.rank}: after training {len(differ)} of {len(names)} trained "
                                   f"parameter arrays differ from rank 0's, e.g. {examples}")


def fit(task, data, cfg, out_dir, ctx=None, val_fn=None, resume=True, logger=None, hooks=()):
    """Train ``task.net`` with a Trainer and its default hooks; returns the summary (see Trainer.train)."""
    return Trainer(task, data, cfg, out_dir, ctx=ctx, val_fn=val_fn, resume=resume, logger=logger,
                   hooks=hooks).train()


__all__ = ["Trainer", "Hook", "fit", "NonFiniteGuard", "LogHook", "ProgressHook", "TensorBoardHook",
           "ValidationHook", "CheckpointHook"]
