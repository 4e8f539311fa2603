"""Tiny LSTM-SSD-family models with random weights, shared by the lstm_ssd tests (not a test module)."""
import mxnet as mx
import numpy as np

from lstm_ssd import config as lstm_config
from lstm_ssd.detector import build_detector


def randomize(net, seed=0):
    """Random weights everywhere (BN statistics and the zero-initialised memory mix and gate included), so
    that no test passes by symmetry or because a term is zero."""
    rng = np.random.RandomState(seed)
    for name, p in net._collect_params_with_prefix().items():
        if name.endswith(("running_var", "gamma")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        else:
            p.set_data(mx.nd.array(rng.normal(0, 0.3, p.shape)))


def tiny_model(over, seed=0):
    """(cfg, net) built from the defaults with command-line style ``over``rides, run once, randomized."""
    cfg = lstm_config.load(None, over)
    net = build_detector(cfg)
    net(mx.nd.zeros((1, 1, 3) + net.image_hw), None, ["large"])
    randomize(net, seed)
    return cfg, net
