"""Every yaml the project ships loads with its own loader (strict keys and types), so a renamed key or
a typo in a config nobody ran lately fails here, not at the start of a user's training run; and every
value the yaml sets is the value the loaded config holds (the file read again with PyYAML as the
oracle), so a loader that drops or renames a key silently fails here too."""
import glob
import os

import pytest
import yaml

from lib.config import PROJECT_ROOT


def _configs(pattern):
    paths = sorted(glob.glob(os.path.join(PROJECT_ROOT, "experiments", pattern)))
    assert paths, f"no configs match experiments/{pattern}"
    return [pytest.param(p, id=os.path.relpath(p, PROJECT_ROOT)) for p in paths]


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if key == "_BASE_":
            continue
        if isinstance(value, dict) and value:
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _same(written, loaded):
    if isinstance(loaded, tuple):
        loaded = list(loaded)
    if written == loaded:
        return True
    if isinstance(written, str) and isinstance(loaded, float):  # "1e-3": PyYAML's string, a float key
        try:
            return float(written) == loaded
        except ValueError:
            return False
    if isinstance(written, str) and isinstance(loaded, str):      # a relative path resolved to the root
        return os.path.normpath(os.path.join(PROJECT_ROOT, written)) == os.path.normpath(loaded)
    if isinstance(written, list) and isinstance(loaded, list) and len(written) == len(loaded):
        return all(_same(w, g) for w, g in zip(written, loaded))
    return False


def assert_yaml_values_applied(path, cfg):
    """Every leaf the yaml file itself sets (its _BASE_ files aside) holds that value in ``cfg``."""
    with open(path, "r", encoding="utf-8") as f:
        written = yaml.safe_load(f) or {}
    leaves = list(_leaves(written))
    assert leaves, f"{path} sets nothing"
    for keys, value in leaves:
        loaded = cfg
        for key in keys:
            if isinstance(loaded, list) and len(loaded) == 1 and isinstance(loaded[0], dict):
                loaded = loaded[0]      # a single dataset spec is loaded as a list of one
            loaded = loaded[key]
        assert _same(value, loaded), f"{path}: {'.'.join(keys)} is {value!r} in the file, {loaded!r} when loaded"


@pytest.mark.parametrize("path", _configs("fgfa_rfcn/cfgs/*.yaml") + _configs("rfcn/cfgs/*.yaml"))
def test_fgfa_and_rfcn_configs_load(path):
    from fgfa.config import get_config
    cfg = get_config(path)
    # the R-FCN configs are the FGFA detector with aggregation off
    assert cfg.NETWORK.AGGREGATE == ("/fgfa_rfcn/" in path.replace(os.sep, "/"))
    assert_yaml_values_applied(path, cfg)


@pytest.mark.parametrize("path", _configs("lstm_ssd/cfgs/*.yaml"))
def test_lstm_ssd_configs_load_and_build_their_augmentation(path):
    from lstm_ssd import config as lstm_config
    from lstm_ssd.train import clip_transform
    cfg = lstm_config.load(path)
    assert cfg.MODEL.TYPE in ("ssdlite", "lstm_ssd", "fast_slow")
    assert callable(clip_transform(cfg, train=True))
    assert_yaml_values_applied(path, cfg)


@pytest.mark.parametrize("path", _configs("m2det/cfgs/*.yaml"))
def test_m2det_configs_load(path):
    from m2det.config import load
    assert_yaml_values_applied(path, load(path))


@pytest.mark.parametrize("path", _configs("custom/*.yaml"))
def test_recipe_templates_load(path):
    from experiments.custom.recipe import load_recipe_config
    from lib.family import family_names
    cfg = load_recipe_config(path)
    assert cfg.DETECTOR in family_names()
    assert_yaml_values_applied(path, cfg)


def test_the_oracle_sees_a_dropped_key(tmp_path):
    """assert_yaml_values_applied fails when the loaded config misses or changes a value."""
    path = tmp_path / "c.yaml"
    path.write_text("A: {B: 2, C: [1, 2]}\nD: 1e-3\n")
    assert_yaml_values_applied(str(path), {"A": {"B": 2, "C": (1, 2)}, "D": 0.001})
    with pytest.raises(AssertionError, match="A.B is 2 in the file, 3 when loaded"):
        assert_yaml_values_applied(str(path), {"A": {"B": 3, "C": [1, 2]}, "D": 0.001})
    with pytest.raises(KeyError):
        assert_yaml_values_applied(str(path), {"A": {"C": [1, 2]}, "D": 0.001})
