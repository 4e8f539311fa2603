"""Install the toolkit (editable: ``pip install -e .``) and build its compiled parts.

Two kinds of compiled code:
- Cython extensions (``lib/*.pyx``): box and NMS kernels, built by ``build_ext``.
- The MXNet operator library (``operator_cxx/*.cc`` -> ``lib/libdetops.so``), loaded at run time
  with ``mx.library.load``; built by ``build_ext`` too (``operator_cxx/build.py``).
"""
import glob
import os
import runpy

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildExtAndOps(build_ext):
    """build_ext that also compiles the MXNet operator library."""

    def run(self):
        super().run()
        build_script = os.path.join(HERE, "operator_cxx", "build.py")
        if os.path.exists(build_script):
            if os.environ.get("VIDEODET_SKIP_OPS") != "1":  # for quick Cython-only rebuilds
                runpy.run_path(build_script)["build"]()


def extensions():
    sources = sorted(glob.glob("lib/**/*.pyx", recursive=True))
    exts = [Extension(src[:-4].replace(os.sep, "."), [src], include_dirs=[numpy.get_include()],
                      extra_compile_args=["-O3"],
                      define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
            for src in sources]
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False,
                                                                  "wraparound": False,
                                                                  "cdivision": True})


setup(
    name="videodet",
    version="0.1.0",
    description="Video and still-image object detection on MXNet/Gluon: FGFA/R-FCN, LSTM-SSD, M2Det",
    # experiments.custom holds the recipe (above the families); the other experiments folders are scripts
    packages=find_packages(include=["lib", "lib.*", "fgfa", "fgfa.*", "lstm_ssd", "lstm_ssd.*",
                                    "m2det", "m2det.*", "experiments", "experiments.custom"]),
    python_requires=">=3.9",
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtAndOps},
    package_data={"lib": ["*.so"]},
    entry_points={
        # detector families: lib.family's registry imports these modules, which register themselves;
        # another installed package can add a family the same way
        "videodet.families": [
            "rfcn = fgfa.family",
            "fgfa = fgfa.family",
            "ssdlite = lstm_ssd.family",
            "lstm_ssd = lstm_ssd.family",
            "fast_slow = lstm_ssd.family",
            "m2det = m2det.family",
        ],
        "console_scripts": [
            "m2det-train=m2det.cli:train_main",
            "m2det-evaluate=m2det.cli:evaluate_main",
            "m2det-convert-model=m2det.cli:convert_main",
            "m2det-debug=m2det.cli:debug_main",
        ],
    },
)
