"""Every yaml the project ships loads with its own loader (strict keys and types), so a renamed key or
a typo in a config nobody ran lately fails here, not at the start of a user's training run."""
import glob
import os

import pytest

from lib.config import PROJECT_ROOT


def _configs(pattern):
    paths = sorted(glob.glob(os.path.join(PROJECT_ROOT, "experiments", pattern)))
    assert paths, f"no configs match experiments/{pattern}"
    return [pytest.param(p, id=os.path.relpath(p, PROJECT_ROOT)) for p in paths]


@pytest.mark.parametrize("path", _configs("fgfa_rfcn/cfgs/*.yaml") + _configs("rfcn/cfgs/*.yaml"))
def test_fgfa_and_rfcn_configs_load(path):
    from fgfa.config import get_config
    cfg = get_config(path)
    # the R-FCN configs are the FGFA detector with aggregation off
    assert cfg.NETWORK.AGGREGATE == ("/fgfa_rfcn/" in path.replace(os.sep, "/"))


@pytest.mark.parametrize("path", _configs("lstm_ssd/cfgs/*.yaml"))
def test_lstm_ssd_configs_load_and_build_their_augmentation(path):
    from lstm_ssd import config as lstm_config
    from lstm_ssd.train import clip_transform
    cfg = lstm_config.load(path)
    assert cfg.MODEL.TYPE in ("ssdlite", "lstm_ssd", "fast_slow")
    clip_transform(cfg, train=True)


@pytest.mark.parametrize("path", _configs("m2det/cfgs/*.yaml"))
def test_m2det_configs_load(path):
    from m2det.config import load
    load(path)


@pytest.mark.parametrize("path", _configs("custom/*.yaml"))
def test_recipe_templates_load(path):
    from experiments.custom.recipe import load_recipe_config
    load_recipe_config(path)
