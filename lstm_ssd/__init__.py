"""LSTM-SSD (Liu & Zhu, CVPR 2018) and Looking Fast and Slow (CVPR 2019): streaming mobile video
detectors with Bottleneck-LSTM memory, interleaved extractors, adaptive policy and filter pruning."""
