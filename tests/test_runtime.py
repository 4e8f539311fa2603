"""lib.runtime: thread defaults (respecting the user's choice) and inference hybridization."""
import os
import subprocess
import sys

import numpy as np

CODE = "import lib, os; print(lib.THREADS, lib.THREADS_SOURCE, os.environ.get('OMP_NUM_THREADS'))"


def run_clean(env_updates, drop=("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_updates)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_threads_default_to_core_count():
    from lib.runtime import cpu_count
    threads, source, omp = run_clean({})
    assert (int(threads), source, int(omp)) == (cpu_count(), "default", cpu_count())


def test_user_thread_setting_is_kept():
    assert run_clean({"OMP_NUM_THREADS": "1"}) == ["1", "user", "1"]
    threads, source, omp = run_clean({"MXNET_OMP_MAX_THREADS": "1"})
    assert (threads, source, omp) == ("1", "user", "None")


def test_hybridize_for_inference_keeps_outputs():
    import mxnet as mx
    from mxnet.gluon import nn
    from lib.runtime import get_context, hybridize_for_inference
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=(1, 3, 16, 16))
    ref = net(x).asnumpy()
    hybridize_for_inference(net, get_context("cpu"))
    np.testing.assert_allclose(net(x).asnumpy(), ref, rtol=1e-4, atol=1e-5)
    assert get_context("gpu:1") == mx.gpu(1)


THREAD_COUNT_CODE = """
import os
import lib, mxnet as mx
def threads(): return len(os.listdir("/proc/self/task"))
(mx.nd.ones((64, 64)) * 2).asnumpy()            # the engine and its OpenMP team are up
before = threads()
big = mx.nd.ones((4_000_000,))
mx.nd.array(big.asnumpy()).wait_to_read()       # large host copies, as a checkpoint makes
print(before, threads(), os.environ.get("MXNET_CPU_PARALLEL_SIZE"))
"""


def host_copy_threads(env_updates):
    env = {k: v for k, v in os.environ.items() if k != "MXNET_CPU_PARALLEL_SIZE"}
    env.update(env_updates)
    out = subprocess.run([sys.executable, "-c", THREAD_COUNT_CODE], env=env, capture_output=True,
                         text=True, check=True)
    before, after, size = out.stdout.split()
    return int(before), int(after), size


def test_large_host_copies_start_no_second_openmp_team():
    # the oracle: MXNet's own default (parallel copies) starts a team of threads in the Python thread
    if not os.path.isdir("/proc/self/task"):
        import pytest
        pytest.skip("counting threads needs /proc (Linux)")
    from lib.runtime import SERIAL_COPY_SIZE
    before, after, size = host_copy_threads({"OMP_NUM_THREADS": "2"})
    assert (after, size) == (before, SERIAL_COPY_SIZE)
    before, after, size = host_copy_threads({"OMP_NUM_THREADS": "2", "MXNET_CPU_PARALLEL_SIZE": "200000"})
    assert after > before and size == "200000"   # the user's choice is kept
