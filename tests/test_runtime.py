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


CHILD_CODE = """
import warnings
import mxnet as mx
from mxnet.contrib.quantization import quantize_net
from mxnet.gluon import nn
net = nn.Conv2D(64, 3, padding=1, in_channels=32)
net.initialize()
net.hybridize()
x = mx.nd.random.uniform(shape=(1, 32, 24, 24))
net(x)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    int8 = quantize_net(net, quantized_dtype="auto", calib_mode="naive", num_calib_examples=1,
                        calib_data=mx.io.NDArrayIter(data=x, batch_size=1, data_name="data"), ctx=mx.cpu())
int8(x).wait_to_read()
"""

INT8_CONV_CODE = """
import os, subprocess, sys
import lib, mxnet as mx, numpy as np
from mxnet.gluon import nn
from lib.runtime import quantize_block
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(64, 3, padding=1, in_channels=32), nn.Activation("relu"), nn.Conv2D(64, 3, padding=1))
net.initialize(mx.init.Xavier())
x = mx.nd.random.uniform(shape=(1, 32, 24, 24))
int8 = quantize_block(net, mx.nd.concat(x, x * 0.5, dim=0))
np.save(sys.argv[1], int8(x).asnumpy())
print("AMX", lib.AMX, "ISA_VAR", os.environ.get("DNNL_MAX_CPU_ISA"))
if len(sys.argv) > 2:   # a child that never imports lib runs an int8 conv in the environment it inherits
    sys.exit(subprocess.run([sys.executable, "-c", sys.argv[2]], check=False).returncode)
"""


def run_int8_conv(tmp_path, name, env_updates, child=False):
    env = {k: v for k, v in os.environ.items() if k not in ("DNNL_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA")}
    env.update(env_updates, DNNL_VERBOSE="1")
    out = str(tmp_path / f"{name}.npy")
    proc = subprocess.run([sys.executable, "-c", INT8_CONV_CODE, out] + ([CHILD_CODE] if child else []), env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    convs = [line for line in proc.stdout.splitlines() if line.startswith("dnnl_verbose,exec,cpu,convolution")]
    int8_convs = [line for line in convs if "src_u8" in line or "src_s8" in line]
    status = [line for line in proc.stdout.splitlines() if line.startswith("AMX ")][0].split()
    return np.load(out), int8_convs, status


def test_amx_runs_the_int8_convolutions_and_matches_vnni(tmp_path):
    from lib.runtime import cpu_has_amx
    if not cpu_has_amx():
        import pytest
        pytest.skip("this CPU has no Intel AMX")
    amx_out, amx_convs, status = run_int8_conv(tmp_path, "amx", {})
    # on by default, and the variable is gone again once oneDNN has read it (children do not inherit it)
    assert status == ["AMX", "on", "ISA_VAR", "None"]
    assert amx_convs and all("amx" in line for line in amx_convs), amx_convs
    # the oracle: the same int8 graph on AVX-512 VNNI, the user's limit being kept
    vnni_out, vnni_convs, status = run_int8_conv(tmp_path, "vnni", {"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"})
    assert status == ["AMX", "user", "ISA_VAR", "AVX512_CORE_VNNI"]
    assert vnni_convs and not any("amx" in line for line in vnni_convs), vnni_convs
    # int8 products accumulate exactly in int32 on both; only the float re-quantization may round apart
    scale = np.abs(vnni_out).max()
    assert np.abs(amx_out - vnni_out).max() <= 0.02 * scale


def test_child_of_a_lib_process_without_lib_does_not_crash(tmp_path):
    # its parent's oneDNN uses AMX; the child never asked the kernel for the tiles and must not try them
    _, _, status = run_int8_conv(tmp_path, "parent", {}, child=True)
    assert status[2:] == ["ISA_VAR", "None"]
