"""Several devices and several workers through the real training paths: lib.train.Trainer, the
families' train functions and their entry points, started by ``python -m lib.tools.launch``.

Oracles: the same Trainer on one context with the same total batch; one process over two contexts
whose batch is the union of the workers' batches (the samples are dealt out by seed); an uninterrupted
run for resume; the launcher's own exit code and last line; the files on disk (rank 0 alone writes).

Thread count: the jobs and their single-process references all run with OMP_NUM_THREADS=1. The tiny
M2Det normalises 1x1 maps over 2 images (BatchNorm per device), which turns the last-bit differences
of oneDNN's multi-threaded sums into visible ones (its first loss differs by 0.5% between 1 and 2
threads on the same weights and data); with equal thread counts the runs agree bit for bit here.
Every job is bounded (the launcher's --timeout; ours) and the test checks that none of its processes
is left behind.
"""
import json
import os
import re
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest
import yaml
from mxnet import gluon
from mxnet.gluon import nn

from lib.config import PROJECT_ROOT
from lib.train import Trainer
from lib.train.distributed import split_batch
from test_distributed import JOB_TIMEOUT, _assert_reaped, _launch

M2DET_TINY = os.path.join(PROJECT_ROOT, "experiments", "m2det", "cfgs", "tiny.yaml")
M2DET_ENTRY = os.path.join(PROJECT_ROOT, "experiments", "m2det", "train_test.py")
RFCN_TINY = os.path.join(PROJECT_ROOT, "experiments", "rfcn", "cfgs", "rfcn_tiny.yaml")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
OUTSIDE_LAUNCHER = ("error: TRAIN.KVSTORE = 'dist_sync' needs a job started by the launcher: "
                    "python -m lib.tools.launch -n WORKERS -s SERVERS -- <this command>")
# float32 sums taken in another order (workers on the servers vs contexts in one process)
RTOL, ATOL = 1e-5, 1e-6


# ----------------------------------------------------------------------------- data and configs

def _write_csv_dataset(root, count=12):
    """``count`` 80x60 images of noise (not flat: BatchNorm on flat images divides by ~0) with one
    red box each, as a CSV dataset."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.RandomState(0)
    rows = []
    for i in range(count):
        image = rng.randint(0, 256, (60, 80, 3)).astype(np.uint8)
        x1, y1 = 5 + 3 * i, 4 + 2 * i
        cv2.rectangle(image, (x1, y1), (x1 + 24, y1 + 19), (0, 0, 255), -1)
        cv2.imwrite(os.path.join(root, f"img{i}.png"), image)
        rows.append(f"img{i}.png,{x1},{y1},{x1 + 25},{y1 + 20},red")
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(root, "classes.csv"), "w") as f:
        f.write("red,0\n")
    return os.path.join(root, "train.csv"), os.path.join(root, "classes.csv")


@pytest.fixture
def m2det_cfg(tmp_path):
    """The tiny M2Det on 12 images: 2 images per worker and step, 3 steps per epoch with 2 workers."""
    annotations, classes = _write_csv_dataset(str(tmp_path / "data"))
    path = tmp_path / "tiny_dist.yaml"
    path.write_text(yaml.safe_dump({
        "_BASE_": M2DET_TINY,
        "DATASET": {"TRAIN": {"FORMAT": "csv", "ANNOTATIONS": annotations, "CLASSES": classes}},
        "TRAIN": {"BATCH_SIZE": 2, "LR": 0.01, "LR_SCALING": "linear", "EVALUATE": False, "SEED": 3}}))
    return str(path), annotations, classes


def _params(path):
    return {name: value.asnumpy() for name, value in mx.nd.load(str(path)).items()}


def _assert_same_parameters(got, expected, what):
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {name}")


def _run_entry(args, timeout=JOB_TIMEOUT):
    """One training process (the single-process reference), one thread, bounded."""
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, **ONE_THREAD)
    env.pop("DMLC_ROLE", None)
    return subprocess.run([sys.executable] + args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- two contexts, one process

class _SmallTask:
    """A conv net without BatchNorm for lib.train.Trainer: each context's loss is the summed loss of
    its slice of the batch over the WHOLE batch's size, so the contexts' losses sum to the batch mean."""

    def __init__(self, contexts, seed=5):
        self.contexts = contexts
        self.net = nn.HybridSequential()
        self.net.add(nn.Conv2D(4, 3, padding=1, activation="relu"), nn.Conv2D(4, 3, strides=2, activation="relu"),
                     nn.GlobalAvgPool2D(), nn.Dense(3))
        mx.random.seed(seed)
        self.net.initialize(mx.init.Xavier(), ctx=contexts)
        self.net(mx.nd.zeros((1, 3, 8, 8), ctx=contexts[0]))
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def loss(self, batch):
        images, labels = batch
        parts = split_batch((mx.nd.array(images), mx.nd.array(labels)), self.contexts)
        losses = [self.loss_fn(self.net(x.as_in_context(ctx)), y.as_in_context(ctx)).sum() / len(images)
                  for ctx, (x, y) in zip(self.contexts, parts)]
        return losses, {}


def test_two_cpu_contexts_train_like_one_context_with_the_same_total_batch_through_the_trainer(tmp_path):
    """2 epochs x 3 steps of 8 samples, SGD with momentum, weight decay and an active gradient clip,
    through lib.train.Trainer (kvstore 'device' sums the contexts' gradients). Tolerance: 1e-5 relative
    + 1e-6 absolute (float32 sums in another order). The log says where it ran."""
    rng = np.random.RandomState(1)
    images = rng.standard_normal((2, 3, 8, 3, 8, 8)).astype(np.float32)     # epoch, step, batch, C, H, W
    labels = rng.randint(0, 3, (2, 3, 8)).astype(np.float32)
    cfg = {"OPTIMIZER": "sgd", "LR": 0.2, "MOMENTUM": 0.9, "WD": 1e-3, "EPOCHS": 2, "BATCH_SIZE": 8,
           "CLIP_GRAD_NORM": 0.5, "LOG_EVERY": 1, "PROGRESS": False, "KVSTORE": "device"}
    results, starts = {}, {}
    for name, contexts in (("one", [mx.cpu(0)]), ("two", [mx.cpu(0), mx.cpu(1)])):
        task = _SmallTask(contexts)
        starts[name] = {k: p.data().asnumpy() for k, p in task.net._collect_params_with_prefix().items()}
        out = tmp_path / name
        summary = Trainer(task, lambda epoch: list(zip(images[epoch], labels[epoch])), cfg, str(out),
                          ctx=contexts).train()
        assert summary["iterations"] == 6 and (summary["rank"], summary["workers"]) == (0, 1)
        copies = {k: [d.asnumpy() for d in p.list_data()] for k, p in task.net._collect_params_with_prefix().items()}
        for key, values in copies.items():      # every context holds the same parameters
            for value in values[1:]:
                np.testing.assert_array_equal(value, values[0], err_msg=key)
        results[name] = {k: v[0] for k, v in copies.items()}
        np.testing.assert_array_equal(_params(out / "ckpt-0002.params")["0.weight"], results[name]["0.weight"])
        log = (out / "train.log").read_text()
        where = "cpu(0), cpu(1)" if name == "two" else "cpu(0)"
        assert f"single worker, kvstore 'device', contexts [{where}]" in log
        per_context = 8 // len(contexts)
        assert f"effective batch 8 = {per_context} per context x {len(contexts)} context(s) x 1 worker(s)" in log
        norms = [float(x) for x in re.findall(r"grad_norm ([0-9.]+)", log)]
        assert len(norms) >= 6 and max(norms) > cfg["CLIP_GRAD_NORM"]      # the clip did act
    _assert_same_parameters(starts["two"], starts["one"], "the same start")
    _assert_same_parameters(results["two"], results["one"], "2 contexts vs 1")
    assert max(float(np.abs(results["one"][k] - starts["one"][k]).max()) for k in results["one"]) > 1e-2   # trained


# ----------------------------------------------------------------------------- M2Det on two workers

def _m2det_job(cfg_path, out_dir, tmp_path, *sets):
    args = ["-n", "2", "-s", "1", "--", sys.executable, M2DET_ENTRY, "--cfg", cfg_path,
            "--set", f"OUTPUT_DIR={out_dir}", "--set", "TRAIN.KVSTORE=dist_sync"]
    for item in sets:
        args += ["--set", item]
    return _launch(args, tmp_path, extra_env=ONE_THREAD)


def _worker_lines(result, text):
    """The launcher's worker labels of the output lines (stdout and stderr) containing ``text``."""
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    return sorted(re.match(r"\[(worker \d)\]", line).group(1) for line in lines
                  if text in line and line.startswith("[worker"))


@pytest.mark.slow
def test_m2det_two_workers_equal_one_process_over_both_batches_and_resume_from_rank_0(m2det_cfg, tmp_path):
    """experiments/m2det/train_test.py under the launcher (1 scheduler, 1 server, 2 workers, dist_sync,
    2 images per worker and step, LR 0.01 tuned for 2 images, linear scaling) against the same entry
    point in one process over CONTEXTS [cpu(0), cpu(1)] with 4 images per step and LR 0.02 tuned for
    4: per step the same 4 images, each context / worker normalising its own 2 (BatchNorm per device).
    Epoch 1 by a job; epoch 2 by the same command with TRAIN.EPOCHS=2, which resumes from rank 0's
    checkpoint on both workers; both checkpoints equal the uninterrupted reference's (tolerance
    RTOL / ATOL: float32 sums in another order; here the trained parameters came out bit-equal and
    the running statistics of epoch 2 within 3e-7, averaged at epoch 1 in the job, only when saving
    in the reference). The Trainer checks that both workers end with the same parameters (else the
    job would fail)."""
    cfg_path, _, _ = m2det_cfg
    reference = tmp_path / "reference"
    done = _run_entry([M2DET_ENTRY, "--cfg", cfg_path, "--set", f"OUTPUT_DIR={reference}",
                       "--set", "CONTEXTS=[cpu(0), cpu(1)]", "--set", "TRAIN.BATCH_SIZE=4", "--set", "TRAIN.LR=0.02",
                       "--set", "TRAIN.EPOCHS=2"])
    assert done.returncode == 0, done.stderr[-3000:]
    log = (reference / "train.log").read_text()
    assert ("single worker, kvstore 'device', contexts [cpu(0), cpu(1)]; effective batch 4 = 2 per context x "
            "2 context(s) x 1 worker(s); LR 0.02 (linear scaling of 0.02 tuned for batch 4)") in log
    assert "epoch 1 iter 3/3" in log and "epoch 2 iter 3/3" in log

    job = tmp_path / "job"
    result, tag = _m2det_job(cfg_path, job, tmp_path, "TRAIN.EPOCHS=1")
    _assert_reaped(tag)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result
    assert _worker_lines(out, "of 2 workers (kvstore dist_sync") == ["worker 0", "worker 1"]
    assert _worker_lines(out, "effective batch 4 = 2 per context x 1 context(s) x 2 worker(s); LR 0.02 "
                              "(linear scaling of 0.01 tuned for batch 2)") == ["worker 0", "worker 1"]
    assert len(_worker_lines(out, "saved checkpoint")) == 1          # rank 0 alone writes
    assert "epoch 1 iter 3/3" in (job / "train.log").read_text()      # 3 steps per worker
    first = _params(job / "ckpt-0001.params")
    _assert_same_parameters(first, _params(reference / "ckpt-0001.params"), "epoch 1")
    second = _params(reference / "ckpt-0002.params")
    assert max(float(np.abs(first[k] - second[k]).max()) for k in first) > 1e-4   # epoch 2 trains on

    result, tag = _m2det_job(cfg_path, job, tmp_path, "TRAIN.EPOCHS=2")
    _assert_reaped(tag)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _worker_lines(result, f"resumed from {job / 'ckpt-0001.json'} (epoch 1, iteration 3)") == \
        ["worker 0", "worker 1"]
    _assert_same_parameters(_params(job / "ckpt-0002.params"), _params(reference / "ckpt-0002.params"), "epoch 2")
    history = json.loads((job / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]


def test_a_config_error_on_every_worker_ends_the_job_with_its_one_line_message(m2det_cfg, tmp_path):
    """A freeze pattern that names no layer: every worker has joined the kvstore when the Trainer
    finds it, prints one line and exits 2 without waiting for the others at ps-lite's exit barrier;
    the launcher stops the job and repeats that line."""
    cfg_path, _, _ = m2det_cfg
    result, tag = _m2det_job(cfg_path, tmp_path / "job", tmp_path, "TRAIN.FREEZE_PATTERNS=[no_such_layer]")
    _assert_reaped(tag)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"launch: worker [01] failed \(exit code 2\): error: FREEZE_PATTERNS: pattern "
                        r"'no_such_layer' matches no parameter \(e\.g\. .*\)", last), last
    assert len(_worker_lines(result, "error: FREEZE_PATTERNS")) >= 1


# ----------------------------------------------------------------------------- every train entry point

def _outside_launcher(monkeypatch):
    for name in ("DMLC_ROLE", "DMLC_NUM_WORKER"):
        monkeypatch.delenv(name, raising=False)


def _entry_main(script):
    import runpy
    return runpy.run_path(os.path.join(PROJECT_ROOT, script), run_name="entry_point_under_test")["main"]


def test_every_train_entry_point_takes_the_kvstore_key_and_needs_the_launcher_for_it(m2det_cfg, tmp_path, capsys,
                                                                                  monkeypatch):
    """--set TRAIN.KVSTORE=dist_sync is a known key everywhere; outside the launcher each entry point
    stops with the one line of create_kvstore and exit code 2, before writing OUTPUT_DIR."""
    _outside_launcher(monkeypatch)
    cfg_path, annotations, classes = m2det_cfg
    csv_spec = f"{{FORMAT: csv, ANNOTATIONS: {annotations}, CLASSES: {classes}}}"
    synthetic_root = str(tmp_path / "synthetic")
    runs = {
        "experiments/m2det/train_test.py": ["--cfg", cfg_path, "--set", "TRAIN.KVSTORE=dist_sync"],
        "experiments/rfcn/train_test.py": ["--cfg", RFCN_TINY, "--set", "TRAIN.KVSTORE=dist_sync",
                                           f"DATASET.TRAIN.ROOT={synthetic_root}"],
        "experiments/fgfa_rfcn/train_test.py": [
            "--cfg", os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml"),
            "--set", "TRAIN.KVSTORE=dist_sync", f"DATASET.TRAIN.ROOT={synthetic_root}"],
        "experiments/lstm_ssd/train_test.py": [
            "--cfg", os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "cfgs", "tiny_test.yaml"),
            "--set", "TRAIN.KVSTORE=dist_sync", f"DATASET.TRAIN.ROOT={synthetic_root}"],
        "experiments/custom/train.py": [
            "--cfg", os.path.join(PROJECT_ROOT, "experiments", "custom", "m2det.yaml"), "--set", "TRAIN.KVSTORE=dist_sync",
            "--set", f"DATASET.TRAIN={csv_spec}", "--set", f"DATASET.VAL={csv_spec}"],
    }
    for script, args in runs.items():
        out_dir = tmp_path / script.replace("/", "_")
        code = _entry_main(script)(args + ["--set", f"OUTPUT_DIR={out_dir}"])
        err = capsys.readouterr().err
        assert code == 2, (script, err[-2000:])
        assert err.strip().splitlines()[-1] == OUTSIDE_LAUNCHER, (script, err[-2000:])
        assert not out_dir.exists(), script
    assert not os.path.exists(synthetic_root)        # stopped before generating the training data
    from m2det import cli
    out_dir = tmp_path / "m2det-train"
    # the console script's exit status (lib.cli: one 'error:' line, 2)
    assert cli.train_main(["--cfg", cfg_path, "--set", "TRAIN.KVSTORE=dist_sync", "--snapshot-path", str(out_dir),
                           "csv", annotations, classes]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == OUTSIDE_LAUNCHER
    assert not out_dir.exists()


@pytest.mark.slow
def test_rfcn_two_workers_rank_0_alone_writes_its_output_dir(tmp_path):
    """The tiny R-FCN for 2 steps per worker under the launcher, each worker given its own OUTPUT_DIR
    (w<launch index>): the folder of the worker the scheduler made rank 0 holds the run (run folder,
    checkpoint, logs, TensorBoard, the test's reports); the other worker's folder was never created."""
    synthetic_root = tmp_path / "synthetic"
    # the data first, in this process: two workers generating one folder at once would race
    from fgfa.config import get_config
    from fgfa.train import load_train_set
    cfg = get_config(RFCN_TINY, [f"DATASET.TRAIN.ROOT={synthetic_root}"])
    assert len(load_train_set(cfg)) == 24      # 2 videos of 12 frames
    command = (f"exec {sys.executable} experiments/rfcn/train_test.py --cfg {RFCN_TINY} --set "
               f"OUTPUT_DIR={tmp_path}/w$DMLC_WORKER_ID DATASET.TRAIN.ROOT={synthetic_root} "
               f"DATASET.VAL.ROOT={synthetic_root} TRAIN.EPOCHS=1 TRAIN.MAX_BATCHES=4 TRAIN.LOG_EVERY=1 "
               f"TRAIN.KVSTORE=dist_sync")
    result, tag = _launch(["-n", "2", "-s", "1", "--", "sh", "-c", command], tmp_path, extra_env=ONE_THREAD)
    _assert_reaped(tag)
    assert result.returncode == 0, result.stderr[-3000:]
    chief = [line for line in (result.stdout + result.stderr).splitlines()
             if "on rank 0 of 2 workers (kvstore dist_sync" in line]
    assert len(chief) == 1
    chief_index = re.match(r"\[worker (\d)\]", chief[0]).group(1)
    other_index = "1" if chief_index == "0" else "0"
    written = tmp_path / f"w{chief_index}"
    for name in ("run.json", "config.yaml", "ckpt-0001.params", "ckpt-0001.states", "ckpt-0001.json",
                 "train_config.yaml", "history.json", "loss_curve.png", "train_test.log", "tb",
                 "test/metrics.json"):
        assert (written / name).exists(), name
    assert "epoch 1 iter 2/2" in (written / "train_test.log").read_text()   # 4 batches dealt out: 2 each
    assert not (tmp_path / f"w{other_index}").exists()
    assert _worker_lines(result, "epoch 1 iter 2/2") == [f"worker {chief_index}"]
    assert _worker_lines(result, "rank 1 of 2 workers") == [f"worker {other_index}"]


@pytest.mark.slow
def test_lstm_ssd_two_workers_train_and_rank_0_alone_writes_its_output_dir(tmp_path):
    """The streaming family under the launcher: the tiny LSTM-SSD's clips (UNROLL frames each) dealt out
    by rank, 1 step per worker; the job ends cleanly, the folder of the worker the scheduler made rank 0
    holds the model and the training's reports, the other worker's folder was never created."""
    spec = {"FORMAT": "synthetic", "ROOT": str(tmp_path / "synthetic"), "SEED": 14, "NUM_VIDEOS": 2,
            "NUM_FRAMES": 4, "WIDTH": 128, "HEIGHT": 128, "NUM_CLASSES": 2, "MAX_OBJECTS": 1, "SPLIT": "train"}
    cfg = tmp_path / "lstm_dist.yaml"
    cfg.write_text(yaml.safe_dump({"_BASE_": os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "cfgs",
                                                          "tiny_test.yaml"),
                                   "PHASE": ["train"], "DATASET": {"TRAIN": spec, "VAL": spec}}))
    command = (f"exec {sys.executable} experiments/lstm_ssd/train_test.py --cfg {cfg} --set "
               f"OUTPUT_DIR={tmp_path}/w$DMLC_WORKER_ID TRAIN.KVSTORE=dist_sync TRAIN.LOG_EVERY=1")
    result, tag = _launch(["-n", "2", "-s", "1", "--", "sh", "-c", command], tmp_path, extra_env=ONE_THREAD)
    _assert_reaped(tag)
    assert result.returncode == 0, result.stderr[-3000:]
    chief = _worker_lines(result, "on rank 0 of 2 workers (kvstore dist_sync")
    assert len(chief) == 1, (result.stdout + result.stderr)[-3000:]
    chief_index = chief[0].split()[-1]
    other_index = "1" if chief_index == "0" else "0"
    assert _worker_lines(result, "rank 1 of 2 workers") == [f"worker {other_index}"]
    written = tmp_path / f"w{chief_index}"
    for name in ("model.params", "run.json", "config.yaml", "history.json"):
        assert (written / name).exists(), (name, sorted(os.listdir(written)))
    assert not (tmp_path / f"w{other_index}").exists()
