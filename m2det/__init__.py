"""M2Det (Zhao et al., AAAI 2019) on MXNet/Gluon with a keras-retinanet style toolkit.

Modules: backbones, ffm, tum, sfam, head, detector (assembled from config), config (DEFAULTS),
cli (m2det-train / m2det-evaluate / m2det-convert-model / m2det-debug).
"""
