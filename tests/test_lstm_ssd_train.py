"""LSTM-SSD training, policy and tools: overfitting a short synthetic clip, Double DQN, prune CLI."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset import read_image
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import build_detector, save_model
from lstm_ssd.policy import ACTIONS, PolicyAgent, DoubleDQN, detection_rewards, double_dqn_targets

TINY_CFG = os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "cfgs", "tiny_test.yaml")


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_tiny"))
    cfg = lstm_config.load(TINY_CFG)
    cfg.DATASET.TRAIN[0].ROOT = cfg.DATASET.VAL[0].ROOT = root
    return cfg


@pytest.mark.parametrize("wide", [False, True])
def test_tiny_model_overfits_a_short_synthetic_clip(tiny_cfg, tmp_path, wide):
    """Square input, and a 2:1 input on 2:1 video (INPUT.SIZE [H, W]): box targets are scaled
    per axis, so a wrong axis would keep mAP low."""
    from lstm_ssd.train import ClipData, ClipTask, evaluate, load_split
    cfg = tiny_cfg
    if wide:
        cfg = lstm_config.load(TINY_CFG, ["INPUT.SIZE=[64, 128]"])
        cfg.DATASET.TRAIN[0].ROOT = cfg.DATASET.VAL[0].ROOT = str(tmp_path / "wide")
        cfg.DATASET.TRAIN[0].WIDTH = cfg.DATASET.VAL[0].WIDTH = 256
        cfg.DATASET.TRAIN[0].HEIGHT = cfg.DATASET.VAL[0].HEIGHT = 128
    mx.random.seed(0)
    np.random.seed(0)
    net = build_detector(cfg)
    net.hybridize_parts(static_alloc=True)
    ds = load_split(cfg, "TRAIN")
    assert len(ds) == 4 and all(len(r.boxes) == 1 for r in ds)
    batch = next(iter(ClipData(ds, cfg, net.anchors())(0)))
    assert batch["frames"].shape == ((1, 4, 3, 64, 128) if wide else (1, 4, 3, 64, 64))
    assert batch["schedule"] == ["large"] * 4
    task = ClipTask(net, cfg)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.02})
    losses = []
    for _ in range(60):
        with autograd.record():
            loss, _ = task.loss(batch)
        loss.backward()
        trainer.step(1)
        losses.append(float(loss.asscalar()))
    assert losses[-1] < 0.1 * losses[0]
    result = evaluate(cfg, net, ds)
    assert result["frames"] == 4 and result["mAP"] > 0.9
    # TEST.SUBSETS: the mAP of listed frames only, while the whole video is still streamed
    from lib.eval import voc_ap
    subset = tmp_path / "two_frames.txt"
    subset.write_text(f"{ds[1].video} {ds[1].frame}\n\n{ds[3].video} {ds[3].frame}\n")
    cfg.TEST.SUBSETS = {"two": str(subset)}
    try:
        result = evaluate(cfg, net, ds)
    finally:
        cfg.TEST.SUBSETS = {}
    assert result["frames"] == 4 and result["subsets"]["two"]["frames"] == 2
    records = list(ds)
    dets = []
    from lstm_ssd.streaming import StreamingDetector
    stream = StreamingDetector(net, cfg, policy=cfg.INTERLEAVE.POLICY)
    stream.reset()
    assert [r.frame for r in records] == sorted(r.frame for r in records)  # one video, in order
    for rec in records:
        (_, (boxes, scores, labels)), = stream.step(read_image(rec.image))
        dets.append((boxes, scores, labels))
    expected = voc_ap([records[1], records[3]], [dets[1], dets[3]], ds.classes)["mAP"]
    assert result["subsets"]["two"]["mAP"] == pytest.approx(expected)
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        pytest.skip("the float parts passed; TEST.QUANTIZE int8 needs an MKLDNN (oneDNN) build of MXNet")
    # TEST.QUANTIZE int8: extractor and head quantized on the training frames, the fit survives
    cfg.TEST.QUANTIZE, cfg.TEST.CALIB_FRAMES = "int8", 4
    try:
        int8 = evaluate(cfg, net, ds)
    finally:
        cfg.TEST.QUANTIZE = ""
    assert net.quantized and int8["frames"] == 4 and int8["mAP"] > 0.9
    net.clear_cached_graphs()
    cfg.TEST.QUANTIZE = "int4"
    try:
        with pytest.raises(ConfigError, match="TEST.QUANTIZE"):
            evaluate(cfg, net, ds)
    finally:
        cfg.TEST.QUANTIZE = ""


def test_carried_state_is_masked_per_lane(tiny_cfg):
    from lstm_ssd.train import ClipTask
    net = build_detector(tiny_cfg)
    task = ClipTask(net, tiny_cfg)
    shape = (2,) + net.state_shape
    task.lane_state = [(mx.nd.ones(shape), mx.nd.ones(shape) * 2)]    # the lanes of the one context
    c, h = task.initial_state(np.array([True, False]), 2)
    assert float(c[0].min().asscalar()) == 1 and float(h[0].min().asscalar()) == 2
    assert float(c[1].abs().max().asscalar()) == 0 and float(h[1].abs().max().asscalar()) == 0


def test_move_state_moves_the_training_memory_only_where_the_scene_moves(tiny_cfg):
    """TRAIN.MOVE_STATE: on a still clip (DIS flow zero) the loss is the loss without it; on the moving
    synthetic clip it differs (the state is warped); a model without memory refuses it, naming the key."""
    from lstm_ssd.train import ClipData, ClipTask, load_split
    moving = lstm_config.load(TINY_CFG, ["TRAIN.MOVE_STATE=true", "TEST.MOTION.PRESET=medium",
                                         "TEST.MOTION.SCALE=1.0"])
    moving.DATASET = tiny_cfg.DATASET
    net = build_detector(tiny_cfg)
    batch = next(iter(ClipData(load_split(tiny_cfg, "TRAIN"), tiny_cfg, net.anchors())(0)))
    net(mx.nd.array(batch["frames"]))
    rng = np.random.RandomState(0)
    for name, p in net.collect_params().items():    # weights large enough that the state counts
        scale = (0.5, 1.5) if name.endswith(("running_var", "gamma")) else (-0.3, 0.3)
        p.set_data(mx.nd.array(rng.uniform(*scale, p.shape)))
    first = batch["frames"][:, :1]
    steps = batch["frames"].shape[1]
    still = dict(batch, frames=np.repeat(first, steps, axis=1))
    # the first frame sliding right by a quarter of the image per frame
    slide = dict(batch, frames=np.concatenate([np.roll(first, 16 * t, axis=-1) for t in range(steps)], axis=1))

    def loss(cfg, b):
        return float(ClipTask(net, cfg).loss(b)[0].asscalar())

    # measured: 0 on the still clip, 9e-5 of the loss on the sliding one (most of the loss is the head's)
    assert loss(moving, still) == pytest.approx(loss(tiny_cfg, still), rel=1e-6)
    assert abs(loss(moving, slide) - loss(tiny_cfg, slide)) > 1e-5 * loss(tiny_cfg, slide)
    ssdlite = lstm_config.load(TINY_CFG, ["TRAIN.MOVE_STATE=true", "MODEL.TYPE=ssdlite"])
    with pytest.raises(ConfigError, match="TRAIN.MOVE_STATE moves the memory state; MODEL.TYPE ssdlite has none"):
        ClipTask(build_detector(ssdlite), ssdlite)


def test_frame_drop_needs_a_memory(tiny_cfg):
    """RandomFrameDrop in TRAIN.AUGMENTATIONS: an SSDLite (no memory) refuses it naming the key, an LSTM-SSD
    takes it; with TRAIN.AUGMENT off (the tiny config's own setting) the SSDLite takes the list too (nothing is
    applied)."""
    from lstm_ssd.train import ClipTask
    drop = "TRAIN.AUGMENTATIONS=[{name: frame_drop, p: 0.1}, RandomFlip]"
    ssdlite = lstm_config.load(TINY_CFG, [drop, "MODEL.TYPE=ssdlite", "TRAIN.AUGMENT=true"])
    with pytest.raises(ConfigError, match=r"TRAIN.AUGMENTATIONS: RandomFrameDrop .*MODEL.TYPE ssdlite has none"):
        ClipTask(build_detector(ssdlite), ssdlite)
    off = lstm_config.load(TINY_CFG, [drop, "MODEL.TYPE=ssdlite", "TRAIN.AUGMENT=false"])
    ClipTask(build_detector(off), off)
    with_memory = lstm_config.load(TINY_CFG, [drop, "TRAIN.AUGMENT=true"])
    assert with_memory.MODEL.TYPE == "lstm_ssd"
    ClipTask(build_detector(with_memory), with_memory)


def test_state_dropout_restarts_a_lane_from_a_zero_state(tiny_cfg):
    """TRAIN.STATE_DROPOUT: where state_keep is 0, that sequence continues as if its clip started there (the
    oracle: the same model on the rest of the clip from a zero state); the other sequence is untouched.
    The mask comes from the data seed: the same epoch gives the same mask, and 0 keeps every state."""
    from lstm_ssd.train import ClipData, load_split
    mx.random.seed(4)
    net = build_detector(tiny_cfg)
    clip = mx.nd.random.uniform(0, 255, shape=(2, 4, 3, 64, 64))
    keep = mx.nd.array([[1, 1, 0, 1], [1, 1, 1, 1]])
    cls, box, (c, h) = net(clip, None, None, keep)
    plain_cls, _, (plain_c, plain_h) = net(clip)
    rest_cls, rest_box, (rest_c, rest_h) = net(clip[0:1, 2:])

    def close(a, b, rel=1e-4):           # relative to the scale: a random model's logits are tiny
        a, b = a.asnumpy(), b.asnumpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=rel * max(np.abs(b).max(), 1e-30))

    for got, want in ((c[0], rest_c[0]), (h[0], rest_h[0]), (cls[0, 2:], rest_cls[0]), (box[0, 2:], rest_box[0]),
                      (cls[0, :2], plain_cls[0, :2]), (cls[1], plain_cls[1]), (c[1], plain_c[1])):
        close(got, want)
    diff = np.abs(h[0].asnumpy() - plain_h[0].asnumpy()).max()
    assert diff > 0.01 * np.abs(plain_h[0].asnumpy()).max()          # the zeroed state mattered
    ds = load_split(tiny_cfg, "TRAIN")
    masks = []
    for drop in (0.0, 0.5, 0.5):
        cfg = lstm_config.load(TINY_CFG, [f"TRAIN.STATE_DROPOUT={drop}", "TRAIN.BATCH_SIZE=2"])
        cfg.DATASET.TRAIN[0].ROOT = tiny_cfg.DATASET.TRAIN[0].ROOT
        masks.append(np.concatenate([b["state_keep"] for b in ClipData(ds, cfg, net.anchors())(3)]))
    assert masks[0].min() == 1.0
    np.testing.assert_array_equal(masks[1], masks[2])
    assert 0.0 < masks[1].mean() < 1.0


def test_distilling_the_small_extractor_trains_only_it_towards_the_large_features(tiny_cfg, tmp_path):
    """TRAIN.OBJECTIVE distill_small: the loss is the mean squared difference of the small and large
    projected features (oracle: the parts run one by one in numpy), it falls over training, and only
    the small extractor and its projection change; other model types are refused, naming the key."""
    from lstm_ssd.train import ClipData, DistillTask, train
    over = ["MODEL.TYPE=fast_slow", "MODEL.LSTM.RESIDUAL=true", "MODEL.SMALL.WIDTH=0.35",
            "MODEL.SMALL.INPUT_SIZE=32", "MODEL.SMALL.OUTPUT_STRIDE=16", "TRAIN.OBJECTIVE=distill_small",
            "TRAIN.EPOCHS=12", "TRAIN.LR=0.01", "TRAIN.CHECKPOINT_EVERY=1000"]
    cfg = lstm_config.load(TINY_CFG, over)
    cfg.DATASET.TRAIN[0].ROOT = cfg.DATASET.VAL[0].ROOT = tiny_cfg.DATASET.TRAIN[0].ROOT
    mx.random.seed(0)
    net = build_detector(cfg)
    net(mx.nd.zeros((1, 1, 3) + net.image_hw), None, ["large"])
    from lstm_ssd.train import load_split
    ds = load_split(cfg, "TRAIN")
    batch = next(iter(ClipData(ds, cfg, net.anchors())(0)))
    frames = mx.nd.array(batch["frames"].reshape((-1,) + batch["frames"].shape[2:]))
    want = np.mean((net.project_small(net.small(frames)).asnumpy() - net.project(net.large(frames)).asnumpy()) ** 2)
    task = DistillTask(net, cfg)
    first, parts = task.loss(batch)
    assert float(first.asscalar()) == pytest.approx(float(want), rel=1e-5) and "mse" in parts
    before = {k: v.data().asnumpy().copy() for k, v in net._collect_params_with_prefix().items()}
    train(cfg, net, out_dir=str(tmp_path / "distill"), dataset=ds)
    after = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(k.startswith(("small.", "project_small.")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("project_small.") for k in changed)
    last, _ = DistillTask(net, cfg).loss(batch)
    assert float(last.asscalar()) < 0.5 * float(first.asscalar())
    lstm = lstm_config.load(TINY_CFG, ["TRAIN.OBJECTIVE=distill_small"])
    with pytest.raises(ConfigError, match="TRAIN.OBJECTIVE distill_small needs MODEL.TYPE fast_slow"):
        DistillTask(build_detector(lstm), lstm)
    with pytest.raises(ConfigError, match="TRAIN.OBJECTIVE must be one of"):
        train(lstm_config.load(TINY_CFG, ["TRAIN.OBJECTIVE=distill"]), build_detector(lstm), dataset=ds,
              out_dir=str(tmp_path / "bad"))


def _memory_dependent_net(cfg):
    """A random tiny LSTM-SSD whose memory and head weights are large enough that its scores depend on
    the input and on the carried state."""
    mx.random.seed(2)
    net = build_detector(cfg)
    net(mx.nd.zeros((1, 1, 3) + net.image_hw), None, ["large"])
    rng = np.random.RandomState(3)
    for name, param in net.collect_params().items():
        if "running" not in name and ("memory" in name or "head" in name):
            param.set_data(mx.nd.array(rng.normal(0, 0.5, param.shape)))
    return net


def test_memory_reset_ablation_detects_each_frame_from_a_zero_state(tiny_cfg, monkeypatch):
    """TEST.MEMORY reset: every frame detected from a zero memory state (oracle: a fresh streaming
    detector per frame), unlike carry, where only the first frame of the video starts from zero; the
    interleaving schedule goes on (fast-slow at tau 1 still runs the large extractor on half the frames)."""
    import lstm_ssd.train as lstm_train
    from lstm_ssd.streaming import StreamingDetector
    seen = []

    def spy(records, detections, classes):
        seen.append([tuple(np.asarray(a) for a in d) for d in detections])
        return voc_ap(records, detections, classes)
    voc_ap = lstm_train.voc_ap
    monkeypatch.setattr(lstm_train, "voc_ap", spy)
    net = _memory_dependent_net(tiny_cfg)
    ds = lstm_train.load_split(tiny_cfg, "TRAIN")
    lstm_train.evaluate(tiny_cfg, net, ds)
    tiny_cfg.TEST.MEMORY = "reset"
    try:
        lstm_train.evaluate(tiny_cfg, net, ds)
    finally:
        tiny_cfg.TEST.MEMORY = "carry"
    carry, reset = seen
    alone = [StreamingDetector(net, tiny_cfg).step(read_image(rec.image))[0][1] for rec in ds]
    assert len(reset) == len(alone) == 4
    for got, want in zip(reset, alone):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(carry[0][1], reset[0][1], rtol=1e-5, atol=1e-5)   # both from zero
    assert not np.allclose(carry[3][1][:5], reset[3][1][:5], atol=1e-3)       # the memory changed scores
    over = ["MODEL.TYPE=fast_slow", "MODEL.SMALL.WIDTH=0.35", "MODEL.SMALL.INPUT_SIZE=32",
            "MODEL.SMALL.OUTPUT_STRIDE=16", "INTERLEAVE.POLICY=fixed", "INTERLEAVE.TAU=1", "TEST.MEMORY=reset"]
    cfg = lstm_config.load(TINY_CFG, over)
    result = lstm_train.evaluate(cfg, build_detector(cfg), ds)
    assert result["large_share"] == 0.5
    # tau 1 on one 4-frame snippet: large, small, large, small -> distances 0, 1, 0, 1
    assert {k: v["frames"] for k, v in result["by_distance"].items()} == {"0": 2, "1-2": 2}
    cfg.TEST.MEMORY = "forget"
    with pytest.raises(ConfigError, match="TEST.MEMORY must be carry or reset"):
        lstm_train.evaluate(cfg, build_detector(cfg), ds)


def test_memory_reset_holds_for_every_streaming_user(tiny_cfg):
    """The recipe's evaluate / detect_video and the demos stream with StreamingDetector directly: TEST.MEMORY
    reset (e.g. `evaluate.py --set OVERRIDES.TEST.MEMORY=reset`) must act there too, not only in
    lstm_ssd.train.evaluate. Oracle: a fresh detector per frame."""
    from lstm_ssd.streaming import StreamingDetector
    net = _memory_dependent_net(tiny_cfg)
    rng = np.random.RandomState(4)
    frames = [rng.randint(0, 255, (40, 56, 3)).astype(np.uint8) for _ in range(3)]
    tiny_cfg.TEST.MEMORY = "reset"
    try:
        reset = StreamingDetector(net, tiny_cfg).detect_video(frames)
    finally:
        tiny_cfg.TEST.MEMORY = "carry"
    carried = StreamingDetector(net, tiny_cfg).detect_video(frames)
    alone = [StreamingDetector(net, tiny_cfg).detect_video([f])[0] for f in frames]
    for got, want in zip(reset, alone):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert not np.allclose(carried[2][1][:5], reset[2][1][:5], atol=1e-3)     # carry differs: the test can fail


def test_double_dqn_targets_hand_computed():
    q_online_next = np.array([[1.0, 2.0], [3.0, 0.5], [0.0, 0.1]])
    q_target_next = np.array([[10.0, 20.0], [30.0, 5.0], [7.0, 9.0]])
    rewards = np.array([1.0, -1.0, 0.5])
    dones = np.array([0.0, 0.0, 1.0])
    # online picks actions 1, 0, 1; the target net evaluates them: 20, 30, (done)
    y = double_dqn_targets(q_online_next, q_target_next, rewards, dones, gamma=0.5)
    np.testing.assert_allclose(y, [1.0 + 0.5 * 20, -1.0 + 0.5 * 30, 0.5])
    r = detection_rewards({0: 2.0, 1: 2.5}, speed_bonus=0.1)
    assert r[0] == 0.0 and abs(r[1] - (-0.5 + 0.1)) < 1e-12


def test_dqn_learns_the_action_with_the_higher_reward():
    """A bandit over the policy features: small is right when the memory is 'fresh' (|h| small)."""
    agent = PolicyAgent(history_len=2, hidden=16)
    dqn = DoubleDQN(agent, gamma=0.0, lr=0.01, replay=500, batch=32, target_update=10, seed=0)
    rng = np.random.RandomState(0)
    dim = 4 * 3 + 2 * 2
    for step in range(400):
        s = rng.normal(0, 1, (1, dim)).astype(np.float32)
        a = rng.randint(2)
        best = 1 if s[0, 0] > 0 else 0
        dqn.remember(s, a, 1.0 if a == best else 0.0, s, True)
        dqn.update()
    test = rng.normal(0, 1, (200, dim)).astype(np.float32)
    chosen = np.argmax(agent.q_values(test), axis=1)
    assert np.mean(chosen == (test[:, 0] > 0)) > 0.85
    assert ACTIONS == ("large", "small")


def test_adaptive_policy_trains_and_streams(tiny_cfg):
    from lstm_ssd.streaming import StreamingDetector
    from lstm_ssd.train import load_split, train_adaptive_policy
    over = ["MODEL.TYPE=fast_slow", "MODEL.LARGE.NET=mobilenet_v2", "MODEL.LARGE.WIDTH=0.35",
            "MODEL.SMALL.INPUT_SIZE=32", "MODEL.SMALL.OUTPUT_STRIDE=16", "MODEL.LSTM.GROUPS=4",
            "MODEL.LSTM.OUTPUT_BOTTLENECK=true", "POLICY_NET.STEPS=12", "POLICY_NET.BATCH=4",
            "POLICY_NET.SPEED_BONUS=100.0", "POLICY_NET.EPSILON_STEPS=4"]
    cfg = lstm_config.load(TINY_CFG, over)
    cfg.DATASET = tiny_cfg.DATASET
    net = build_detector(cfg)
    agent = train_adaptive_policy(cfg, net, load_split(cfg, "TRAIN"), log=lambda *_: None)
    stream = StreamingDetector(net, cfg, policy="adaptive", policy_net=agent, hybridize=False)
    frame = np.random.RandomState(0).randint(0, 255, (64, 64, 3)).astype(np.uint8)
    for _ in range(3):
        stream.step(frame)
    assert len(stream.history) == 3 and set(stream.history) <= {0, 1}


def test_prune_cli_shrinks_a_saved_model(tiny_cfg, tmp_path):
    from lstm_ssd.prune import main as prune_main
    net = build_detector(tiny_cfg)
    net(mx.nd.zeros((1, 1, 3, 64, 64)))
    model = save_model(net, str(tmp_path / "tiny.params"))
    report = prune_main(["--cfg", TINY_CFG, "--model", model, "--ratio", "0.5", "--repeats", "2"])
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["macs_large"] < report["before"]["macs_large"]
    pruned = str(tmp_path / "tiny-pruned0.5.params")
    assert os.path.isfile(pruned)
    with open(str(tmp_path / "tiny-pruned0.5.prune.json")) as f:
        assert json.load(f)["ratio"] == 0.5
    # with fine-tuning: mAP of the model before pruning, after pruning, after fine-tuning
    report = prune_main(["--cfg", TINY_CFG, "--model", model, "--ratio", "0.5", "--repeats", "2",
                         "--finetune-epochs", "1", "--output", str(tmp_path / "tuned.params")])
    for key in ("map_unpruned", "map_before_finetune", "map_after_finetune"):
        assert 0.0 <= report[key] <= 1.0
    assert os.path.isfile(str(tmp_path / "tuned.params"))


def test_prune_cli_refuses_a_model_it_cannot_prune_in_one_line(tmp_path, capsys):
    from lstm_ssd.prune import main as prune_main
    cfg_path = tmp_path / "copy.yaml"      # a fast-slow model whose small extractor is a copy of the large one
    cfg_path.write_text(f"_BASE_: {TINY_CFG}\nMODEL:\n  TYPE: fast_slow\n"
                        f"  SMALL: {{NET: large, SHARE: false, INPUT_SIZE: 32}}\n  LSTM: {{RESIDUAL: true}}\n")
    net = build_detector(lstm_config.load(str(cfg_path)))
    net(mx.nd.zeros((1, 1, 3, 64, 64)))
    model = save_model(net, str(tmp_path / "copy.params"))
    assert prune_main(["--cfg", str(cfg_path), "--model", model, "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "copy.yaml" in err and "SHARE false" in err and "Traceback" not in err


def test_bad_config_values_name_the_file_and_key(tmp_path):
    from lib.config import ConfigError
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {TINY_CFG}\nMODEL:\n  LARGE: {{NET: resnet50}}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*mobilenet_v1 or mobilenet_v2"):
        build_detector(lstm_config.load(str(bad)))
    bad.write_text(f"_BASE_: {TINY_CFG}\nMODEL:\n  LSTM: {{UNITZ: 3}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*MODEL\.LSTM\.UNITZ"):
        lstm_config.load(str(bad))
    bad.write_text(f"_BASE_: {TINY_CFG}\nINPUT:\n  SIZE: [64]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*INPUT\.SIZE.*S or a list \[H, W\]"):
        build_detector(lstm_config.load(str(bad)))
    bad.write_text(f"_BASE_: {TINY_CFG}\nMODEL:\n  TYPE: fast_slow\n  SMALL: {{INPUT_SIZE: [32, 0]}}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*MODEL\.SMALL\.INPUT_SIZE"):
        build_detector(lstm_config.load(str(bad)))
    bad.write_text(f"_BASE_: {TINY_CFG}\nMODEL:\n  TYPE: fast_slow\n  SMALL: {{OUTPUT_STRIDE: 32}}\n")
    with pytest.raises(ValueError, match="same feature size"):
        build_detector(lstm_config.load(str(bad)))


def test_train_test_entry_point_trains_tests_and_appends_a_row(tiny_cfg, tmp_path):
    import csv
    import importlib.util
    script = os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "train_test.py")
    spec = importlib.util.spec_from_file_location("lstm_ssd_train_test", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import yaml
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "_BASE_": TINY_CFG, "OUTPUT_DIR": str(tmp_path / "run"), "TEST": {"RESULTS_TABLE": str(tmp_path / "results.md")},
        "DATASET": {"TRAIN": [dict(s) for s in tiny_cfg.DATASET.TRAIN],
                    "VAL": [dict(s) for s in tiny_cfg.DATASET.VAL]}}))
    module.main(["--cfg", str(cfg_path), "--print-images", "--set", "TRAIN.EPOCHS=2"])
    assert os.path.isfile(tmp_path / "run" / "model.params")
    assert len(os.listdir(tmp_path / "run" / "test_images")) == 4
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 1 and rows[0]["model"] == "lstm_ssd" and int(rows[0]["frames"]) == 4
    assert int(rows[0]["params"]) > 0 and int(rows[0]["macs_large"]) > 0
    assert "| lstm_ssd |" in (tmp_path / "results.md").read_text()
    # test-only phase reloads the saved model; every --set is kept
    assert module.parse_args(["--cfg", "x", "--set", "PHASE=[test]", "--set", "TRAIN.EPOCHS=2"]).set == \
        ["PHASE=[test]", "TRAIN.EPOCHS=2"]
    module.main(["--cfg", str(cfg_path), "--set", "PHASE=[test]"])
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 2


def test_results_table_written_with_older_columns_gains_the_new_ones(tmp_path):
    """A CSV from before a column was added is rewritten under the current header, old rows kept."""
    import csv
    from lstm_ssd.results import COLUMNS, append_result
    old_columns = [c for c in COLUMNS if c != "subsets"]
    csv_path = tmp_path / "results.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns)
        writer.writeheader()
        writer.writerow({"config": "old.yaml", "mAP": "0.5000", "note": "before"})
    append_result({"config": "new.yaml", "mAP": 0.25, "subsets": "degraded=0.1000/3fr", "note": "after"},
                  str(tmp_path / "results.md"))
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["config"] for r in rows] == ["old.yaml", "new.yaml"]
    assert rows[0]["note"] == "before" and rows[0]["subsets"] == "" and rows[0]["mAP"] == "0.5000"
    assert rows[1]["subsets"] == "degraded=0.1000/3fr" and rows[1]["note"] == "after"
    assert "| degraded=0.1000/3fr | after |" in (tmp_path / "results.md").read_text()
