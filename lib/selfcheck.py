"""A few-second check of the installation: imports, versions, threads, compiled parts.

Run with ``python -m lib.selfcheck``; exits non-zero when something required is missing.
"""
import importlib
import os
import sys


def _version(module):
    try:
        mod = importlib.import_module(module)
        return getattr(mod, "__version__", "ok")
    except Exception as err:  # report every failure, keep checking the rest
        return f"MISSING ({type(err).__name__}: {err})"


def main():
    import lib
    problems = []
    print(f"python      {sys.version.split()[0]}")
    for module in ("mxnet", "numpy", "gluoncv", "cv2", "pycocotools", "tensorboardX", "yaml",
                   "easydict", "tqdm", "tfrecord", "onnxruntime"):
        version = _version(module)
        print(f"{module:<11} {version}")
        if version.startswith("MISSING"):
            problems.append(module)
    import mxnet as mx
    print(f"threads     {lib.THREADS} ({lib.THREADS_SOURCE}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    print(f"MKLDNN      {mx.runtime.Features().is_enabled('MKLDNN')} (Intel AMX: {lib.AMX})")
    print(f"GPUs        {mx.context.num_gpus()}")
    for ext in ("lib._cbbox", "lib._cnms"):
        status = _version(ext)
        print(f"{ext:<11} {'built' if not status.startswith('MISSING') else status}")
        if status.startswith("MISSING"):
            problems.append(ext)
    try:
        from lib import ops
        path = ops.load()
        print(f"operators   {path}")
    except Exception as err:
        print(f"operators   MISSING ({err})")
        problems.append("operator library")
    if problems:
        print("self-check FAILED: " + ", ".join(problems) + " (run: sh init.sh)")
        return 1
    print("self-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
