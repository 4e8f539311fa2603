"""M2Det (Zhao et al., AAAI 2019) on MXNet/Gluon with a keras-retinanet style toolkit.

Modules: backbones, ffm, tum, sfam, head, detector (assembled from config), config (DEFAULTS),
cli (m2det-train / m2det-evaluate / m2det-convert-model / m2det-debug).
"""
import lib  # noqa: F401  (first: it sets the OpenMP threads before libmxnet loads, see lib.runtime)
