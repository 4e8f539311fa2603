"""The generic training loop every detector trains through.

``fit(task, data, cfg, out_dir)``:
- ``task.net``: the gluon Block (already initialised); ``task.loss(batch) -> (loss, {name: float})``
  computes the loss to minimise (already normalised: the loop calls backward and ``update(1)``; a
  non-scalar loss is summed; a list of losses, one per device, is allowed). The task moves the batch
  to its context(s).
- ``data``: callable ``epoch -> iterable of batches``. The loop reseeds python ``random``, numpy and
  MXNet from (SEED, epoch) BEFORE calling it, so shuffling and augmentation of an epoch are a pure
  function of the seed and the epoch: resuming from a checkpoint reproduces the uninterrupted run.
- ``val_fn(net, epoch) -> {metric: float}`` (optional) runs every EVAL_EVERY epochs and at the end.

Config keys (``TRAIN_DEFAULTS``; a method config includes them under its TRAIN section; other keys of
that section are ignored here):
  OPTIMIZER          'sgd' | 'adam' | 'rmsprop'
  LR                 base learning rate
  MOMENTUM           sgd momentum; for rmsprop the momentum of the centred variant (RMSPROP_CENTERED)
  WD                 weight decay (L2) for all trained parameters except NO_WD_PATTERNS
  ADAM_BETAS         [beta1, beta2] for adam
  RMSPROP_DECAY      rmsprop decay of the squared-gradient average (MXNet gamma1)
  RMSPROP_CENTERED   use MXNet's centred RMSProp (Graves 2013), which has momentum = MOMENTUM
  EPSILON            adam / rmsprop epsilon
  EPOCHS             number of epochs
  ITERS_PER_EPOCH    epoch length for lr schedules in epoch units when the data has no len()
  LR_SCHEDULE, LR_STEPS, LR_STEP_UNIT, LR_FACTOR, LR_DECAY_PERIOD, LR_MIN,
  WARMUP_EPOCHS, WARMUP_ITERS, WARMUP_FACTOR     see lib.train.schedule
  CLIP_GRAD_NORM     clip the global L2 norm of the gradients to this value (0 = off)
  SEED               base seed (each epoch reseeds from SEED and the epoch number)
  CHECKPOINT_EVERY   save a checkpoint every N epochs (the last epoch is always saved)
  KEEP_LAST          keep the newest N checkpoints (0 = all)
  LOG_EVERY          log / tensorboard / history point every N iterations
  EVAL_EVERY         call val_fn every N epochs (0 = only after the last epoch)
  BEST_METRIC        a val_fn metric to maximise (e.g. 'mAP'): the best epoch's parameters are kept
                     in best.params (+ best.json), beside the checkpoints ('' = off)
  FREEZE_PATTERNS    regexes: parameters whose name matches one are not trained
  TRAINABLE_PATTERNS regexes: if not empty, ONLY parameters matching one are trained
  NO_WD_PATTERNS     regexes: parameters matching one get no weight decay (e.g. 'bias$', 'beta$')
  KVSTORE            gluon Trainer kvstore ('device', 'local', 'dist_sync', ...)
  PROGRESS           show a tqdm progress bar
A pattern is searched (re.search) in the structured name used in .params files (e.g.
'features.0.weight') and in the parameter's full name; a pattern matching nothing is an error.

Outputs in ``out_dir``: train.log, tb/ (tensorboardX scalars), history.json, loss_curve.png,
train_config.yaml and the checkpoints (lib.train.checkpoint).
"""
import json
import math
import os
import random
import re
import time

import mxnet as mx
import numpy as np
import tqdm
from mxnet import autograd, gluon

from ..config import TRAIN_DEFAULTS, ConfigError, dump_config, merge, to_plain
from .checkpoint import CheckpointManager, atomic_write_json, structured_param_names
from .logger import setup_logger
from .schedule import build_lr_schedule

OPTIMIZERS = ("sgd", "adam", "rmsprop")


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss or gradient, bad task output)."""


def training_config(cfg):
    """TRAIN_DEFAULTS updated by the known keys of ``cfg`` (type-checked), as a plain dict."""
    cfg = dict(cfg or {})
    source = cfg.get("CONFIG_FILE") or "training config"
    if not any(k in TRAIN_DEFAULTS for k in cfg) and isinstance(cfg.get("TRAIN"), dict):
        cfg = dict(cfg["TRAIN"])  # a whole method config was passed: use its TRAIN section
    known = {k: v for k, v in cfg.items() if k in TRAIN_DEFAULTS}
    out = merge(TRAIN_DEFAULTS, known, source=source)
    if out["OPTIMIZER"] not in OPTIMIZERS:
        raise ConfigError(f"{source}: key 'OPTIMIZER' must be one of {OPTIMIZERS}, "
                          f"got {out['OPTIMIZER']!r}")
    for key in ("EPOCHS", "CHECKPOINT_EVERY", "LOG_EVERY"):
        if out[key] < 1:
            raise ConfigError(f"{source}: key '{key}' must be >= 1, got {out[key]}")
    for key in ("EVAL_EVERY", "KEEP_LAST", "ITERS_PER_EPOCH", "WARMUP_ITERS"):
        if out[key] < 0:
            raise ConfigError(f"{source}: key '{key}' must be >= 0, got {out[key]}")
    if out["CLIP_GRAD_NORM"] < 0:
        raise ConfigError(f"{source}: key 'CLIP_GRAD_NORM' must be >= 0 (0 = off)")
    if "async" in out["KVSTORE"]:
        raise ConfigError(f"{source}: key 'KVSTORE' = {out['KVSTORE']!r}: asynchronous kvstores "
                          f"update on the server, which cannot be checkpointed; use dist_sync")
    for key in ("FREEZE_PATTERNS", "TRAINABLE_PATTERNS", "NO_WD_PATTERNS"):
        for pattern in out[key]:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ConfigError(f"{source}: key '{key}': invalid regex {pattern!r} ({err})") from None
    # validates the schedule keys early; a long stand-in epoch so an iteration-count warm-up
    # (WARMUP_ITERS) is not compared with a horizon of EPOCHS iterations
    build_lr_schedule(out, iters_per_epoch=10 ** 6)
    return out


def seed_everything(seed, epoch):
    """Reseed python, numpy and MXNet from (seed, epoch); returns the derived seed."""
    derived = (int(seed) * 1_000_003 + int(epoch)) % (2 ** 31 - 1)
    random.seed(derived)
    np.random.seed(derived)
    mx.random.seed(derived)
    return derived


def _select(named_params, patterns, key):
    """Names matching any regex in ``patterns``; an error if a pattern matches nothing."""
    selected = set()
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = {name for name, p in named_params.items() if regex.search(name) or regex.search(p.name)}
        if not hits:
            raise ConfigError(f"{key}: pattern {pattern!r} matches no parameter "
                              f"(e.g. {sorted(named_params)[:5]})")
        selected |= hits
    return selected


def prepare_params(net, cfg):
    """Apply FREEZE/TRAINABLE/NO_WD patterns; return {structured name: Parameter} to train."""
    named = dict(net._collect_params_with_prefix())
    if cfg["TRAINABLE_PATTERNS"]:
        keep = _select(named, cfg["TRAINABLE_PATTERNS"], "TRAINABLE_PATTERNS")
        for name, param in named.items():
            if name not in keep:
                param.grad_req = "null"
    for name in _select(named, cfg["FREEZE_PATTERNS"], "FREEZE_PATTERNS"):
        named[name].grad_req = "null"
    for name in _select(named, cfg["NO_WD_PATTERNS"], "NO_WD_PATTERNS"):
        named[name].wd_mult = 0.0
    trainable, seen = {}, set()
    for name, param in named.items():
        # A parameter shared by several blocks appears under several names: train it once.
        if param.grad_req != "null" and id(param) not in seen:
            trainable[name] = param
            seen.add(id(param))
    if not trainable:
        raise ConfigError("no parameter left to train (check FREEZE_PATTERNS / TRAINABLE_PATTERNS)")
    return trainable


def build_trainer(params, cfg):
    """gluon.Trainer for ``params`` ({name: Parameter}) from the config (lr is set per iteration)."""
    name = cfg["OPTIMIZER"]
    opt_params = {"learning_rate": cfg["LR"], "wd": cfg["WD"]}
    if name == "sgd":
        opt_params["momentum"] = cfg["MOMENTUM"]
    elif name == "adam":
        opt_params.update(beta1=cfg["ADAM_BETAS"][0], beta2=cfg["ADAM_BETAS"][1],
                          epsilon=cfg["EPSILON"])
    else:
        opt_params.update(gamma1=cfg["RMSPROP_DECAY"], epsilon=cfg["EPSILON"],
                          centered=cfg["RMSPROP_CENTERED"])
        if cfg["RMSPROP_CENTERED"]:
            opt_params["gamma2"] = cfg["MOMENTUM"]
    # update_on_kvstore=False keeps the optimizer state in the trainer, where it can be checkpointed,
    # and lets the loop clip the all-reduced gradients before the update.
    return gluon.Trainer(params, name, opt_params, kvstore=cfg["KVSTORE"], update_on_kvstore=False)


def _as_float(value, what):
    if isinstance(value, mx.nd.NDArray):
        return float(value.sum().asscalar())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"task.loss returned a non-numeric {what}: {value!r}") from None


def write_loss_curve(history, path):
    """Plot the logged loss windows (and validation metrics) to a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = history.get("points", [])
    val = history.get("val", [])
    fig = Figure(figsize=(9, 6 if val else 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2 if val else 1, 1, 1)
    names = []
    for point in points:
        for key in point["losses"]:
            if key not in names and key != "grad_norm":  # not a loss: would squash the curves
                names.append(key)
    for key in names:
        xs = [p["iteration"] for p in points if key in p["losses"]]
        ys = [p["losses"][key] for p in points if key in p["losses"]]
        ax.plot(xs, ys, label=key, linewidth=1.5 if key == "loss" else 1.0)
    for boundary in history.get("epoch_ends", []):
        ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    if names:
        ax.legend(loc="upper right", fontsize=8)
    if val:
        vax = fig.add_subplot(2, 1, 2)
        metric_names = sorted({k for v in val for k in v["metrics"]})
        for key in metric_names:
            xs = [v["epoch"] for v in val if key in v["metrics"]]
            vax.plot(xs, [v["metrics"][key] for v in val if key in v["metrics"]], marker="o", label=key)
        vax.set_xlabel("epoch")
        vax.set_ylabel("validation")
        vax.grid(True, alpha=0.3)
        vax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp)
    os.replace(tmp, path)


def _save_if_best(net, history, metric, out_dir, epoch, logger):
    """Keep ``best.params`` / ``best.json`` for the highest validation ``metric`` so far."""
    scores = [(v["metrics"][metric], v["epoch"]) for v in history["val"] if metric in v["metrics"]]
    if not scores or scores[-1][1] != epoch:
        raise TrainingError(f"BEST_METRIC '{metric}' is not among the metrics val_fn returned at "
                            f"epoch {epoch}: {sorted(history['val'][-1]['metrics'])}")
    value = scores[-1][0]
    if any(previous >= value for previous, _ in scores[:-1]):
        return
    path = os.path.join(out_dir, "best.params")
    tmp = f"{path}.tmp{os.getpid()}"
    net.save_parameters(tmp)
    os.replace(tmp, path)
    atomic_write_json(os.path.join(out_dir, "best.json"), {"epoch": epoch, "metric": metric,
                                                           "value": value, "params": "best.params"})
    logger.info("new best %s %.4f at epoch %d: saved %s", metric, value, epoch, path)


def fit(task, data, cfg, out_dir, ctx=None, val_fn=None, resume=True, logger=None):
    """Train ``task.net`` (see the module docstring). Returns a summary dict:
    epochs, start_epoch, iterations, final_losses (mean of the last epoch), val (last metrics),
    wall_time (seconds of this call), checkpoint (latest JSON path), out_dir.
    """
    cfg = training_config(cfg)
    os.makedirs(out_dir, exist_ok=True)
    logger = logger or setup_logger(out_dir, "train")
    net = task.net
    params = prepare_params(net, cfg)
    trainer = build_trainer(params, cfg)
    manager = CheckpointManager(out_dir, keep_last=cfg["KEEP_LAST"])
    history = {"points": [], "epochs": [], "val": [], "epoch_ends": []}
    start_epoch, iteration = 0, 0

    if not resume and manager.latest():
        # Starting over would interleave new and old checkpoints (and prune the new ones).
        raise TrainingError(f"{out_dir} already holds checkpoints (latest {manager.latest()}) and "
                            f"resume is off: delete them or train into another folder")
    if resume and manager.latest():
        record = manager.load(net, trainer, ctx=ctx)
        start_epoch = record["epoch"]
        iteration = record["iteration"] or 0
        history = record.get("extra", {}).get("history", history)
        logger.info("resumed from %s (epoch %d, iteration %d)", record["path"], start_epoch, iteration)
    dump_config(cfg, os.path.join(out_dir, "train_config.yaml"))
    all_params = {id(p) for p in net._collect_params_with_prefix().values()}
    logger.info("training %d parameter arrays (%d others frozen or statistics) with %s, config %s",
                len(params), len(all_params) - len(params), cfg["OPTIMIZER"],
                json.dumps(to_plain(cfg), sort_keys=True))

    from tensorboardX import SummaryWriter

    # purge_step drops events a crashed run logged after the checkpoint we resume from.
    writer = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=iteration if start_epoch else None)
    schedule = None
    started = time.time()
    epoch_means = history["epochs"][-1]["losses"] if history["epochs"] else {}
    val_metrics = history["val"][-1]["metrics"] if history["val"] else {}
    names_by_id = structured_param_names(net)
    warned_stale = False
    progress = None
    try:
        for epoch in range(start_epoch, cfg["EPOCHS"]):
            seed_everything(cfg["SEED"], epoch)
            batches = data(epoch)
            try:
                num_batches = len(batches)
            except TypeError:
                num_batches = cfg["ITERS_PER_EPOCH"] or None
            if schedule is None:
                schedule = build_lr_schedule(cfg, iters_per_epoch=num_batches)
                logger.info("lr schedule: %r", schedule)
            sums, count = {}, 0
            window, window_count = {}, 0
            epoch_start = time.time()
            progress = None
            if cfg["PROGRESS"]:
                progress = tqdm.tqdm(total=num_batches, desc=f"epoch {epoch + 1}/{cfg['EPOCHS']}",
                                     dynamic_ncols=True, leave=False)
            for batch_index, batch in enumerate(batches):
                lr = schedule(iteration)
                trainer.set_learning_rate(lr)
                with autograd.record():
                    output = task.loss(batch)
                    if not (isinstance(output, tuple) and len(output) == 2):
                        raise TrainingError("task.loss(batch) must return (loss, {name: float}), "
                                            f"got {type(output).__name__}")
                    loss, parts = output
                losses = loss if isinstance(loss, (list, tuple)) else [loss]
                autograd.backward(losses)
                values = {"loss": sum(_as_float(l, "loss") for l in losses)}
                for key, value in (parts or {}).items():
                    if key != "loss":  # the total is computed here
                        values[key] = _as_float(value, f"loss part '{key}'")
                if not math.isfinite(values["loss"]):
                    raise TrainingError(
                        f"loss is {values['loss']} at epoch {epoch + 1}, iteration {batch_index} of "
                        f"the epoch (global iteration {iteration}), lr {lr:g}; parts: "
                        f"{ {k: v for k, v in values.items() if k != 'loss'} }")
                trainer.allreduce_grads()
                fresh = [p for p in params.values() if p.list_data()[0]._fresh_grad]
                if not warned_stale and len(fresh) < len(params):
                    stale = sorted(set(params) - {names_by_id.get(id(p), p.name) for p in fresh})
                    logger.warning("%d trained parameters got no gradient in the first iteration "
                                   "(not used by the loss?): %s", len(stale), stale[:10])
                warned_stale = True
                if cfg["CLIP_GRAD_NORM"] > 0 and fresh:
                    norm = None
                    for device in range(len(fresh[0].list_grad())):
                        grads = [p.list_grad()[device] for p in fresh]
                        device_norm = gluon.utils.clip_global_norm(grads, cfg["CLIP_GRAD_NORM"],
                                                                   check_isfinite=False)
                        if norm is None:
                            norm = float(device_norm.asscalar())
                    if not math.isfinite(norm):
                        raise TrainingError(f"gradient norm is {norm} at epoch {epoch + 1}, iteration "
                                            f"{batch_index} of the epoch (global iteration {iteration})")
                    values["grad_norm"] = norm
                trainer.update(1, ignore_stale_grad=True)

                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                    window[key] = window.get(key, 0.0) + value
                count += 1
                window_count += 1
                iteration += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if window_count == cfg["LOG_EVERY"]:
                    means = {k: v / window_count for k, v in window.items()}
                    history["points"].append({"iteration": iteration, "epoch": epoch + 1,
                                              "losses": means})
                    for key, value in means.items():
                        writer.add_scalar(f"train/{key}", value, iteration)
                    writer.add_scalar("train/lr", lr, iteration)
                    speed = count / max(time.time() - epoch_start, 1e-9)
                    logger.info("epoch %d iter %d%s lr %.3g %s (%.2f it/s)", epoch + 1, batch_index + 1,
                                f"/{num_batches}" if num_batches else "", lr,
                                " ".join(f"{k} {v:.4f}" for k, v in means.items()), speed)
                    window, window_count = {}, 0
            if progress is not None:
                progress.close()
                progress = None
            if count == 0:
                raise TrainingError(f"data({epoch}) yielded no batch")
            if window_count:  # the tail of the epoch still gets a point on the curve
                history["points"].append({"iteration": iteration, "epoch": epoch + 1,
                                          "losses": {k: v / window_count for k, v in window.items()}})
            epoch_means = {k: v / count for k, v in sums.items()}
            history["epochs"].append({"epoch": epoch + 1, "losses": epoch_means,
                                      "seconds": time.time() - epoch_start})
            history["epoch_ends"].append(iteration)
            for key, value in epoch_means.items():
                writer.add_scalar(f"epoch/{key}", value, epoch + 1)
            logger.info("epoch %d done in %.1fs: %s", epoch + 1, time.time() - epoch_start,
                        " ".join(f"{k} {v:.4f}" for k, v in epoch_means.items()))
            last = epoch + 1 == cfg["EPOCHS"]
            if val_fn is not None and (last or (cfg["EVAL_EVERY"] and (epoch + 1) % cfg["EVAL_EVERY"] == 0)):
                val_metrics = {k: float(v) for k, v in (val_fn(net, epoch + 1) or {}).items()}
                history["val"].append({"epoch": epoch + 1, "metrics": val_metrics})
                for key, value in val_metrics.items():
                    writer.add_scalar(f"val/{key}", value, epoch + 1)
                logger.info("epoch %d validation: %s", epoch + 1,
                            " ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
                if cfg["BEST_METRIC"]:
                    _save_if_best(net, history, cfg["BEST_METRIC"], out_dir, epoch + 1, logger)
            if last or (epoch + 1) % cfg["CHECKPOINT_EVERY"] == 0:
                path = manager.save(epoch + 1, net, trainer, iteration=iteration, lr=lr,
                                    extra={"history": history, "seed": cfg["SEED"]})
                logger.info("saved checkpoint %s", path)
            atomic_write_json(os.path.join(out_dir, "history.json"), history)
            write_loss_curve(history, os.path.join(out_dir, "loss_curve.png"))
            writer.flush()
    finally:
        if progress is not None:
            progress.close()
        writer.close()
    wall = time.time() - started
    if start_epoch >= cfg["EPOCHS"]:
        logger.info("nothing to do: checkpoint epoch %d >= EPOCHS %d", start_epoch, cfg["EPOCHS"])
    summary = {"epochs": cfg["EPOCHS"], "start_epoch": start_epoch, "iterations": iteration,
               "final_losses": epoch_means, "val": val_metrics, "wall_time": wall,
               "checkpoint": manager.latest(), "out_dir": out_dir}
    logger.info("training finished: %s", json.dumps(summary, sort_keys=True))
    return summary
