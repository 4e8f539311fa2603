"""Process-wide runtime settings: OpenMP threads, contexts, CPU inference hybridization.

MXNet's OpenMP defaults to ONE thread on small machines; two threads on two cores are ~1.8x faster
(docs/DESIGN.md). ``configure_threads`` runs when ``lib`` is imported, which must come before
``import mxnet``: libmxnet fixes its OpenMP settings when it loads. Every package of the project imports
``lib`` first; a late ``lib`` warns. It never overrides a thread count the user chose.

It also keeps MXNet's copies between numpy and NDArrays on one thread (MXNET_CPU_PARALLEL_SIZE):
a large ``asnumpy()`` or ``nd.array()`` in the Python thread otherwise starts a second OpenMP team
there, whose spinning threads then compete with the engine's team for the same cores. Measured on
2 cores: every training epoch after the first checkpoint (which reads the optimizer state) ran
1.5-1.7x slower, and with the copies kept serial it does not (docs/DESIGN.md).

On CPUs with Intel AMX (Sapphire Rapids and later) ``configure_amx`` lets oneDNN use the AMX tiles
for int8 (and bf16) kernels: MXNet 1.9.1's oneDNN 2.4 keeps them behind DNNL_MAX_CPU_ISA, and Linux
kills a process that touches them without asking first (arch_prctl). Measured: an int8 3x3 conv runs
3.3x faster than with VNNI alone (``python -m bench.amx``).

``relaunch_with_huge_pages`` is for the commands that train imperatively (M2Det, the recipe): they
start again once with glibc's huge-page tunable, which cuts the page faults of MXNet's unpooled CPU
buffers (1.3x faster M2Det steps; hybridized training graphs allocate little and gain nothing).
"""
import os
import re

_THREAD_VARS = ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")
# MXNet copies arrays of more elements than this with OpenMP in the calling thread (its default is
# 200000); ours is past any array size, so host copies stay serial (a 15 MB copy: ~3 ms).
SERIAL_COPY_SIZE = str(2 ** 31 - 1)


LATE_IMPORT_WARNING = ("mxnet was imported before lib: MXNet then runs its operators on half the cores "
                       "(1.5x slower on 2 cores); import lib (or fgfa, lstm_ssd, m2det) before mxnet, "
                       "or set OMP_NUM_THREADS before starting Python")


def cpu_count():
    """Cores this process may run on (respects CPU affinity / containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_threads():
    """Set OMP_NUM_THREADS to the core count unless the user set a thread count.

    Returns (threads, source) where source is 'user' or 'default'.
    """
    # MXNet reads it once, at its first host copy: after ``import mxnet`` is still in time
    os.environ.setdefault("MXNET_CPU_PARALLEL_SIZE", SERIAL_COPY_SIZE)
    for var in _THREAD_VARS:
        if os.environ.get(var):
            return int(os.environ[var]), "user"
    n = cpu_count()
    os.environ["OMP_NUM_THREADS"] = str(n)
    import sys
    if "mxnet" in sys.modules:
        # MXNet was imported first: its OpenMP settings were fixed when libmxnet loaded (without
        # OMP_NUM_THREADS it takes half the cores on x86, one on two cores), and no call changes them
        # afterwards (MXSetNumOMPThreads only sets the calling thread's). Measured: an int8 M2Det frame
        # 1.5x slower. Our packages import lib first; a user's script must too.
        import warnings
        warnings.warn(LATE_IMPORT_WARNING, RuntimeWarning, stacklevel=3)
    return n, "default"


# Linux x86-64: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) grants this process the AMX tiles
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18
_ISA_VARS = ("DNNL_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA")
AMX_ISA = "AVX512_CORE_AMX"


def cpu_has_amx():
    """True when /proc/cpuinfo lists the AMX tile and int8 units (Linux only)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "amx_tile" in flags and "amx_int8" in flags
    except OSError:
        pass
    return False


def request_amx_permission():
    """Ask the kernel for the AMX tile state for this process (and the threads it starts)."""
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def configure_amx():
    """Let this process's oneDNN use AMX when the CPU has it and the user set no ISA limit.

    Returns 'on', 'user' (the user's DNNL_MAX_CPU_ISA is kept), 'denied' (the kernel refused the
    tiles), 'absent' or 'no mxnet'. The ISA variable is set only until oneDNN has read it (its first primitive,
    made here): a child process that inherited it without asking the kernel for the tiles would die
    of an illegal instruction at its first int8 convolution.
    """
    if not cpu_has_amx():
        return "absent"
    # also when the user chose an AMX ISA themselves: without the permission their choice crashes
    granted = request_amx_permission()
    if any(os.environ.get(var) for var in _ISA_VARS):
        return "user"
    if not granted:
        return "denied"
    try:
        import mxnet as mx
    except ImportError:   # an onnxruntime-only install of the inference tools
        return "no mxnet"
    os.environ["DNNL_MAX_CPU_ISA"] = AMX_ISA
    try:
        # oneDNN reads the variable once, at the first primitive it creates
        mx.nd.Convolution(mx.nd.ones((1, 1, 1, 1)), mx.nd.ones((1, 1, 1, 1)), kernel=(1, 1), num_filter=1,
                          no_bias=True).wait_to_read()
    finally:
        del os.environ["DNNL_MAX_CPU_ISA"]
    return "on"


# glibc (2.35+) backs malloc's large blocks with transparent huge pages (madvise) under this tunable
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def relaunch_with_huge_pages(argv=None):
    """Start this command again with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, once, before it trains.

    MXNet 1.9 has no memory pool on the CPU: every imperative operator's output is a fresh malloc,
    and the large ones are fresh mmaps, so a training step faults in its gigabytes of buffers 4 KiB at
    a time (an M2Det 384x672 step, batch 8: 1.28 M page faults, 4.6 s of kernel time in 7.1 s). With
    huge pages the same step takes 5.4 s (``python -m bench.allocator``). glibc reads the tunable
    at process start only, so the command re-executes itself (as Intel's CPU launchers set their
    allocator): only when called as a command (``argv`` None), on glibc, and never when the user set
    GLIBC_TUNABLES (any value, empty included: that is the way to opt out).
    """
    import platform
    import sys
    if argv is not None or "GLIBC_TUNABLES" in os.environ or platform.libc_ver()[0] != "glibc":
        return
    os.environ["GLIBC_TUNABLES"] = HUGE_PAGES_TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def threads():
    """The OpenMP thread count in force for this process."""
    for var in _THREAD_VARS:
        if os.environ.get(var):
            return int(os.environ[var])
    return cpu_count()


_CONTEXT = re.compile(r"^(cpu|gpu)(?::(\d+)|\((\d*)\))?$")


def get_context(spec="cpu"):
    """'cpu', 'gpu', 'gpu:1', 'gpu(1)' or a list of those -> mx.Context or list of mx.Context."""
    import mxnet as mx
    if isinstance(spec, (list, tuple)):
        return [get_context(s) for s in spec]
    if isinstance(spec, mx.Context):
        return spec
    match = _CONTEXT.match(str(spec).strip().lower())
    if not match:
        raise ValueError(f"context must be 'cpu' or 'gpu' with an optional device number ('gpu:1', "
                         f"'gpu(1)'), got {spec!r}")
    return mx.Context(match.group(1), int(match.group(2) or match.group(3) or 0))



def hybridize_for_inference(block, ctx=None, static=True):
    """Hybridize a Gluon block for inference: fused MKLDNN (oneDNN) graph on CPU.

    MKLDNN fusion is a measured 2-6x win on CPU (stack.md); on GPU a plain static graph.
    """
    import mxnet as mx
    on_cpu = ctx is None or (getattr(ctx, "device_type", "cpu") == "cpu")
    if on_cpu and mx.runtime.Features().is_enabled("MKLDNN"):
        block.hybridize(backend="MKLDNN", static_alloc=static, static_shape=static)
    else:
        block.hybridize(static_alloc=static, static_shape=static)
    return block


ENTROPY_BINS = 8001   # MXNet's histogram size for entropy (KL) calibration
# what MXNet's quantize_graph lists for calibration: the input and the outputs of operators
_CALIBRATED_NAME = re.compile(r"^data$|_output\d*$")


def rebin_histogram(hist, old_th, new_th, num_bins):
    """Counts of a histogram over (-old_th, old_th) moved to ``num_bins`` bins over (-new_th, new_th)
    (new_th >= old_th), each old bin's count to the new bin holding its centre. -> (hist, edges)."""
    import numpy as np
    edges = np.linspace(-old_th, old_th, len(hist) + 1)
    return np.histogram((edges[:-1] + edges[1:]) / 2, bins=num_bins, range=(-new_th, new_th), weights=hist)


class BoundedHistogramCollector:
    """Entropy (KL) calibration whose histograms keep ``num_bins`` bins.

    MXNet 1.9's collector keeps the bin width when a later calibration sample has a wider range, so
    the histogram grows with the ratio of the ranges, and the KL threshold search is quadratic in its
    bins: FGFA's FlowNet calibrated on 8 speedtrap frame pairs grew 24 histograms to 177k-230k bins and
    the search ran for over 20 minutes. Here a wider range re-bins the histogram to the same bin count
    instead (the earlier samples lose resolution, not the later ones). Used through quantize_net_v2's
    ``customize`` mode: ``min_max_dict`` gives MXNet's own KL thresholds of these histograms.
    """

    def __init__(self, quantized_dtype="auto", num_bins=ENTROPY_BINS):
        self.quantized_dtype, self.num_bins = quantized_dtype, int(num_bins)
        self.hist_dict = {}       # layer output name -> (hist, edges, min, max, th), as MXNet's collector

    def collect(self, name, arr):
        """MXNet monitor callback: fold one layer output into its histogram."""
        import ctypes
        from mxnet.base import NDArrayHandle, py_str
        from mxnet.ndarray import NDArray
        name = py_str(name)
        if _CALIBRATED_NAME.search(name):   # not weights and op inputs: MXNet calibrates the network
            # input and the op outputs only
            self.add(name, NDArray(ctypes.cast(arr, NDArrayHandle), writable=False).asnumpy())

    def add(self, name, values):
        """Fold the numpy array ``values`` into the histogram of layer output ``name``."""
        import numpy as np
        lo, hi = float(values.min()), float(values.max())
        th = max(abs(lo), abs(hi))
        if name in self.hist_dict:
            hist, edges, old_lo, old_hi, old_th = self.hist_dict[name]
            if th > old_th:
                hist, edges = rebin_histogram(hist, old_th, th, self.num_bins)
                old_th = th
            hist = hist + np.histogram(values, bins=self.num_bins, range=(-old_th, old_th))[0]
            self.hist_dict[name] = (hist, edges, min(lo, old_lo), max(hi, old_hi), old_th)
        else:
            hist, edges = np.histogram(values, bins=self.num_bins, range=(-th, th))
            self.hist_dict[name] = (hist, edges, lo, hi, th)

    @property
    def min_max_dict(self):
        """Layer output name -> (min, max) quantization range: MXNet's KL-optimal thresholds."""
        from mxnet.contrib.quantization import _get_optimal_thresholds
        return _get_optimal_thresholds(dict(self.hist_dict), self.quantized_dtype)


def quantize_block(block, calib, calib_mode="naive", exclude_layers=(), exclude_operators=()):
    """int8 SymbolBlock of a float single-input Gluon block (MXNet's MKLDNN quantization, CPU),
    calibrated on ``calib`` (B, ...) one sample at a time and hybridized with static memory:
    quantize_net's block otherwise allocates its buffers on every call (``python -m bench.fgfa
    --int8-ablation``: 1.3x slower on a ResNet-101). ``calib_mode``: 'naive' (min/max) or 'entropy'
    (KL thresholds, with histograms of bounded size: BoundedHistogramCollector)."""
    import warnings
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_net_v2
    if calib_mode not in ("naive", "entropy"):
        raise ValueError(f"calibration mode must be 'naive' or 'entropy', got {calib_mode!r}")
    calib = calib if isinstance(calib, mx.nd.NDArray) else mx.nd.array(calib)
    block.hybridize(static_alloc=True, static_shape=True)
    block(calib[:1])
    # a DataIter (not a DataLoader): quantize_net then feeds `data` alone to the network
    data = mx.io.NDArrayIter(data=calib, batch_size=1, data_name="data")
    collector = BoundedHistogramCollector("auto") if calib_mode == "entropy" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # quantize_net's deprecation notice
        quantized = quantize_net_v2(block, quantized_dtype="auto", calib_data=data,
                                    calib_mode="customize" if collector else calib_mode,
                                    LayerOutputCollector=collector,
                                    num_calib_examples=len(calib), exclude_layers=list(exclude_layers) or None,
                                    exclude_operators=list(exclude_operators) or None, ctx=mx.cpu())
    quantized.hybridize(static_alloc=True, static_shape=True)
    quantized(calib[:1])   # materialises the quantized graph (needed before export)
    return quantized
