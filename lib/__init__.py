"""Shared library of the detection toolkit: boxes, NMS, anchors, operators, datasets, evaluation,
training utilities and tools used by every method (fgfa, lstm_ssd, m2det).

Importing ``lib`` sets the OpenMP thread count to the number of cores unless the user set
OMP_NUM_THREADS or MXNET_OMP_MAX_THREADS, and on CPUs with Intel AMX lets oneDNN use it unless the
user set DNNL_MAX_CPU_ISA (see lib.runtime).
"""
from .runtime import configure_amx as _configure_amx
from .runtime import configure_threads as _configure_threads

THREADS, THREADS_SOURCE = _configure_threads()
AMX = _configure_amx()

__version__ = "0.1.0"
