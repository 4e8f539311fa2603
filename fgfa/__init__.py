"""Flow-Guided Feature Aggregation (Zhu et al., ICCV 2017) and its R-FCN frame baseline.

The network blocks live in backbone, rpn, rfcn_head, flownet, embedding and aggregation; detector
assembles them from a config (fgfa.config.DEFAULTS merged with a yaml file) and runs training
steps and streaming window inference; train/test drive whole runs; demo annotates a video.
"""
import lib  # noqa: F401  (first: it sets the OpenMP threads before libmxnet loads, see lib.runtime)
