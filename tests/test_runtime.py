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
