"""lib.config: strict merging of yaml over defaults, with errors that name the key and file."""
import os

import pytest

from lib.config import ConfigError, dump_config, load_config, merge, parse_overrides, require_files

DEFAULTS = {
    "MODEL": {"DEPTH": 50, "SCALES": [8, 16, 32], "USE_BN": True, "NAME": "rfcn"},
    "TRAIN": {"LR": 0.001, "EPOCHS": 2, "EXTRA": None},
    "DATASET": {"ROOT": ""},
}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_values_override_defaults_and_ints_become_floats(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", "MODEL:\n  DEPTH: 18\nTRAIN:\n  LR: 1\n"), DEFAULTS)
    assert cfg.MODEL.DEPTH == 18 and cfg.MODEL.SCALES == [8, 16, 32]
    assert cfg.TRAIN.LR == 1.0 and isinstance(cfg.TRAIN.LR, float)
    assert DEFAULTS["MODEL"]["DEPTH"] == 50  # defaults untouched


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "MODEL:\n  DEPHT: 18\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, DEFAULTS)
    assert "MODEL.DEPHT" in str(err.value) and "bad.yaml" in str(err.value) and "DEPTH" in str(err.value)


@pytest.mark.parametrize("text,key", [("MODEL:\n  DEPTH: eighteen\n", "MODEL.DEPTH"),
                                      ("MODEL:\n  USE_BN: 1\n", "MODEL.USE_BN"),
                                      ("MODEL:\n  SCALES: 8\n", "MODEL.SCALES"),
                                      ("TRAIN: 3\n", "TRAIN")])
def test_wrong_type_names_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "t.yaml", text), DEFAULTS)
    assert f"'{key}'" in str(err.value)


def test_none_default_accepts_anything(tmp_path):
    cfg = load_config(write(tmp_path, "n.yaml", "TRAIN:\n  EXTRA: {a: 1}\n"), DEFAULTS)
    assert cfg.TRAIN.EXTRA.a == 1


def test_base_inheritance_and_loop(tmp_path):
    write(tmp_path, "base.yaml", "MODEL:\n  DEPTH: 34\nTRAIN:\n  EPOCHS: 5\n")
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nTRAIN:\n  EPOCHS: 7\n")
    cfg = load_config(child, DEFAULTS)
    assert (cfg.MODEL.DEPTH, cfg.TRAIN.EPOCHS) == (34, 7)
    loop = write(tmp_path, "loop.yaml", "_BASE_: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(loop, DEFAULTS)


def test_several_bases_merge_in_order(tmp_path):
    write(tmp_path, "model.yaml", "MODEL:\n  DEPTH: 34\nTRAIN:\n  EPOCHS: 5\n  LR: 0.5\n")
    write(tmp_path, "schedule.yaml", "TRAIN:\n  EPOCHS: 9\n")
    child = write(tmp_path, "child.yaml", "_BASE_: [model.yaml, schedule.yaml]\nTRAIN:\n  LR: 0.1\n")
    cfg = load_config(child, DEFAULTS)
    # the later base wins over the earlier one, the file itself over both; untouched keys survive
    assert (cfg.MODEL.DEPTH, cfg.TRAIN.EPOCHS, cfg.TRAIN.LR) == (34, 9, 0.1)
    bad = write(tmp_path, "bad.yaml", "_BASE_: {a: 1}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*_BASE_"):
        load_config(bad, DEFAULTS)


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "MODEL:\n  DEPTH: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, DEFAULTS)
    assert "broken.yaml" in str(err.value) and "line" in str(err.value)


def test_missing_file_and_command_line_overrides(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"), DEFAULTS)
    cfg = load_config(None, DEFAULTS, overrides=["TRAIN.LR=0.5", "MODEL.SCALES=[4, 8]"])
    assert cfg.TRAIN.LR == 0.5 and cfg.MODEL.SCALES == [4, 8]
    with pytest.raises(ConfigError, match="command line"):
        load_config(None, DEFAULTS, overrides=["TRAIN.LRR=0.5"])
    assert parse_overrides(["A.B.C=3"]) == {"A": {"B": {"C": 3}}}


def test_open_keys_accept_free_form_mappings():
    out = merge({"DATA": {"ARGS": {}}}, {"DATA": {"ARGS": {"anything": 1}}}, open_keys=("DATA.ARGS",))
    assert out["DATA"]["ARGS"] == {"anything": 1}


def test_open_key_mapping_is_replaced_by_a_file_but_patched_by_the_command_line(tmp_path):
    defaults = {"DATA": {"TEST": {}}}
    base = write(tmp_path, "base.yaml", "DATA:\n  TEST: {FORMAT: voc, ROOT: r, SPLIT: test, OPTS: {a: 1, b: 2}}\n")
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nDATA:\n  TEST: {FORMAT: csv, FILE: x.csv}\n")
    # a file naming another dataset does not inherit the base's keys
    assert load_config(child, defaults, open_keys=("DATA.TEST",)).DATA.TEST == {"FORMAT": "csv", "FILE": "x.csv"}
    # --set changes the keys it names and keeps the others (also inside a nested mapping)
    cfg = load_config(base, defaults, overrides=["DATA.TEST.SPLIT=train", "DATA.TEST.OPTS.b=3"],
                      open_keys=("DATA.TEST",))
    assert cfg.DATA.TEST == {"FORMAT": "voc", "ROOT": "r", "SPLIT": "train", "OPTS": {"a": 1, "b": 3}}
    # a whole mapping given on the command line replaces the old one, as in a file
    cfg = load_config(base, defaults, overrides=["DATA.TEST={FORMAT: csv, FILE: y.csv}"], open_keys=("DATA.TEST",))
    assert cfg.DATA.TEST == {"FORMAT": "csv", "FILE": "y.csv"}


def test_size_keys_take_an_int_or_a_pair(tmp_path):
    keys = ("MODEL.DEPTH",)
    base = write(tmp_path, "base.yaml", "MODEL: {DEPTH: [360, 640]}\n")
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nMODEL: {DEPTH: 320}\n")
    assert load_config(base, DEFAULTS, size_keys=keys).MODEL.DEPTH == [360, 640]
    assert load_config(child, DEFAULTS, size_keys=keys).MODEL.DEPTH == 320      # int over a base's pair
    assert load_config(base, DEFAULTS, ["MODEL.DEPTH=64"], size_keys=keys).MODEL.DEPTH == 64
    assert load_config(base, DEFAULTS, ["MODEL.DEPTH=0"], size_keys=keys).MODEL.DEPTH == 0   # 0 = not set
    for bad in ("[360]", "[360, 64.5]", "big", "true"):
        with pytest.raises(ConfigError, match=r"command line.*MODEL\.DEPTH.*S or a list \[H, W\]"):
            load_config(base, DEFAULTS, [f"MODEL.DEPTH={bad}"], size_keys=keys)
    with pytest.raises(ConfigError, match="MODEL.DEPTH' must be int"):   # other keys keep the strict type
        load_config(base, DEFAULTS)


def test_require_files_resolves_and_reports(tmp_path):
    (tmp_path / "data").mkdir()
    cfg = load_config(write(tmp_path, "c.yaml", "DATASET:\n  ROOT: data\n"), DEFAULTS)
    require_files(cfg, ["DATASET.ROOT"], base_dir=str(tmp_path))
    assert cfg.DATASET.ROOT == os.path.join(str(tmp_path), "data")
    cfg.DATASET.ROOT = "missing_dir"
    with pytest.raises(ConfigError) as err:
        require_files(cfg, ["DATASET.ROOT"], base_dir=str(tmp_path))
    assert "DATASET.ROOT" in str(err.value) and "missing_dir" in str(err.value)


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, DEFAULTS)
    path = str(tmp_path / "out.yaml")
    dump_config(cfg, path)
    again = load_config(path, DEFAULTS)
    assert again.MODEL.SCALES == cfg.MODEL.SCALES and again.TRAIN.LR == cfg.TRAIN.LR
