"""lib.runtime: thread defaults (respecting the user's choice) and inference hybridization."""
import os
import subprocess
import sys

import numpy as np
import pytest

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


# ---------------------------------------------------------------- entropy calibration, bounded histograms
def test_rebin_histogram_hand_computed():
    from lib.runtime import rebin_histogram
    # bins of (-1.5, 1.5) with centres -1, 0, 1 -> bins [-3, -1), [-1, 1), [1, 3] of (-3, 3)
    hist, edges = rebin_histogram(np.array([1, 2, 3]), 1.5, 3.0, 3)
    np.testing.assert_array_equal(hist, [0, 3, 3])
    np.testing.assert_allclose(edges, [-3, -1, 1, 3])


def _calibrated_ranges(qnet):
    """{node name: (min_calib_range, max_calib_range)} of a quantized SymbolBlock's graph."""
    import json
    nodes = json.loads(qnet._cached_graph[1].tojson())["nodes"]
    return {n["name"]: (float(n["attrs"]["min_calib_range"]), float(n["attrs"]["max_calib_range"]))
            for n in nodes if "min_calib_range" in n.get("attrs", {})}


def test_bounded_collector_equals_mxnet_entropy_calibration_when_no_range_grows():
    """Oracle: MXNet's own entropy calibration. With the widest calibration sample first (a bias-free
    ReLU net scales its outputs with the input) MXNet never widens a histogram, so both must agree."""
    import warnings
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_net_v2
    from mxnet.gluon import nn
    from lib.runtime import quantize_block
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        pytest.skip("int8 needs MXNet with oneDNN")
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, use_bias=False, activation="relu"), nn.Conv2D(4, 3, padding=1, use_bias=False))
    net.initialize(mx.init.Xavier())
    base = np.random.RandomState(1).uniform(0, 1, (3, 16, 16))
    calib = mx.nd.array(np.stack([base * s for s in (3.0, 1.0, 0.5)]))
    ours = _calibrated_ranges(quantize_block(net, calib, "entropy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantize_net_v2(net, quantized_dtype="auto", calib_mode="entropy", num_calib_examples=3,
                                 calib_data=mx.io.NDArrayIter(data=calib, batch_size=1, data_name="data"), ctx=mx.cpu())
    theirs.hybridize(static_alloc=True, static_shape=True)
    theirs(calib[:1])
    assert ours and ours == _calibrated_ranges(theirs)


def test_bounded_collector_keeps_its_bins_and_counts_when_ranges_grow():
    from lib.runtime import ENTROPY_BINS, BoundedHistogramCollector
    rng = np.random.RandomState(0)
    # ranges growing 300x: MXNet's histogram would grow to ~2.4M bins; ours stays at ENTROPY_BINS, keeps
    # every count, and the KL threshold still clips the one outlier
    grow = BoundedHistogramCollector("int8")
    arrays = [rng.normal(0, 1, 5000), rng.normal(0, 1, 5000) * 2, np.r_[rng.normal(0, 1, 5000), [300.0]]]
    for a in arrays:
        grow.add("x_output", a)
    hist, edges, lo, hi, th = grow.hist_dict["x_output"]
    assert len(hist) == ENTROPY_BINS and hist.sum() == sum(a.size for a in arrays)
    assert th == pytest.approx(300.0) and hi == pytest.approx(300.0) and len(edges) == ENTROPY_BINS + 1
    low, high = grow.min_max_dict["x_output"]
    assert 2.0 < high < 50.0 and low == -high


def test_entropy_quantize_block_with_growing_calibration_ranges():
    import mxnet as mx
    from mxnet.gluon import nn
    from lib.runtime import quantize_block
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        pytest.skip("int8 needs MXNet with oneDNN")
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, activation="relu"), nn.Conv2D(4, 3, padding=1))
    net.initialize(mx.init.Xavier())
    rng = np.random.RandomState(1)
    calib = mx.nd.array(np.stack([rng.uniform(0, 1, (3, 16, 16)) * s for s in (1, 10, 100, 1000)]))
    q = quantize_block(net, calib, "entropy")
    x = calib[3:4]
    assert np.corrcoef(q(x).asnumpy().ravel(), net(x).asnumpy().ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="naive"):
        quantize_block(net, calib, "minmax")


# ---------------------------------------------------------------- huge pages for training commands
PROBE = """
import os, sys
from lib.runtime import relaunch_with_huge_pages
print("started", flush=True)
relaunch_with_huge_pages({argv})
print("tunables", repr(os.environ.get("GLIBC_TUNABLES")), "args", sys.argv[1:], "spec",
      __spec__.name if __spec__ else None, flush=True)
"""


def run_probe(tmp_path, env_updates, as_module=False, argv="None"):
    (tmp_path / "relaunch_probe.py").write_text(PROBE.format(argv=argv))
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(env_updates, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    target = ["-m", "relaunch_probe"] if as_module else [str(tmp_path / "relaunch_probe.py")]
    out = subprocess.run([sys.executable] + target + ["--cfg", "a b.yaml"], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


def test_a_command_relaunches_itself_once_with_huge_pages(tmp_path):
    from lib.runtime import HUGE_PAGES_TUNABLE
    expected = f"tunables {HUGE_PAGES_TUNABLE!r} args ['--cfg', 'a b.yaml'] spec "
    assert run_probe(tmp_path, {}) == ["started", "started", expected + "None"]
    # python -m stays python -m (the module's package context is kept)
    assert run_probe(tmp_path, {}, as_module=True) == ["started", "started", expected + "relaunch_probe"]


def test_no_relaunch_when_the_user_set_tunables_or_main_is_called_with_argv(tmp_path):
    assert run_probe(tmp_path, {"GLIBC_TUNABLES": ""}) == [
        "started", "tunables '' args ['--cfg', 'a b.yaml'] spec None"]
    user = "glibc.malloc.arena_max=2"
    assert run_probe(tmp_path, {"GLIBC_TUNABLES": user}) == [
        "started", f"tunables {user!r} args ['--cfg', 'a b.yaml'] spec None"]
    assert run_probe(tmp_path, {}, argv="['--cfg', 'x']") == [
        "started", "tunables None args ['--cfg', 'a b.yaml'] spec None"]


HUGE_PAGES_CODE = """
import lib, mxnet as mx
def anon_huge_kib():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
before = anon_huge_kib()
buffer = mx.nd.ones((32 << 20,))          # 128 MiB through MXNet's CPU storage (malloc)
buffer.wait_to_read()
print(anon_huge_kib() - before)
"""


def test_the_tunable_backs_mxnet_buffers_with_huge_pages():
    """The kernel's own accounting is the oracle: with the tunable, a 128 MiB NDArray is (mostly) in
    transparent huge pages; without it only where the kernel uses them for every mapping."""
    from lib.runtime import HUGE_PAGES_TUNABLE
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        mode = f.read().split("[")[1].split("]")[0]

    def huge_kib(tunables):
        env = dict(os.environ, GLIBC_TUNABLES=tunables)
        out = subprocess.run([sys.executable, "-c", HUGE_PAGES_CODE], env=env, capture_output=True, text=True,
                             check=True)
        return int(out.stdout.split()[-1])

    with_tunable, without = huge_kib(HUGE_PAGES_TUNABLE), huge_kib("")
    assert with_tunable >= (64 << 10 if mode in ("madvise", "always") else 0)
    assert without < (16 << 10 if mode in ("madvise", "never") else 1 << 30)


OMP_TEAM_CODE = """
import os, sys
if sys.argv[1] == "mxnet-first":
    import mxnet
import lib, mxnet as mx
x = mx.nd.ones((1, 16, 64, 64))               # a convolution: oneDNN runs it on the engine's OpenMP team
mx.nd.Convolution(x, mx.nd.ones((16, 16, 3, 3)), kernel=(3, 3), num_filter=16, no_bias=True).asnumpy()
print(len(os.listdir("/proc/self/task")))
"""


def _env_without_thread_counts():
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")}


def threads_after_an_operator(order):
    out = subprocess.run([sys.executable, "-c", OMP_TEAM_CODE, order], env=_env_without_thread_counts(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]), out.stderr


def test_lib_imported_after_mxnet_warns_because_mxnet_keeps_fewer_threads():
    # the oracle: the threads MXNet starts for an operator (its OpenMP team is fixed when libmxnet loads)
    from lib.runtime import LATE_IMPORT_WARNING, cpu_count
    if cpu_count() < 2 or not os.path.isdir("/proc/self/task"):
        pytest.skip("needs 2+ cores and /proc to see the OpenMP team")
    first, first_err = threads_after_an_operator("lib-first")
    late, late_err = threads_after_an_operator("mxnet-first")
    assert late < first
    assert LATE_IMPORT_WARNING[:40] in late_err and LATE_IMPORT_WARNING[:40] not in first_err


def _entry_files():
    """(path relative to the project root, source) of every script with a __main__ block."""
    from lib.config import PROJECT_ROOT
    # lib's own tools run as python -m lib.tools.X: lib's __init__ comes first
    for folder in ("bench", "experiments", "fgfa", "lstm_ssd", "m2det", "operator_cxx"):
        for dirpath, _, names in os.walk(os.path.join(PROJECT_ROOT, folder)):
            for name in (n for n in names if n.endswith(".py")):
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    source = f.read()
                if "__main__" in source:
                    yield os.path.relpath(os.path.join(dirpath, name), PROJECT_ROOT), source


def test_every_entry_point_imports_lib_before_mxnet():
    # run as a file (python fgfa/demo.py) a script gets no package __init__: its own imports must
    # bring in lib (or a package of ours, whose __init__ imports lib) before mxnet or gluoncv
    import ast
    ours = {"lib", "fgfa", "lstm_ssd", "m2det", "experiments"}
    late, entries = [], list(_entry_files())
    for path, source in entries:
        for node in ast.parse(source).body:
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module.split(".")[0]]
            else:
                continue
            if ours & set(names):
                break
            if {"mxnet", "gluoncv"} & set(names):
                late.append(f"{path}:{node.lineno}")
                break
    assert len(entries) > 20 and late == []


def test_recipe_script_runs_with_the_core_count():
    from lib.config import PROJECT_ROOT
    script = os.path.join(PROJECT_ROOT, "experiments", "custom", "evaluate.py")
    out = subprocess.run([sys.executable, script, "--help"], env=_env_without_thread_counts(), capture_output=True,
                         text=True, check=True, cwd=PROJECT_ROOT)
    assert "imported before lib" not in out.stderr
