"""Build the MXNet operator library ``lib/libdetops.so`` from ``operator_cxx/*.cc``.

The library is compiled with plain g++ against the headers the stock mxnet wheel ships
(``mxnet/include/mxnet/lib_api.h``, ``mxnet/src/lib_api.cc``) and loaded at run time with
``mx.library.load`` (see ``lib/ops.py``). No rebuild of MXNet is needed.

Up-to-date check: a SHA-256 over the operator sources, the mxnet extension API files and the
compiler flags is compiled into the library (``detops_source_hash()``). ``build()`` skips the
compile when the existing library carries the current hash, so ``init.sh`` stays fast; ``lib.ops``
uses the same hash to refuse a stale library.

    python operator_cxx/build.py            # build if needed
    python operator_cxx/build.py --force    # always rebuild
"""
import argparse
import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(ROOT, "lib", "libdetops.so")
# -ffp-contract=off: no fused multiply-add, so results round exactly like MXNet's own kernels.
CXXFLAGS = ["-std=c++17", "-O3", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off"]


def mxnet_paths():
    """(include_dir, lib_api.cc) of the installed mxnet package, located without importing it."""
    import importlib.util
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mxnet is not installed in this Python (%s); run `sh init.sh`" % sys.executable)
    pkg = list(spec.submodule_search_locations)[0]
    include = os.path.join(pkg, "include")
    lib_api_cc = os.path.join(pkg, "src", "lib_api.cc")
    for path in (os.path.join(include, "mxnet", "lib_api.h"), lib_api_cc):
        if not os.path.exists(path):
            raise RuntimeError(f"{path} not found: this mxnet build does not ship the extension API "
                               "(mxnet >= 1.7 wheels do; the project pins mxnet 1.9.1)")
    return include, lib_api_cc


def source_files():
    """Operator sources and headers, sorted (their bytes define the build)."""
    return sorted(glob.glob(os.path.join(HERE, "*.cc")) + glob.glob(os.path.join(HERE, "*.h")))


def source_hash():
    """SHA-256 of the sources, mxnet's extension API files and the compiler flags."""
    include, lib_api_cc = mxnet_paths()
    digest = hashlib.sha256()
    files = source_files() + [os.path.join(include, "mxnet", "lib_api.h"), lib_api_cc]
    for path in files:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as handle:
            digest.update(handle.read())
        digest.update(b"\0")
    digest.update(" ".join(CXXFLAGS).encode())
    return digest.hexdigest()


def library_hash(path):
    """The source hash compiled into the library at ``path``, or None when unreadable."""
    if not os.path.exists(path):
        return None
    try:
        lib = ctypes.CDLL(os.path.abspath(path))
        func = lib.detops_source_hash
        func.restype = ctypes.c_char_p
        return func().decode()
    except (OSError, AttributeError):
        return None


def build(out=None, force=False, verbose=True):
    """Compile operator_cxx/*.cc into ``out`` (default lib/libdetops.so) unless up to date.

    Returns the absolute path of the library. Raises RuntimeError with the compiler output when
    g++ fails.
    """
    out = os.path.abspath(out or DEFAULT_OUT)
    wanted = source_hash()
    if not force and library_hash(out) == wanted:
        if verbose:
            print(f"[ops] {out} is up to date")
        return out
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"C++ compiler {cxx!r} not found: install g++ (Debian/Ubuntu: apt-get install g++)")
    include, lib_api_cc = mxnet_paths()
    sources = [p for p in source_files() if p.endswith(".cc")]
    if not sources:
        raise RuntimeError(f"no operator sources (*.cc) in {HERE}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    # Compile to a temporary file, then rename: a process that has the old library mapped keeps it.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    cmd = [cxx, *CXXFLAGS, f"-I{include}", f"-I{HERE}", f'-DDETOPS_SOURCE_HASH="{wanted}"',
           "-o", tmp, *sources, lib_api_cc]
    if verbose:
        print(f"[ops] compiling {len(sources)} operator sources -> {out}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("building the operator library failed:\n" + " ".join(cmd) + "\n"
                               + proc.stdout + proc.stderr)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help=f"library path (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        build(args.out, force=args.force)
    except RuntimeError as err:
        print(f"[ops] ERROR: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
