"""Several devices and several workers on MXNet's kvstore (lib.train.distributed, lib.tools.launch).

Oracles: gluon's own split_and_load, one context / one process trained on the same total batch
(plain gluon.Trainer without a kvstore), hand-computed placements and learning rates, counting.
Every job started here is bounded (launcher --timeout, subprocess timeouts) and the tests check
that no process of the job is left behind (a tag in its environment).
"""
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
import uuid

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

from lib.config import PROJECT_ROOT, ConfigError
from lib.tools import launch
from lib.train import dist_check
from lib.train.distributed import (DistributedInfo, create_kvstore, describe_scaling,
                                   effective_batch_size, parse_contexts, scale_learning_rate, shard,
                                   split_batch)

JOB_TIMEOUT = 90  # seconds: the launcher's --timeout; the subprocess gets a little more


# ----------------------------------------------------------------------------- contexts

@pytest.mark.parametrize("value, expected", [
    ("cpu", [mx.cpu(0)]),
    ("cpu(1)", [mx.cpu(1)]),
    ("[cpu(0), cpu(1)]", [mx.cpu(0), mx.cpu(1)]),
    (["cpu(0)", "cpu(1)"], [mx.cpu(0), mx.cpu(1)]),
    ("cpu:0,cpu:2", [mx.cpu(0), mx.cpu(2)]),
    (mx.cpu(3), [mx.cpu(3)]),
    ([mx.cpu(0), "cpu:1"], [mx.cpu(0), mx.cpu(1)]),
])
def test_parse_contexts_accepts_the_config_forms(value, expected):
    assert parse_contexts(value) == expected


def test_parse_contexts_reads_gpu_lists_without_checking_the_machine():
    assert parse_contexts("[gpu(0), gpu(1)]", check_available=False) == [mx.gpu(0), mx.gpu(1)]
    assert parse_contexts("gpu:1", check_available=False) == [mx.gpu(1)]


@pytest.mark.parametrize("value, why", [
    ("tpu(0)", "'tpu(0)' is not a device"),
    ("[cpu(0), cpu(0)]", "cpu(0) is listed twice"),
    ("[]", "no device listed"),
    ("cpu(0),,cpu(1)", "an empty entry"),
    ("gpu(-1)", "'gpu(-1)' is not a device"),
    (3, "a int is not a device list"),
    ("gpu(99)", "gpu(99) requested but this MXNet sees"),
])
def test_parse_contexts_errors_name_the_key_and_value(value, why):
    with pytest.raises(ConfigError) as err:
        parse_contexts(value, key="TRAIN.CONTEXTS")
    message = str(err.value)
    assert message.startswith("TRAIN.CONTEXTS: ") and why in message and repr(value) in message


# ----------------------------------------------------------------------------- batches

def test_split_batch_arrays_match_split_and_load_and_keep_numpy_on_the_host():
    ctxs = [mx.cpu(0), mx.cpu(1)]
    data = mx.nd.arange(5 * 3).reshape((5, 3))
    parts = split_batch(data, ctxs, even_split=False)
    expected = gluon.utils.split_and_load(data, ctxs, even_split=False)
    assert [p.context for p in parts] == ctxs
    for got, want in zip(parts, expected):
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())
    host = np.arange(5 * 3).reshape((5, 3))
    halves = split_batch(host, ctxs, even_split=False)
    assert all(isinstance(h, np.ndarray) for h in halves)
    np.testing.assert_array_equal(np.concatenate(halves), host)
    assert [len(h) for h in halves] == [len(p) for p in expected]   # same cut as gluon: 3 + 2


def test_split_batch_tuples_cut_every_field_at_the_same_samples():
    # a video batch: clips as a per-sample list, images as an NDArray, boxes as ragged numpy arrays
    clips = [f"clip{i}" for i in range(4)]
    images = mx.nd.array(np.arange(4)[:, None, None, None] * np.ones((4, 3, 2, 2)))
    boxes = [np.full((i + 1, 4), i, np.float32) for i in range(4)]
    ctxs = [mx.cpu(0), mx.cpu(1)]
    parts = split_batch((clips, images, boxes), ctxs)
    assert len(parts) == 2
    for k, (part_clips, part_images, part_boxes) in enumerate(parts):
        samples = [2 * k, 2 * k + 1]
        assert part_clips == [f"clip{i}" for i in samples]
        assert part_images.context == ctxs[k]
        np.testing.assert_array_equal(part_images.asnumpy()[:, 0, 0, 0], samples)
        assert [int(b[0, 0]) for b in part_boxes] == samples


def test_split_batch_refuses_what_cannot_be_split():
    with pytest.raises(ValueError, match="evenly"):
        split_batch(mx.nd.zeros((3, 2)), [mx.cpu(0), mx.cpu(1)])
    with pytest.raises(ValueError, match="at least one sample per context"):
        split_batch([1], [mx.cpu(0), mx.cpu(1)], even_split=False)
    with pytest.raises(ValueError, match="different batch sizes"):
        split_batch((mx.nd.zeros((4, 1)), [1, 2]), [mx.cpu(0), mx.cpu(1)])


def _tiny_net(ctxs, seed=3):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(3, 3, padding=1, activation="relu"), nn.GlobalAvgPool2D(), nn.Dense(2))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    return net


def test_two_cpu_contexts_train_like_one_context_with_the_same_total_batch():
    """kvstore 'device' sums the two contexts' gradients: after 4 SGD steps (momentum, wd) the
    parameters equal one context's on the whole batch. Tolerance: 1e-5 relative + 1e-6 absolute
    (float32 sums taken in another order)."""
    rng = np.random.RandomState(0)
    images = rng.standard_normal((4, 8, 3, 6, 6)).astype(np.float32)   # 4 steps of 8 samples
    labels = rng.randint(0, 2, (4, 8)).astype(np.float32)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    results = []
    for ctxs, kvstore in (([mx.cpu(0), mx.cpu(1)], "device"), ([mx.cpu(0)], None)):
        net = _tiny_net(ctxs)
        net(mx.nd.zeros((1, 3, 6, 6), ctx=ctxs[0]))
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5, "momentum": 0.9, "wd": 1e-3},
                                kvstore=create_kvstore(kvstore), update_on_kvstore=False)
        DistributedInfo(kvstore, ctxs).sync_start(trainer, net)   # the kvstore set up before step 1
        for step in range(4):
            parts = split_batch((mx.nd.array(images[step]), mx.nd.array(labels[step])), ctxs)
            with autograd.record():
                losses = [loss_fn(net(x), y).sum() for x, y in parts]
            autograd.backward(losses)
            trainer.step(8)
        params = {name: [d.asnumpy() for d in p.list_data()] for name, p in net._collect_params_with_prefix().items()}
        results.append(params)
    two, one = results
    assert two.keys() == one.keys()
    moved = 0.0
    for name in one:
        np.testing.assert_array_equal(two[name][0], two[name][1])  # both contexts hold the same copy
        np.testing.assert_allclose(two[name][0], one[name][0], rtol=1e-5, atol=1e-6, err_msg=name)
        moved = max(moved, float(np.abs(one[name][0]).max()))
    assert moved > 0


# ----------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("n, workers", [(24, 2), (10, 3), (7, 4), (5, 1), (3, 5)])
def test_shard_covers_the_set_with_equal_sizes_and_the_stated_padding(n, workers):
    per_worker = -(-n // workers)
    padding = per_worker * workers - n
    for epoch in range(3):
        shards = [shard(n, rank, workers, seed=7, epoch=epoch) for rank in range(workers)]
        assert [len(s) for s in shards] == [per_worker] * workers
        everything = np.concatenate(shards)
        assert set(everything.tolist()) == set(range(n))
        counts = np.bincount(everything, minlength=n)
        assert counts.max() <= 2 and int((counts == 2).sum()) == padding   # repeats = the padding only
        # the repeated samples are the first `padding` of the epoch's shared order: rank 0 gets its
        # first element of that order at position 0, rank r its r-th at 0
        order_head = [s[0] for s in shards]
        repeated = sorted(np.flatnonzero(counts == 2).tolist())
        assert repeated == sorted(order_head[:padding])


def test_shard_reshuffles_every_epoch_and_repeats_from_the_seed():
    first = [shard(40, r, 2, seed=1, epoch=0) for r in range(2)]
    again = [shard(40, r, 2, seed=1, epoch=0) for r in range(2)]
    second = [shard(40, r, 2, seed=1, epoch=1) for r in range(2)]
    other_seed = shard(40, 0, 2, seed=2, epoch=0)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], second[0])
    assert set(first[0].tolist()) != set(second[0].tolist())     # a different split, not only order
    assert not np.array_equal(first[0], other_seed)
    assert len(set(first[0].tolist()) & set(first[1].tolist())) == 0


def test_shard_of_given_indices_and_bad_arguments():
    usable = np.array([3, 9, 4, 11, 20])
    parts = [shard(usable, r, 2, seed=0, epoch=0) for r in range(2)]
    assert set(np.concatenate(parts).tolist()) == set(usable.tolist())
    for args, match in [((5, 2, 2), "rank"), ((5, 0, 0), "num_workers"), (([], 0, 1), "empty")]:
        with pytest.raises(ValueError, match=match):
            shard(*args, seed=0, epoch=0)


# ----------------------------------------------------------------------------- batch and LR

def test_effective_batch_and_learning_rate_scaling_rules():
    assert effective_batch_size(1, 4, 2) == 8
    assert scale_learning_rate(2.5e-4, 4, 8, "linear") == pytest.approx(5e-4)
    assert scale_learning_rate(0.01, 8, 32, "sqrt") == pytest.approx(0.02)
    assert scale_learning_rate(0.01, 8, 32, "none") == 0.01
    lr, line = describe_scaling(0.01, 4, 2, 2, 2, "linear")
    assert lr == pytest.approx(0.02)
    assert "effective batch 8 = 2 per context x 2 context(s) x 2 worker(s)" in line
    with pytest.raises(ValueError, match="rule"):
        scale_learning_rate(0.1, 1, 2, "cubic")
    with pytest.raises(ValueError, match="num_workers"):
        effective_batch_size(1, 1, 0)


def test_single_process_kvstores_are_rank_0_of_1_and_dist_needs_the_launcher(monkeypatch):
    info = DistributedInfo(create_kvstore("device"), [mx.cpu(0), mx.cpu(1)])
    assert (info.rank, info.num_workers, info.is_chief, info.distributed) == (0, 1, True, False)
    assert info.check_same_on_all([3, 7], "epoch, iteration") == [3.0, 7.0]
    monkeypatch.delenv("DMLC_ROLE", raising=False)
    with pytest.raises(ConfigError, match=r"TRAIN.KVSTORE = 'dist_sync' needs a job started by the launcher"):
        create_kvstore("dist_sync")
    with pytest.raises(ConfigError, match="asynchronous"):
        create_kvstore("dist_async")
    monkeypatch.setenv("DMLC_ROLE", "worker")
    monkeypatch.setenv("DMLC_NUM_WORKER", "2")
    with pytest.raises(ConfigError, match="one of 2 workers"):
        create_kvstore("device")


# ----------------------------------------------------------------------------- watchdog

def test_watchdog_ends_a_stuck_process_with_a_message_and_leaves_a_kicked_one_alone():
    stuck = ("from lib.train.distributed import Watchdog\n"
             "import time\n"
             "w = Watchdog(0.5, what='pull of step 3', label='rank 1').start()\n"
             "time.sleep(30)\n")
    alive = ("from lib.train.distributed import Watchdog\n"
             "import time\n"
             "w = Watchdog(0.6, label='rank 0').start()\n"
             "for _ in range(15):\n"
             "    time.sleep(0.1); w.kick()\n"
             "with w.phase('evaluation on rank 0', timeout=5):\n"
             "    time.sleep(1.0)\n"
             "print('done')\n")
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    out = subprocess.run([sys.executable, "-c", stuck], env=env, capture_output=True, text=True, timeout=25)
    assert out.returncode == 124
    assert "rank 1: no progress for 0.5 s during pull of step 3" in out.stderr
    out = subprocess.run([sys.executable, "-c", alive], env=env, capture_output=True, text=True, timeout=25)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr


# ----------------------------------------------------------------------------- launcher: arguments

def _run_main(argv, capsys):
    code = launch.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, problem", [
    (["-n", "2"], "no train command: put it after '--'"),
    (["-n", "2", "--"], "no train command after '--'"),
    (["-n", "0", "--", "python", "x.py"], "-n 0: a job needs at least 1 worker"),
    (["-n", "1", "-s", "0", "--", "python", "x.py"], "-s 0"),
    (["-n", "two", "--", "python", "x.py"], "invalid int value: 'two'"),
    (["-n", "1", "--ssh", "--", "python", "x.py"], "--ssh needs --hosts FILE"),
    (["-n", "1", "--", "no-such-program-xyz"], "cannot run 'no-such-program-xyz': command not found"),
    (["-n", "1", "--hosts", "/nonexistent/hosts.txt", "--", "python"], "--hosts /nonexistent/hosts.txt: cannot read it"),
])
def test_launcher_usage_errors_are_one_line_and_exit_2(argv, problem, capsys):
    code, out, err = _run_main(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and problem in err, err
    assert out == ""


@pytest.mark.parametrize("content, problem", [
    ("node1\nnode2 slots=two\n", ":2: cannot parse 'node2 slots=two'"),
    ("node1 slots=0\n", ":1: slots=0"),
    ("# only a comment\n\n", "no host listed"),
    ("a slots=1\nb slots=2\n", "offers 3 worker slot(s) but -n asks for 4 workers"),
])
def test_launcher_hosts_file_errors(content, problem, tmp_path, capsys):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(content)
    code, _, err = _run_main(["-n", "4", "--hosts", str(hosts), "--", "python", "train.py"], capsys)
    assert code == 2 and err.count("\n") == 1 and problem in err, err


def test_launcher_prints_one_ssh_command_per_process_with_its_environment(tmp_path, capsys, monkeypatch):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# two machines\nalice@10.0.0.1:2222 slots=2\n10.0.0.2   # second\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run_main(["-n", "3", "-s", "2", "--hosts", str(hosts), "--port", "9500", "--interface", "eth1",
                              "--env", "MY_SETTING=a b", "--", "python", "train.py", "--cfg", "my cfg.yaml"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("# ps-lite job: scheduler on 10.0.0.1:9500, 2 server(s), 3 worker(s) on 2 host(s)")
    labels = [line[2:] for line in lines[1:] if line.startswith("# ")]
    # scheduler on the first host, servers round-robin, workers fill the slots (2 on the first host)
    assert labels == ["scheduler@10.0.0.1", "server 0@10.0.0.1", "server 1@10.0.0.2",
                      "worker 0@10.0.0.1", "worker 1@10.0.0.1", "worker 2@10.0.0.2"]
    commands = [shlex.split(line) for line in lines[1:] if not line.startswith("#")]
    assert len(commands) == 6
    for label, argv in zip(labels, commands):
        on_first = label.endswith("10.0.0.1")
        assert argv[:4] == ["ssh", "-o", "BatchMode=yes", "-tt"]
        assert argv[4:-1] == (["-p", "2222", "alice@10.0.0.1"] if on_first else ["10.0.0.2"])
        remote = shlex.split(argv[-1])
        assert remote[:4] == ["cd", str(tmp_path), "&&", "env"]
        env = dict(item.split("=", 1) for item in remote[4:] if "=" in item and not item.startswith("-"))
        role = label.split("@")[0].split()[0]
        assert env["DMLC_ROLE"] == role
        assert (env["DMLC_PS_ROOT_URI"], env["DMLC_PS_ROOT_PORT"]) == ("10.0.0.1", "9500")
        assert (env["DMLC_NUM_WORKER"], env["DMLC_NUM_SERVER"], env["DMLC_INTERFACE"]) == ("3", "2", "eth1")
        assert env["MY_SETTING"] == "a b"
        if role == "worker":
            assert env["DMLC_WORKER_ID"] == label.split("@")[0].split()[1]
            assert remote[-4:] == ["python", "train.py", "--cfg", "my cfg.yaml"]
        else:
            assert remote[-2:] == ["-c", "import mxnet"]


# ----------------------------------------------------------------------------- launcher: jobs

def _job_processes(tag):
    """PIDs of processes whose environment carries ``tag`` (this user's only)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _launch(args, tmp_path, extra_env=None, timeout=JOB_TIMEOUT, grace=5):
    """Run the launcher as a user would; returns (CompletedProcess, tag). Bounded twice: the
    launcher's --timeout, and on our side SIGTERM (the launcher then stops its job) then SIGKILL."""
    tag = f"VIDEODET_TEST_JOB={uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, **(extra_env or {}))
    env[tag.split("=")[0]] = tag.split("=")[1]
    cmd = [sys.executable, "-m", "lib.tools.launch", "--timeout", str(timeout), "--grace", str(grace)] + args
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), tag


def _assert_reaped(tag):
    deadline = time.monotonic() + 5
    while _job_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _job_processes(tag)
    for pid in left:   # never leave them to the next test, but fail this one
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes of the job still running: {left}"


def _oracle_parameters(record, union_steps):
    """One process, one context, no kvstore, the same SGD on the union of the workers' batches."""
    images, labels = dist_check.make_data(record["samples"], record["image_size"], record["seed"])
    net = dist_check.build_net(record["seed"], [mx.cpu()], record["width"], record["image_size"])  # rank 0's seed
    trained = {n: p for n, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}
    assert sorted(trained) == ["1.bias", "1.weight", "3.bias", "3.weight"]   # the first conv is frozen
    trainer = gluon.Trainer(trained, "sgd", {"learning_rate": record["lr"], "momentum": 0.9, "wd": 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for chosen in union_steps:
        with autograd.record():
            loss = loss_fn(net(mx.nd.array(images[chosen])), mx.nd.array(labels[chosen])).sum()
        loss.backward()
        trainer.step(len(chosen))
    return {name: p.data().asnumpy() for name, p in net._collect_params_with_prefix().items()}


def _check_job_results(out_dir, num_workers, steps, batch):
    ranks = dist_check.load_ranks(str(out_dir))
    assert sorted(ranks) == list(range(num_workers))
    records = {r: ranks[r][0] for r in ranks}
    params = {r: ranks[r][1] for r in ranks}
    assert sorted(int(rec["launch_index"]) for rec in records.values()) == list(range(num_workers))
    # each worker ran its own batches: disjoint within a step and over the steps
    used = [i for rec in records.values() for step in rec["steps"] for i in step]
    assert len(used) == num_workers * steps * batch and len(set(used)) == len(used)
    for r in ranks:   # identical parameters on every worker, bit for bit
        for name, value in params[r].items():
            np.testing.assert_array_equal(value, params[0][name], err_msg=f"rank {r} {name}")
    union = [sum((records[r]["steps"][s] for r in sorted(ranks)), []) for s in range(steps)]
    expected = _oracle_parameters(records[0], union)
    initial = dist_check.build_net(records[0]["seed"], [mx.cpu()], records[0]["width"], records[0]["image_size"])
    initial = {name: p.data().asnumpy() for name, p in initial._collect_params_with_prefix().items()}
    for name, value in expected.items():
        # tolerance: float32 sums over the workers in another order than the single process's sum
        np.testing.assert_allclose(params[0][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert max(float(np.abs(expected[n] - initial[n]).max()) for n in expected) > 1e-3   # it did train


def test_launcher_dist_sync_two_workers_equal_one_process_over_their_union(tmp_path):
    """1 scheduler + 1 server + 2 workers, 3 steps of dist_sync on seeded shards. The workers start
    from different random weights (seed + 1000 * rank): rank 0's reach everyone by broadcast."""
    out_dir = tmp_path / "job"
    result, tag = _launch(["-n", "2", "-s", "1", "--", sys.executable, "-m", "lib.train.dist_check",
                           "--out", str(out_dir), "--steps", "3", "--batch", "4", "--samples", "24"], tmp_path)
    _assert_reaped(tag)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("[worker 0] dist_check: rank ") for line in lines)
    assert any(line.startswith("[worker 1] dist_check: rank ") for line in lines)
    _check_job_results(out_dir, num_workers=2, steps=3, batch=4)


MULTI_PRECISION_WORKER = """
import json, sys
import numpy as np
import mxnet as mx
from mxnet.kvstore.kvstore import _get_kvstore_server_command_type
from lib.train.distributed import DistributedInfo, create_kvstore, mark_finished
kv = create_kvstore("dist_sync")
info = DistributedInfo(kv)
if info.rank == 0:   # the state a server is in when its uninitialised flag happens to be set
    kv._send_command_to_servers(_get_kvstore_server_command_type("kSetMultiPrecision"), "")
info.barrier()
values = np.array([2.0594437123456789, 1.0 / 3.0, 1e10 + 0.5, -7.25])
mine = values if info.rank == 0 else np.zeros(4)
raw = mx.nd.array(mine, dtype=np.float64)
kv.init(90000, raw)          # what a float64 broadcast through the kvstore does
kv.pull(90000, out=raw)
small = mx.nd.array([[1, -2], [300, 4]], dtype=np.int8) if info.rank == 0 else mx.nd.zeros((2, 2), dtype=np.int8)
info.broadcast_from_chief([small])
print(json.dumps({"rank": info.rank, "raw": raw.asnumpy().tolist(), "exact": info.values_of_chief(mine).tolist(),
                  "same": info.check_same_on_all(values, "the values"), "int8": small.asnumpy().tolist()}))
mark_finished()
"""


def test_broadcasts_of_other_types_than_float32_stay_exact_on_a_multi_precision_server(tmp_path):
    """MXNet 1.9.1's server leaves ``multi_precision_`` uninitialised; when it is set, keys of other
    types are kept in float32. Set it on purpose (the command MXNet sends for a multi-precision
    optimizer): a float64 init + pull through the kvstore comes back rounded to float32 (the oracle
    that the state is reached), while broadcast_from_chief / values_of_chief / check_same_on_all
    give rank 0's float64 (and int8) values bit for bit."""
    result, tag = _launch(["-n", "2", "-s", "1", "--", sys.executable, "-c", MULTI_PRECISION_WORKER], tmp_path)
    _assert_reaped(tag)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line.split("] ", 1)[1]) for line in result.stdout.splitlines()
               if line.startswith("[worker") and '"rank"' in line]
    assert sorted(r["rank"] for r in records) == [0, 1]
    values = [2.0594437123456789, 1.0 / 3.0, 1e10 + 0.5, -7.25]
    rounded = np.asarray(values, np.float32).astype(np.float64).tolist()
    for record in records:
        if record["rank"] == 1:
            assert record["raw"] == rounded and rounded != values     # the lossy path
        assert record["exact"] == values and record["same"] == values
        assert record["int8"] == [[1, -2], [44, 4]]                   # int8(300) wraps to 44 on rank 0 too


def test_launcher_stops_the_job_when_a_worker_fails_and_names_its_error(tmp_path):
    result, tag = _launch(["-n", "2", "-s", "1", "--", sys.executable, "-m", "lib.train.dist_check",
                           "--out", str(tmp_path / "job"), "--fail-rank", "1"], tmp_path)
    _assert_reaped(tag)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("launch: worker ") and "failed (exit code 1)" in last
    assert last.endswith("RuntimeError: dist_check: simulated failure on rank 1 after step 1"), last
    assert not (tmp_path / "job" / "rank0.npz").exists()   # rank 0 was stopped, not finished


def test_workers_started_with_different_settings_stop_with_a_clear_message(tmp_path):
    """check_same_on_all in a real job: each worker gets --seed = its launch index."""
    script = f"exec {shlex.quote(sys.executable)} -m lib.train.dist_check --out {shlex.quote(str(tmp_path / 'job'))} " \
             f"--seed $DMLC_WORKER_ID"
    result, tag = _launch(["-n", "2", "-s", "1", "--", "sh", "-c", script], tmp_path)
    _assert_reaped(tag)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "dist_check: rank 1: --steps --batch --samples --seed --width --image-size is" in last, last
    assert "on rank 0" in last


def test_launcher_timeout_and_a_worker_that_never_joins_end_the_job(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    result, tag = _launch(["-n", "2", "-s", "1", "--"] + sleeper, tmp_path, timeout=2, grace=2)
    _assert_reaped(tag)
    assert result.returncode == 124
    assert "launch: the job ran longer than --timeout 2 s" in result.stderr
    # worker 0 ends at once without joining the kvstore, worker 1 (as the scheduler) waits for it
    one_quits = [sys.executable, "-c", "import os, time; os.environ['DMLC_WORKER_ID'] == '0' or time.sleep(120)"]
    result, tag = _launch(["-n", "2", "-s", "1", "--"] + one_quits, tmp_path, grace=2)
    _assert_reaped(tag)
    assert result.returncode == 1
    assert "launch: worker 0 exited 2 s ago but worker 1 still run(s)" in result.stderr


def test_launcher_ctrl_c_stops_every_process(tmp_path):
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]
    tag = f"VIDEODET_TEST_JOB={uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, VIDEODET_TEST_JOB=tag.split("=")[1])
    proc = subprocess.Popen([sys.executable, "-m", "lib.tools.launch", "-n", "2", "-s", "1", "--timeout", "60",
                             "--grace", "5", "--"] + sleeper, cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 40
        while len(seen) < 2 and time.monotonic() < deadline:   # both workers started
            line = proc.stdout.readline()
            if not line:
                break
            seen += [line] if line.rstrip().endswith("] up") else []
        assert len(seen) == 2, seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _assert_reaped(tag)
    assert proc.returncode == 130
    assert "launch: SIGINT: stopping every process of the job" in err


FAKE_SSH = """#!/bin/sh
# test double for ssh: skip the options and the host, run the remote command on this machine
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p) shift 2 ;;
    -t|-tt|-T) shift ;;
    *) break ;;
  esac
done
shift
exec sh -c "$*"
"""


def test_launcher_runs_the_hosts_commands_over_ssh(tmp_path):
    """--hosts --ssh with an ssh that runs its command here: the printed commands really start a
    job (2 servers: the kvstore spreads keys over both) that trains like one process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(FAKE_SSH)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("127.0.0.1\n127.0.0.1:2222\n")
    out_dir = tmp_path / "job"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result, tag = _launch(["-n", "2", "-s", "2", "--hosts", str(hosts), "--ssh", "--interface", "lo",
                           "--port", str(launch.free_port()), "--env", "VIDEODET_TEST_JOB", "--",
                           sys.executable, "-m", "lib.train.dist_check", "--out", str(out_dir)], tmp_path,
                          extra_env=env)
    _assert_reaped(tag)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(line.startswith("[worker 1@127.0.0.1] dist_check: rank") for line in result.stdout.splitlines())
    _check_job_results(out_dir, num_workers=2, steps=3, batch=4)
