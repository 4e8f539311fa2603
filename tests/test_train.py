"""lib.train: lr schedules (hand-computed), logger, atomic checkpoints, and the fit loop
(exact resume, NaN detection, freezing, gradient clipping, outputs)."""
import json
import logging
import math
import os

import cv2
import mxnet as mx
import numpy as np
import pytest
from easydict import EasyDict
from mxnet import autograd, gluon

from lib.config import ConfigError
from lib.train import (TRAIN_DEFAULTS, CheckpointError, CheckpointManager, TrainingError,
                       build_lr_schedule, fit, setup_logger)


# ----------------------------------------------------------------------------- schedules

def test_step_schedule_with_warmup_matches_hand_values():
    cfg = dict(LR=0.1, LR_SCHEDULE="step", LR_STEPS=[2, 3], LR_STEP_UNIT="epoch", LR_FACTOR=0.1,
               WARMUP_EPOCHS=1, WARMUP_FACTOR=0.2)
    sched = build_lr_schedule(cfg, iters_per_epoch=10)
    # warm-up over 10 iterations from 0.02 to 0.1: lr(i) = 0.1 * (0.2 + 0.8 * i / 10)
    assert sched(0) == pytest.approx(0.02)
    assert sched(5) == pytest.approx(0.06)
    assert sched(9) == pytest.approx(0.092)
    assert sched(10) == pytest.approx(0.1)
    assert sched(19) == pytest.approx(0.1)
    assert sched(20) == pytest.approx(0.01)
    assert sched(29) == pytest.approx(0.01)
    assert sched(30) == pytest.approx(0.001)
    assert sched(10_000) == pytest.approx(0.001)


def test_fractional_epoch_steps_and_iteration_units():
    # FGFA: x0.1 at epoch 1.333
    sched = build_lr_schedule(dict(LR=2.5e-4, LR_STEPS=[1.333], LR_FACTOR=0.1), iters_per_epoch=300)
    assert sched(399) == pytest.approx(2.5e-4)
    assert sched(400) == pytest.approx(2.5e-5)  # round(1.333 * 300) = 400
    sched = build_lr_schedule(dict(LR=1.0, LR_STEPS=[5, 7], LR_STEP_UNIT="iter", LR_FACTOR=0.5,
                                   WARMUP_ITERS=4, WARMUP_FACTOR=0.0))
    assert [sched(i) for i in range(9)] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 0.5, 0.5, 0.25, 0.25])


def test_periodic_and_cosine_schedules():
    # LSTM-SSD: x0.95 every 200k iterations
    sched = build_lr_schedule(dict(LR=0.002, LR_SCHEDULE="periodic", LR_DECAY_PERIOD=200000,
                                   LR_STEP_UNIT="iter", LR_FACTOR=0.95))
    assert sched(199999) == pytest.approx(0.002)
    assert sched(200000) == pytest.approx(0.0019)
    assert sched(650000) == pytest.approx(0.002 * 0.95 ** 3)
    sched = build_lr_schedule(dict(LR=1.0, LR_SCHEDULE="cosine", EPOCHS=3, LR_MIN=0.1,
                                   WARMUP_EPOCHS=1, WARMUP_FACTOR=0.5), iters_per_epoch=10)
    assert sched(0) == pytest.approx(0.5)
    assert sched(10) == pytest.approx(1.0)
    assert sched(20) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sched(15) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert sched(30) == pytest.approx(0.1)


def test_schedule_errors_name_the_key():
    with pytest.raises(ValueError, match="iters_per_epoch or set ITERS_PER_EPOCH"):
        build_lr_schedule(dict(LR=0.1, LR_STEPS=[1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        build_lr_schedule(dict(LR=0.1, LR_STEPS=[3, 2], LR_STEP_UNIT="iter"))
    with pytest.raises(ValueError, match="LR_SCHEDULE"):
        build_lr_schedule(dict(LR=0.1, LR_SCHEDULE="poly"))


# ----------------------------------------------------------------------------- logger

def test_logger_writes_console_and_file_without_duplicates(tmp_path, capsys):
    logger = setup_logger(str(tmp_path), "unit")
    logger = setup_logger(str(tmp_path), "unit")
    logger.info("hello %d", 7)
    for handler in logger.handlers:
        handler.flush()
    lines = (tmp_path / "unit.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("unit: hello 7")
    assert capsys.readouterr().err.count("hello 7") == 1
    assert len(logger.handlers) == 2
    other = tmp_path / "other"
    setup_logger(str(other), "unit").info("second")
    logging.getLogger("unit").handlers[-1].flush()
    assert "second" in (other / "unit.log").read_text()
    assert "second" not in (tmp_path / "unit.log").read_text()


# ----------------------------------------------------------------------------- tiny task

class TinyNet(gluon.HybridBlock):
    def __init__(self, hidden=8, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = gluon.nn.HybridSequential()
            self.body.add(gluon.nn.Dense(hidden, in_units=5), gluon.nn.BatchNorm(in_channels=hidden),
                          gluon.nn.Activation("relu"), gluon.nn.Dropout(0.3))
            self.head = gluon.nn.Dense(3, in_units=hidden)

    def hybrid_forward(self, F, x):
        return self.head(self.body(x))


class TinyTask:
    """Regression on fixed random data; 'nan_at' injects a NaN loss at that global call."""

    def __init__(self, hidden=8, nan_at=None, init_seed=1):
        mx.random.seed(init_seed)
        self.net = TinyNet(hidden)
        self.net.initialize(mx.init.Xavier())
        self.calls = 0
        self.nan_at = nan_at

    def loss(self, batch):
        x, y = batch
        pred = self.net(mx.nd.array(x))
        l2 = ((pred - mx.nd.array(y)) ** 2).mean()
        self.calls += 1
        if self.nan_at is not None and self.calls > self.nan_at:
            l2 = l2 * float("nan")
        return l2, {"l2": float(l2.asscalar())}


DATA_RNG = np.random.RandomState(123)
X = DATA_RNG.randn(48, 5).astype(np.float32)
Y = DATA_RNG.randn(48, 3).astype(np.float32)


def tiny_data(epoch, batch=8):
    """Shuffled with the global numpy RNG (reseeded by fit) plus random noise augmentation."""
    order = np.random.permutation(len(X))
    return [(X[order[i:i + batch]] + 0.1 * np.random.randn(len(order[i:i + batch]), 5).astype(np.float32),
             Y[order[i:i + batch]]) for i in range(0, len(X), batch)]


def train_cfg(**kw):
    cfg = dict(TRAIN_DEFAULTS, LR=0.05, EPOCHS=2, LOG_EVERY=2, PROGRESS=False, SEED=7,
               WARMUP_ITERS=3, LR_STEPS=[1], LR_FACTOR=0.5, CLIP_GRAD_NORM=5.0)
    cfg.update(kw)
    return EasyDict(cfg)


def params_of(net):
    return {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_resume_is_exact(tmp_path, optimizer):
    straight = TinyTask()
    fit(straight, tiny_data, train_cfg(OPTIMIZER=optimizer), str(tmp_path / "a"))

    first = TinyTask()
    fit(first, tiny_data, train_cfg(OPTIMIZER=optimizer, EPOCHS=1), str(tmp_path / "b"))
    resumed = TinyTask(init_seed=99)  # different init: everything must come from the checkpoint
    summary = fit(resumed, tiny_data, train_cfg(OPTIMIZER=optimizer), str(tmp_path / "b"))
    assert summary["start_epoch"] == 1 and summary["iterations"] == 12
    a, b = params_of(straight.net), params_of(resumed.net)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # and training changed them (the test is not vacuous)
    fresh = params_of(TinyTask().net)
    assert not np.allclose(fresh["head.weight"], a["head.weight"])
    hist_a = json.loads((tmp_path / "a" / "history.json").read_text())
    hist_b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hist_a["epochs"][-1]["losses"] == pytest.approx(hist_b["epochs"][-1]["losses"])


def test_fit_outputs_and_summary(tmp_path):
    calls = []

    def val_fn(net, epoch):
        calls.append(epoch)
        snapshots[epoch] = params_of(net)
        return {"mAP": 0.1 * epoch if epoch < 3 else 0.15}

    out = tmp_path / "run"
    snapshots = {}
    task = TinyTask()
    summary = fit(task, tiny_data, train_cfg(EPOCHS=3, KEEP_LAST=2, BEST_METRIC="mAP"), str(out),
                  val_fn=val_fn)
    assert calls == [1, 2, 3]
    assert json.loads((out / "best.json").read_text())["epoch"] == 2
    best = TinyTask(init_seed=4)
    best.net.load_parameters(str(out / "best.params"))
    for name, value in snapshots[2].items():
        np.testing.assert_array_equal(params_of(best.net)[name], value)
    assert summary["epochs"] == 3 and summary["iterations"] == 18
    assert set(summary["final_losses"]) == {"loss", "l2", "grad_norm"}
    assert summary["val"] == {"mAP": pytest.approx(0.15)}
    assert summary["wall_time"] > 0
    image = cv2.imread(str(out / "loss_curve.png"))
    assert image is not None and image.shape[0] > 100
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tb"))
    assert "epoch 3 done" in (out / "train.log").read_text()
    assert (out / "train_config.yaml").exists()
    manager = CheckpointManager(str(out), keep_last=2)
    assert manager.list_epochs() == [2, 3]
    assert summary["checkpoint"] == manager.latest()
    record = manager.read()
    assert record["epoch"] == 3 and record["iteration"] == 18
    assert record["lr"] == pytest.approx(0.025)
    with pytest.raises(TrainingError, match="already holds checkpoints .* resume is off"):
        fit(TinyTask(), tiny_data, train_cfg(EPOCHS=3), str(out), resume=False)
    # a finished run resumed with the same EPOCHS does nothing
    again = fit(TinyTask(), tiny_data, train_cfg(EPOCHS=3, KEEP_LAST=2), str(out))
    with pytest.raises(TrainingError, match="BEST_METRIC 'AP50' is not among the metrics"):
        fit(TinyTask(), tiny_data, train_cfg(EPOCHS=1, BEST_METRIC="AP50"), str(tmp_path / "x"),
            val_fn=val_fn)
    assert again["start_epoch"] == 3 and again["iterations"] == 18


def test_nan_loss_names_epoch_and_iteration(tmp_path):
    with pytest.raises(TrainingError, match=r"epoch 2, iteration 1 of the epoch \(global iteration 7\)"):
        fit(TinyTask(nan_at=7), tiny_data, train_cfg(), str(tmp_path))


def test_freeze_patterns_and_errors(tmp_path):
    task = TinyTask()
    before = params_of(task.net)
    fit(task, tiny_data, train_cfg(EPOCHS=1, FREEZE_PATTERNS=[r"^body\.0\."]), str(tmp_path / "f"))
    after = params_of(task.net)
    np.testing.assert_array_equal(before["body.0.weight"], after["body.0.weight"])
    assert not np.allclose(before["head.weight"], after["head.weight"])
    task = TinyTask()
    before = params_of(task.net)
    fit(task, tiny_data, train_cfg(EPOCHS=1, TRAINABLE_PATTERNS=["head"]), str(tmp_path / "t"))
    after = params_of(task.net)
    np.testing.assert_array_equal(before["body.1.gamma"], after["body.1.gamma"])
    assert not np.allclose(before["head.bias"], after["head.bias"])
    with pytest.raises(ConfigError, match="FREEZE_PATTERNS: pattern 'nothing' matches no parameter"):
        fit(TinyTask(), tiny_data, train_cfg(FREEZE_PATTERNS=["nothing"]), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="'OPTIMIZER' must be one of"):
        fit(TinyTask(), tiny_data, train_cfg(OPTIMIZER="lbfgs"), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="'LR' must be float"):
        fit(TinyTask(), tiny_data, train_cfg(LR="fast"), str(tmp_path / "x"))


def test_frozen_bn_stats_keep_the_running_statistics_of_frozen_batchnorms(tmp_path):
    # TinyNet's BatchNorm (body.1) frozen between two trained layers (MXNet updates running statistics in
    # the backward pass, which runs through it for body.0): without the key its statistics drift towards
    # the training batches, with it they stay, while the layers around it still train
    runs = {}
    for frozen in (False, True):
        task = TinyTask()
        before = params_of(task.net)
        fit(task, tiny_data, train_cfg(EPOCHS=1, FREEZE_PATTERNS=[r"^body\.1\."], FROZEN_BN_STATS=frozen),
            str(tmp_path / str(frozen)))
        runs[frozen] = (before, params_of(task.net))
    before, after = runs[False]
    assert not np.allclose(before["body.1.running_mean"], after["body.1.running_mean"])
    before, after = runs[True]
    for name in ("running_mean", "running_var", "gamma", "beta"):
        np.testing.assert_array_equal(before[f"body.1.{name}"], after[f"body.1.{name}"])
    for name in ("body.0.weight", "head.weight"):
        assert not np.allclose(before[name], after[name])


@pytest.mark.parametrize("hybridize", [False, True])
def test_frozen_batchnorm_computes_in_training_what_it_computes_at_test_time(hybridize):
    from lib.train.loop import freeze_batchnorm_statistics
    from lstm_ssd.layers import ConvBN

    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, padding=1, in_channels=3), gluon.nn.BatchNorm(in_channels=4),
            ConvBN(4, 4, kernel=3), ConvBN(4, 4, kernel=1))
    net.initialize(mx.init.Xavier())
    for bn in (net[1], net[2]):   # non-trivial statistics, so batch and running ones differ
        bn.running_mean.set_data(mx.nd.array([0.5, -0.3, 0.2, 0.1]))
        bn.running_var.set_data(mx.nd.array([2.0, 0.5, 1.5, 3.0]))
    for block in (net[1], net[2]):
        block.gamma.grad_req = block.beta.grad_req = "null"
    x = mx.nd.random.normal(1.0, 2.0, shape=(2, 3, 6, 6))
    if hybridize:
        net.hybridize()
    net(x)                        # a cached graph exists before the switch
    stats = {i: (net[i].running_mean.data().asnumpy(), net[i].running_var.data().asnumpy()) for i in (1, 2, 3)}
    assert freeze_batchnorm_statistics(net) == 2   # the trainable ConvBN (net[3]) is left alone

    expected = net[2](net[1](net[0](x))).asnumpy()          # inference: running statistics
    with mx.autograd.record():
        got = net[2](net[1](net[0](x)))
        out = net(x)
    np.testing.assert_allclose(got.asnumpy(), expected, rtol=1e-5, atol=1e-5)
    out.backward()
    for i in (1, 2):
        np.testing.assert_array_equal(net[i].running_mean.data().asnumpy(), stats[i][0])
        np.testing.assert_array_equal(net[i].running_var.data().asnumpy(), stats[i][1])
    assert not np.allclose(net[3].running_mean.data().asnumpy(), stats[3][0])   # still a training BN


def test_gradient_clipping_matches_manual_update(tmp_path):
    """One plain-SGD step with clipping equals w - lr * g * min(1, c / ||g||) computed by hand."""
    task = TinyTask()
    task.net.body[3]._rate = 0.0  # no dropout: the manual gradient must see the same graph
    batch = (X[:8], Y[:8])
    with autograd.record():
        loss, _ = task.loss(batch)
    loss.backward()
    named = task.net._collect_params_with_prefix()
    trainable = {k: p for k, p in named.items() if p.grad_req != "null"}
    grads = {k: p.grad().asnumpy().copy() for k, p in trainable.items()}
    before = {k: p.data().asnumpy().copy() for k, p in trainable.items()}
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    clip = norm / 4
    assert norm > clip
    cfg = train_cfg(EPOCHS=1, MOMENTUM=0.0, WD=0.0, WARMUP_ITERS=0, LR_STEPS=[], LR=0.1,
                    CLIP_GRAD_NORM=clip)
    summary = fit(task, lambda epoch: [batch], cfg, str(tmp_path))
    assert summary["final_losses"]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    for k, p in trainable.items():
        expected = before[k] - 0.1 * grads[k] * (clip / norm)
        np.testing.assert_allclose(p.data().asnumpy(), expected, rtol=1e-4, atol=1e-6, err_msg=k)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_latest_ignores_incomplete_and_prunes(tmp_path):
    task = TinyTask()
    manager = CheckpointManager(str(tmp_path), keep_last=3)
    for epoch in range(1, 6):
        manager.save(epoch, task.net, extra={"note": epoch})
    assert manager.list_epochs() == [3, 4, 5]
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"ckpt-{e:04d}.{ext}" for e in (3, 4, 5) for ext in ("params", "states", "json"))
    # a half-written checkpoint (no JSON yet) is never the latest
    paths = manager.paths(6)
    task.net.save_parameters(paths["params"])
    assert manager.latest().endswith("ckpt-0005.json")
    assert manager.read()["extra"] == {"note": 5}
    os.remove(manager.paths(5)["states"])
    assert manager.latest().endswith("ckpt-0004.json")


def test_checkpoint_errors_name_the_file(tmp_path):
    task = TinyTask()
    manager = CheckpointManager(str(tmp_path))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        manager.load(task.net)
    manager.save(1, task.net)
    wrong = TinyTask(hidden=6)
    params_path = manager.paths(1)["params"]
    with pytest.raises(CheckpointError, match=r"ckpt-0001\.params does not match.*body\.0\.weight"):
        manager.load(wrong.net)
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*ckpt-0009.json"):
        manager.load(task.net, checkpoint=9)
    os.remove(params_path)
    with pytest.raises(CheckpointError, match="checkpoint file not found|parameter file not found"):
        manager.load(task.net, checkpoint=manager.paths(1)["json"])


def test_unreadable_optimizer_state_names_the_file(tmp_path):
    task = TinyTask()
    trainer = gluon.Trainer(task.net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9},
                            update_on_kvstore=False)
    with autograd.record():
        loss, _ = task.loss((X[:8], Y[:8]))
    loss.backward()
    trainer.step(1)
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, task.net, trainer)
    open(manager.paths(1)["states"], "wb").close()   # e.g. a disk that filled up
    with pytest.raises(CheckpointError, match=r"ckpt-0001\.states: not a readable optimizer state file"):
        manager.load(task.net, trainer)


def test_checkpoint_restores_params_optimizer_and_rng(tmp_path):
    task = TinyTask()
    trainer = gluon.Trainer(task.net.collect_params(), "adam", {"learning_rate": 0.01},
                            update_on_kvstore=False)
    for _ in range(3):
        with autograd.record():
            loss, _ = task.loss((X[:8], Y[:8]))
        loss.backward()
        trainer.step(1)
    manager = CheckpointManager(str(tmp_path))
    np.random.seed(5)
    manager.save(1, task.net, trainer, iteration=3, lr=0.01)
    expected_draw = np.random.rand(3)

    other = TinyTask(init_seed=3)
    other_trainer = gluon.Trainer(other.net.collect_params(), "adam", {"learning_rate": 0.01},
                                  update_on_kvstore=False)
    np.random.seed(0)
    record = manager.load(other.net, other_trainer)
    np.testing.assert_array_equal(np.random.rand(3), expected_draw)
    assert record["iteration"] == 3
    for k, v in params_of(task.net).items():
        np.testing.assert_array_equal(params_of(other.net)[k], v)
    assert other_trainer._optimizer.num_update == trainer._optimizer.num_update == 3
    for index, state in trainer._updaters[0].states.items():
        for a, b in zip(state, other_trainer._updaters[0].states[index]):
            np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    sgd_trainer = gluon.Trainer(other.net.collect_params(), "sgd", update_on_kvstore=False)
    with pytest.raises(CheckpointError, match="saved with optimizer 'adam'"):
        manager.load(other.net, sgd_trainer)
    # a weights-only checkpoint (no trainer at save time) loads into a trainer, which starts fresh
    manager.save(2, task.net)
    manager.load(other.net, sgd_trainer)
    assert sgd_trainer._updaters[0].states == {}


def read_scalars(tb_dir):
    """Parse tensorboardX event files (length-prefixed records of Event protos) -> {tag: [(step, v)]}."""
    import struct
    from tensorboardX.proto import event_pb2
    scalars = {}
    for name in sorted(os.listdir(tb_dir)):
        data = open(os.path.join(tb_dir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_scalars_and_whole_config(tmp_path):
    cfg = EasyDict({"MODEL": {"DEPTH": 18}, "TRAIN": dict(train_cfg(EPOCHS=1, LOG_EVERY=3))})
    fit(TinyTask(), tiny_data, cfg, str(tmp_path))  # a whole config: its TRAIN section is used
    scalars = read_scalars(str(tmp_path / "tb"))
    assert [step for step, _ in scalars["train/loss"]] == [3, 6]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [p["losses"]["loss"] for p in history["points"]] == pytest.approx(
        [v for _, v in scalars["train/loss"]], rel=1e-6)
    # the lr of the last update of the window: iteration 2 of a 3-iteration warm-up from 0.1 x LR
    assert scalars["train/lr"][0][1] == pytest.approx(0.05 * (0.1 + 0.9 * 2 / 3))
    assert scalars["epoch/l2"][0][0] == 1


class SharedTask(TinyTask):
    """The head is reused twice (shared parameters listed under two structured names)."""

    def __init__(self):
        super().__init__()
        self.net.register_child(self.net.head, "head_again")

    def loss(self, batch):
        x, y = batch
        feat = self.net.body(mx.nd.array(x))
        l2 = ((self.net.head(feat) - mx.nd.array(y)) ** 2).mean()
        return l2, {}


def test_shared_parameters_are_updated_once(tmp_path):
    task = SharedTask()
    task.net.body[3]._rate = 0.0  # no dropout: the manual gradient must see the same graph
    named = task.net._collect_params_with_prefix()
    assert named["head.weight"] is named["head_again.weight"]
    before = named["head.weight"].data().asnumpy().copy()
    batch = (X[:8], Y[:8])
    with autograd.record():
        loss, _ = task.loss(batch)
    loss.backward()
    grad = named["head.weight"].grad().asnumpy().copy()
    unique = {id(p): p for p in named.values() if p.grad_req != "null"}.values()
    norm = math.sqrt(sum(float((p.grad().asnumpy().astype(np.float64) ** 2).sum()) for p in unique))
    # clipping sees each shared parameter once (counting it twice would change the norm)
    cfg = train_cfg(EPOCHS=1, MOMENTUM=0.0, WD=0.0, WARMUP_ITERS=0, LR_STEPS=[], LR=0.1,
                    CLIP_GRAD_NORM=norm / 2)
    summary = fit(task, lambda epoch: [batch], cfg, str(tmp_path))
    assert summary["final_losses"]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    np.testing.assert_allclose(named["head.weight"].data().asnumpy(), before - 0.1 * grad / 2, rtol=1e-5,
                               atol=1e-7)


def test_crash_during_save_leaves_previous_checkpoint_latest(tmp_path, monkeypatch):
    import lib.train.checkpoint as checkpoint_module
    task = TinyTask()
    trainer = gluon.Trainer(task.net.collect_params(), "sgd", {"momentum": 0.9}, update_on_kvstore=False)
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, task.net, trainer, iteration=6)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_trainer_states", crash)
    with pytest.raises(OSError, match="disk full"):
        manager.save(2, task.net, trainer, iteration=12)
    assert os.path.exists(manager.paths(2)["params"])  # written before the crash...
    assert manager.latest() == manager.paths(1)["json"]  # ...but epoch 2 is not complete
    assert manager.read()["iteration"] == 6


def _dead_pid():
    """A process id that no running process has (for a stale temporary file's name)."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid += 1


def _corrupt(manager, epoch, part):
    paths = manager.paths(epoch)
    if part == "params":                      # a copy cut short / a full disk: the first 40 % of the file
        data = open(paths["params"], "rb").read()
        open(paths["params"], "wb").write(data[:len(data) * 2 // 5])
    elif part == "json":
        open(paths["json"], "w").write('{"epoch": 2, "par')
    else:
        open(paths["states"], "wb").close()


@pytest.mark.parametrize("part", ["params", "json", "states"])
def test_resume_falls_back_from_a_corrupted_latest_checkpoint_and_removes_stale_temporaries(tmp_path, part):
    """Epoch 2's checkpoint is unreadable: resuming says so and continues from epoch 1, and the result is
    bit-identical to an uninterrupted run (the oracle); the temporaries of dead writers are removed."""
    straight = TinyTask()
    fit(straight, tiny_data, train_cfg(OPTIMIZER="adam", EPOCHS=3), str(tmp_path / "a"))
    run = tmp_path / "b"
    fit(TinyTask(), tiny_data, train_cfg(OPTIMIZER="adam", EPOCHS=2), str(run))
    manager = CheckpointManager(str(run))
    assert manager.list_epochs() == [1, 2]
    _corrupt(manager, 2, part)
    dead, alive = _dead_pid(), os.getppid()
    stale = [run / f"ckpt-0003.params.tmp{dead}", run / f"history.json.tmp{dead}", run / f"loss.tmp{dead}.png"]
    for path in stale:
        path.write_bytes(b"half written")
    live = run / f"ckpt-0003.json.tmp{alive}"            # a writer that still runs: kept
    live.write_text("{")
    resumed = TinyTask(init_seed=99)
    summary = fit(resumed, tiny_data, train_cfg(OPTIMIZER="adam", EPOCHS=3), str(run))
    assert summary["start_epoch"] == 1 and summary["iterations"] == 18
    log_text = (run / "train.log").read_text()
    assert f"cannot be read, resuming from epoch 1 ({manager.paths(1)['json']}) instead" in log_text
    assert os.path.basename(manager.paths(2)[part]) in log_text          # the unreadable file is named
    assert "removed 3 temporary file(s)" in log_text
    assert not any(p.exists() for p in stale) and live.exists()
    a, b = params_of(straight.net), params_of(resumed.net)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert manager.list_epochs() == [1, 2, 3] and manager.read(2)["epoch"] == 2     # epoch 2 written again


def test_corrupted_checkpoints_without_a_readable_one_name_the_newest_file(tmp_path):
    task = TinyTask()
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, task.net)
    manager.save(2, task.net)
    _corrupt(manager, 1, "params")
    _corrupt(manager, 2, "json")
    with pytest.raises(CheckpointError, match=r"ckpt-0002\.json: invalid JSON at line 1.*and no earlier checkpoint "
                                              r".* can be read: .*ckpt-0001\.params: cannot read parameters "
                                              r"\(\d+ bytes: truncated"):
        manager.load(task.net)
    with pytest.raises(CheckpointError, match=r"ckpt-0002\.json: invalid JSON"):   # asked for: no fallback
        manager.load(task.net, checkpoint=2)
    wrong = TinyTask(hidden=6)                      # another network is not "corrupt": no fallback either
    manager.save(3, task.net)
    with pytest.raises(CheckpointError, match=r"ckpt-0003\.params does not match"):
        manager.load(wrong.net)


def test_short_cosine_run_with_iteration_warmup_is_a_valid_config():
    # 5 epochs with a 10-iteration warm-up: valid whenever an epoch has more than 2 iterations;
    # the early key check must not compare 10 warm-up iterations with a horizon of 5
    from lib.train import training_config
    cfg = training_config(dict(LR=0.01, LR_SCHEDULE="cosine", EPOCHS=5, WARMUP_ITERS=10))
    sched = build_lr_schedule(cfg, iters_per_epoch=64)
    assert sched(10) == pytest.approx(0.01) and sched(320) == pytest.approx(0.0)
