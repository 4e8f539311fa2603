"""Pieces of the training loop (lib.train.trainer): its config, seeding, parameter selection, optimizer.

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
  FROZEN_BN_STATS    a BatchNorm whose scale and shift are both left untrained by the two keys above
                     normalises with its running statistics in training too and keeps them (a frozen
                     part then computes in training exactly what it computes at test time; otherwise its
                     statistics drift towards the new data while its weights stay)
  NO_WD_PATTERNS     regexes: parameters matching one get no weight decay (e.g. 'bias$', 'beta$')
  LR_MULT_PATTERNS   {regex: multiplier}: learning-rate multipliers (e.g. a pretrained trunk at 0.1)
  KVSTORE            gluon Trainer kvstore ('device', 'local', 'dist_sync', 'dist_device_sync')
  BATCH_SIZE         samples per step of one process (logged; the base of LR_SCALING)
  LR_SCALING         none | linear | sqrt: the LR for the job's effective batch (several workers)
  PROGRESS           show a tqdm progress bar
A pattern is searched (re.search) in the structured name used in .params files (e.g.
'features.0.weight') and in the parameter's full name; a pattern matching nothing is an error.
"""
import random
import re

import mxnet as mx
import numpy as np
from mxnet import gluon

from lib.fileio import atomic_save

from ..config import TRAIN_DEFAULTS, ConfigError, merge
from ..layers import iter_blocks
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
    out = merge(TRAIN_DEFAULTS, known, source=source, open_keys=("LR_MULT_PATTERNS",))
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
    if out["LR_SCALING"] not in ("none", "linear", "sqrt"):
        raise ConfigError(f"{source}: key 'LR_SCALING' must be none, linear or sqrt, got {out['LR_SCALING']!r}")
    for pattern, mult in out["LR_MULT_PATTERNS"].items():
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult < 0:
            raise ConfigError(f"{source}: key 'LR_MULT_PATTERNS': {pattern!r} needs a number >= 0, got {mult!r}")
    for key in ("FREEZE_PATTERNS", "TRAINABLE_PATTERNS", "NO_WD_PATTERNS", "LR_MULT_PATTERNS"):
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
    for pattern, mult in cfg["LR_MULT_PATTERNS"].items():
        for name in _select(named, [pattern], "LR_MULT_PATTERNS"):
            named[name].lr_mult = float(mult)
    if cfg.get("FROZEN_BN_STATS"):
        freeze_batchnorm_statistics(net)
    trainable, seen = {}, set()
    for name, param in named.items():
        # A parameter shared by several blocks appears under several names: train it once.
        if param.grad_req != "null" and id(param) not in seen:
            trainable[name] = param
            seen.add(id(param))
    if not trainable:
        raise ConfigError("no parameter left to train (check FREEZE_PATTERNS / TRAINABLE_PATTERNS)")
    return trainable


def freeze_batchnorm_statistics(net):
    """Every BatchNorm in ``net`` whose gamma and beta are not trained (grad_req 'null') normalises with
    its running statistics, also in training, and no longer updates them. Covers gluon's nn.BatchNorm and
    any block with Parameters ``gamma`` / ``beta`` and a ``use_global_stats`` attribute it passes to its
    BatchNorm op. Returns the number of layers switched."""
    switched = 0
    for block in iter_blocks(net):
        gamma, beta = getattr(block, "gamma", None), getattr(block, "beta", None)
        if not (isinstance(gamma, gluon.Parameter) and isinstance(beta, gluon.Parameter)):
            continue
        if gamma.grad_req != "null" or beta.grad_req != "null":
            continue
        if isinstance(block, gluon.nn.BatchNorm):
            block._kwargs["use_global_stats"] = True
        elif hasattr(block, "use_global_stats"):
            block.use_global_stats = True
        else:
            continue
        switched += 1
    if switched:
        for block in iter_blocks(net):   # hybridized graphs were built with the old setting
            if isinstance(block, gluon.HybridBlock):
                block._clear_cached_op()
    return switched


def build_trainer(params, cfg, kvstore=None):
    """gluon.Trainer for ``params`` ({name: Parameter}) from the config (lr is set per iteration);
    ``kvstore``: the KVStore object of a distributed job (lib.train.distributed.create_kvstore),
    else TRAIN.KVSTORE's name."""
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
    return gluon.Trainer(params, name, opt_params, kvstore=kvstore if kvstore is not None else cfg["KVSTORE"],
                         update_on_kvstore=False)



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
    atomic_save(path, fig.savefig, keep_extension=True)
