"""fgfa.flow_check: the Farneback and DIS references against known translations, the scoring, the
feature-alignment check, and the CLI."""
import json
import os

import cv2
import numpy as np

from fgfa import flow_check
from lib.config import PROJECT_ROOT

TINY = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml")


def _texture(height, width, seed=0):
    """Smooth random texture (Farneback needs structure at several scales)."""
    rng = np.random.RandomState(seed)
    image = np.zeros((height, width), np.float32)
    for size in (4, 16, 64):
        noise = rng.rand(height // size + 2, width // size + 2).astype(np.float32)
        image += cv2.resize(noise, (width + 2 * size, height + 2 * size))[size:size + height, size:size + width]
    image = (255 * (image - image.min()) / (image.max() - image.min())).astype(np.uint8)
    return np.stack([image] * 3, axis=2)


def _shifted_pair(dx, dy, height=192, width=256):
    """first, second: the content at (x, y) of ``first`` is at (x + dx, y + dy) in ``second``."""
    big = _texture(height + 64, width + 64)
    first = big[32:32 + height, 32:32 + width]
    second = big[32 - dy:32 - dy + height, 32 - dx:32 - dx + width]
    return np.ascontiguousarray(first), np.ascontiguousarray(second)


def test_farneback_reference_recovers_a_known_translation():
    first, second = _shifted_pair(12, -6)
    flow = flow_check.farneback_flow(first, second)
    inner = flow[32:-32, 32:-32].reshape(-1, 2)
    assert np.abs(np.median(inner, axis=0) - [12, -6]).max() < 0.5


def test_scoring_of_the_true_flow_and_of_zero_flow():
    dx, dy, stride = 16, 8, 16
    first, second = _shifted_pair(dx, dy)
    rows, cols = first.shape[0] // stride, first.shape[1] // stride
    truth = np.tile(np.array([dx / stride, dy / stride], np.float32), (rows, cols, 1))
    exact = flow_check.summarize([flow_check.compare_pair(first, second, lambda a, b: truth, stride)])
    zero = flow_check.summarize([flow_check.compare_pair(
        first, second, lambda a, b: np.zeros((rows + 1, cols + 1, 2), np.float32), stride)])
    # cells leaving the frame fail the forward-backward check; most of the frame is scored
    assert exact["valid_fraction"] > 0.6
    # zero flow is wrong by the whole motion: |(1, 0.5)| feature px
    assert abs(zero["all"]["epe_zero_flow"] - np.hypot(1.0, 0.5)) < 0.1
    assert zero["all"]["epe_flownet"] == zero["all"]["epe_zero_flow"]
    assert exact["all"]["epe_flownet"] < 0.1 and exact["all"]["error_removed"] > 0.9
    assert exact["objects"] == {"cells": 0}


def test_box_cells_hand_computed():
    # stride 16, boxes in original pixels at scale 0.5: [32, 0, 96, 40] -> [16, 0, 48, 20]
    mask = flow_check.box_cells([[32, 0, 96, 40]], 0.5, (3, 4), 16)
    expected = np.zeros((3, 4), bool)
    expected[0, 1:3] = True     # centres x 24, 40 inside [16, 48); y 8 inside [0, 20)
    assert (mask == expected).all()


def test_consistency_mask_rejects_contradicting_flows():
    forward = np.full((32, 32, 2), 2.0, np.float32)
    assert flow_check.consistent_mask(forward, -forward, 0.5)[:20, :20].all()
    assert not flow_check.consistent_mask(forward, forward, 0.5).any()


def _fresh_flownet_params(tmp_path):
    """A just-initialised FlowNet of the tiny config (zero flow), saved: the path."""
    import mxnet as mx
    from fgfa.config import get_config
    from fgfa.flownet import FlowNetSimple
    cfg = get_config(TINY)
    net = FlowNetSimple(cfg.NETWORK.FLOW_WIDTH, cfg.NETWORK.FLOW_SCALE, prefix="flownet_")
    net.initialize(ctx=mx.cpu())
    net(mx.nd.zeros((1, 3, 96, 128)), mx.nd.zeros((1, 3, 96, 128)))
    params = str(tmp_path / "flownet.params")
    net.save_parameters(params)
    return params


def test_cli_on_the_tiny_synthetic_videos(tmp_path, capsys):
    """A fresh FlowNet predicts zero flow (its predictors start at zero): its EPE must equal the
    zero-flow EPE on every offset, and the JSON and picture are written."""
    params = _fresh_flownet_params(tmp_path)
    out = tmp_path / "check"
    rc = flow_check.main(["--cfg", TINY, "--flownet", params, "--offsets", "1,2", "--pairs", "4",
                          "--out", str(out), "--set", "TRAIN.PROGRESS=False", "--reference", "farneback"])
    assert rc == 0
    result = json.loads((out / "flow_check.json").read_text())
    assert set(result["offsets"]) == {"1", "2"}
    for r in result["offsets"].values():
        assert r["pairs"] == 4
        assert abs(r["all"]["epe_flownet"] - r["all"]["epe_zero_flow"]) < 1e-6
    assert (out / "flow_check.png").is_file()
    assert "FlowNet vs Farneback" in capsys.readouterr().out


def test_cli_missing_weights_is_a_clear_error(tmp_path, capsys):
    rc = flow_check.main(["--cfg", TINY, "--flownet", str(tmp_path / "nope.params")])
    assert rc == 2
    assert "nope.params" in capsys.readouterr().err


def test_split_only_scores_the_split_frames_not_their_whole_videos(tmp_path):
    # the tiny videos have 12 frames; the key-frame image set keeps frames 0-9 of each: pairs 9 frames
    # apart are 3 per video in the whole videos and 1 per video within the set
    params = _fresh_flownet_params(tmp_path)
    pairs = {}
    for split_only in (False, True):
        out = tmp_path / f"check_{split_only}"
        args = ["--cfg", TINY, "--flownet", params, "--offsets", "9", "--pairs", "10", "--out", str(out),
                "--set", "TRAIN.PROGRESS=False", "DATASET.TEST.IMAGE_SET=VID_train_15frames"]
        assert flow_check.main(args + (["--split-only"] if split_only else [])) == 0
        pairs[split_only] = json.loads((out / "flow_check.json").read_text())["offsets"]["9"]["pairs"]
    assert pairs == {False: 6, True: 2}


def test_dis_reference_recovers_a_known_translation():
    first, second = _shifted_pair(12, -6)
    flow, consistent = flow_check.REFERENCES["dis"]()(first, second, 8.0)
    inner = flow[32:-32, 32:-32].reshape(-1, 2)
    assert np.abs(np.median(inner, axis=0) - [12, -6]).max() < 0.5 and consistent[32:-32, 32:-32].mean() > 0.9


def test_feature_alignment_prefers_the_true_flow():
    """Features that move with the image (cell means of the frame): warped by the true flow they match
    the key frame's; unwarped, or warped by a wrong flow, less."""
    first, second = _shifted_pair(32, 0)           # 2 cells of 16 px to the right

    def features(image):
        cells = flow_check.to_cells(image.astype(np.float32), 16)          # (h, w, 3)
        cells = np.concatenate([cells, cells ** 2 / 255.0], axis=2)
        return (cells - np.array([128.0] * 3 + [64.0] * 3)).transpose(2, 0, 1)[None]   # centred: cosines spread
    rows, cols = 192 // 16, 256 // 16
    valid = np.ones((rows, cols), bool)
    true = np.tile(np.array([2.0, 0.0], np.float32), (rows, cols, 1))
    result = flow_check.feature_alignment(features, first, second, {"flownet": true, "wrong": -true}, 16, valid)
    assert result["flownet"] > 0.999 and result["flownet"] > result["unwarped"] + 0.2
    assert result["wrong"] < result["flownet"]


def test_cli_with_a_detector_reports_feature_cosines(tmp_path, capsys):
    """--model: the detector's own features are compared warped (FlowNet, DIS) and unwarped."""
    import mxnet as mx
    from fgfa.config import get_config
    from fgfa.train import build_model
    from lib.train.run import RunFolder
    cfg = get_config(TINY)
    run = tmp_path / "run"
    RunFolder(str(run)).write("fgfa", ["a", "b"], cfg)
    mx.random.seed(3)
    model = build_model(cfg, 2, mx.cpu())
    model.save_parameters(str(run / "model.params"))
    out = tmp_path / "check"
    assert flow_check.main(["--cfg", TINY, "--model", str(run / "model.params"), "--offsets", "1", "--pairs", "3",
                            "--out", str(out), "--set", "TRAIN.PROGRESS=False"]) == 0
    result = json.loads((out / "flow_check.json").read_text())
    cosine = result["offsets"]["1"]["feature_cosine"]
    assert result["reference"] == "dis" and set(cosine) == {"flownet", "dis", "unwarped"}
    assert all(-1.0 <= v <= 1.0 for v in cosine.values())
    assert "feature cosine to the key frame" in capsys.readouterr().out
