"""Settings for the whole test session."""
import os

from lib.runtime import HUGE_PAGES_TUNABLE

# The training commands the tests start as subprocesses would each start twice to get glibc's
# huge-page tunable (lib.runtime.relaunch_with_huge_pages): they inherit it from here instead.
os.environ.setdefault("GLIBC_TUNABLES", HUGE_PAGES_TUNABLE)
