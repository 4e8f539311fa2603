"""Settings for the whole test session."""
import os

# pytest-xdist runs a worker per core, and each worker's MXNet would start an OpenMP thread per core: on
# 2 cores, 2 x 2 threads that spin while they wait slow every test. A worker takes its share of the cores
# instead, unless the user set a thread count. Decided before lib is imported (it sets the count at
# import), and in the main process first: the workers inherit the count lib set there, not the user.
_USER_THREADS = "VIDEODET_TESTS_USER_THREADS"
_user_set = os.environ.get("OMP_NUM_THREADS") or os.environ.get("MXNET_OMP_MAX_THREADS")
os.environ.setdefault(_USER_THREADS, "1" if _user_set else "0")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and os.environ[_USER_THREADS] == "0":
    # lib.runtime.cpu_count, which cannot be imported before the count is set
    share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, share))

from lib.runtime import HUGE_PAGES_TUNABLE  # noqa: E402

# The training commands the tests start as subprocesses would each start twice to get glibc's
# huge-page tunable (lib.runtime.relaunch_with_huge_pages): they inherit it from here instead.
os.environ.setdefault("GLIBC_TUNABLES", HUGE_PAGES_TUNABLE)
