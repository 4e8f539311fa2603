"""Migration from the TF Object Detection API: pipeline.config -> our yaml, with the unmapped list."""
import os

import pytest
import yaml

from lib.tools.import_tf_pipeline import PipelineParseError, main, map_pipeline, parse_text_proto

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "ssd_mobilenet_v2_pipeline.config")


def test_text_proto_parser_handles_nesting_repeats_and_quotes():
    parsed = parse_text_proto('a { b: 1 c: "x y" } a { b: 2 } d: true e: 1.5 f: NAME g: [1, 2]')
    assert parsed == {"a": [{"b": 1, "c": "x y"}, {"b": 2}], "d": True, "e": 1.5, "f": "NAME", "g": [1, 2]}


def test_parse_error_names_line():
    with pytest.raises(PipelineParseError, match=r"x.config:2"):
        parse_text_proto("a {\n : 3 }", "x.config")


def test_sample_pipeline_maps_basic_fields():
    with open(SAMPLE) as f:
        mapped, unmapped = map_pipeline(parse_text_proto(f.read(), SAMPLE))
    assert mapped["DETECTOR"] == "ssdlite" and mapped["BACKBONE"] == "ssd_mobilenet_v2"
    assert mapped["NUM_CLASSES"] == 1 and mapped["INPUT"] == {"SIZE": [300, 300]}
    assert mapped["WIDTH_MULTIPLIER"] == 1.0
    assert mapped["TRAIN"]["BATCH_SIZE"] == 24 and mapped["TRAIN"]["ITERATIONS"] == 20000
    assert mapped["TRAIN"]["OPTIMIZER"] == "rmsprop" and mapped["TRAIN"]["LR"] == pytest.approx(0.004)
    assert [a["name"] for a in mapped["TRAIN"]["AUGMENT"]] == ["RandomFlip", "SSDRandomCrop", "PhotometricDistort"]
    assert mapped["DATA"]["TRAIN"] == {"FORMAT": "tfrecord", "PATH": "data/train.record",
                                       "LABEL_MAP": "data/label_map.pbtxt"}
    assert mapped["DATA"]["VAL"]["PATH"] == "data/test.record"
    text = "\n".join(unmapped)
    # what we do not map is listed, what we map is not
    for field in ("fine_tune_checkpoint", "box_coder", "decay_steps", "momentum_optimizer_value",
                  "min_depth", "shuffle", "max_delta"):
        assert field in text, field
    for field in ("num_classes", "batch_size", "num_steps", "initial_learning_rate", "input_path"):
        assert field not in text, field


def test_cli_writes_yaml_with_unmapped_comment(tmp_path, capsys):
    out = tmp_path / "mapped.yaml"
    assert main([SAMPLE, "--out", str(out)]) == 0
    data = yaml.safe_load(out.read_text())
    assert data["NUM_CLASSES"] == 1
    assert "not mapped" in out.read_text() and "fine_tune_checkpoint" in capsys.readouterr().err
