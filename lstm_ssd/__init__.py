"""LSTM-SSD (Liu & Zhu, CVPR 2018) and Looking Fast and Slow (CVPR 2019): streaming mobile video
detectors with Bottleneck-LSTM memory, interleaved extractors, adaptive policy and filter pruning."""
import lib  # noqa: F401  (first: it sets the OpenMP threads before libmxnet loads, see lib.runtime)
