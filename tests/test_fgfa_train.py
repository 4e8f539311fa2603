"""FGFA / R-FCN end to end on tiny synthetic data: overfitting, loss, exact resume, test phase, demo, errors."""
import json
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from fgfa.config import get_config
from fgfa.test import load_model, run_test
from fgfa.train import build_model, load_train_set, train
from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset import DetectionDataset
from lib.train import CheckpointError

TINY = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml")
RFCN_TINY = os.path.join(PROJECT_ROOT, "experiments", "rfcn", "cfgs", "rfcn_tiny.yaml")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fgfa_synthetic"))


def _cfg(path, root, out_dir, *overrides):
    spec = (f"{{FORMAT: synthetic, ROOT: {root}, SEED: 3, NUM_VIDEOS: 2, NUM_FRAMES: 12, WIDTH: 160, "
            f"HEIGHT: 120, NUM_CLASSES: 2, MAX_OBJECTS: 2, SPLIT: train}}")
    return get_config(path, [f"DATASET.TRAIN=[{spec}]", f"DATASET.VAL={spec}", f"OUTPUT_DIR={out_dir}",
                             "TRAIN.PROGRESS=false"] + list(overrides))


def _few_frames(cfg, count=4, repeat=1):
    full = load_train_set(cfg)
    first_video = list(full.snippets().values())[0][:count]
    return DetectionDataset(first_video * repeat, full.classes, "few"), DetectionDataset(first_video, full.classes,
                                                                                          "few")


def test_tiny_rfcn_overfits_few_frames(synthetic_root, tmp_path):
    """R-FCN (the FGFA network without aggregation) learns 4 synthetic frames: mAP near 1."""
    cfg = _cfg(RFCN_TINY, synthetic_root, str(tmp_path / "rfcn"), "TRAIN.EPOCHS=20", "TRAIN.LR=0.02",
               "TRAIN.LR_STEPS=[17]", "TRAIN.WARMUP_EPOCHS=0.5", "TRAIN.CHECKPOINT_EVERY=100")
    train_set, frames = _few_frames(cfg, 4, repeat=5)
    assert sum(r.num_boxes for r in frames) >= 4
    summary = train(cfg, dataset=train_set)
    result = run_test(cfg, model=summary["model"], classes=summary["classes"], dataset=frames, progress=False)
    assert result["mAP"] >= 0.9, result
    out = os.path.join(str(tmp_path / "rfcn"), "test")
    for name in ("results.md", "metrics.json", "detections.json", "pr_all.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert "slow" in open(os.path.join(out, "results.md")).read()  # VID metric with motion breakdown
    cfg.TEST.SEQ_NMS = True
    with_seq_nms = run_test(cfg, model=summary["model"], classes=summary["classes"], dataset=frames, progress=False)
    assert with_seq_nms["mAP"] >= 0.9, with_seq_nms
    # TEST.SUBSETS: scored on the listed frames only
    from lib.eval.subsets import write_frame_list
    cfg.TEST.SUBSETS = {"first_two": write_frame_list(str(tmp_path / "two.txt"), frames.records[:2])}
    sub = run_test(cfg, model=summary["model"], classes=summary["classes"], dataset=frames, progress=False)
    assert sub["subsets"]["first_two"]["frames"] == 2 and sub["subsets"]["first_two"]["mAP"] >= 0.9
    assert os.path.isfile(os.path.join(str(tmp_path / "rfcn"), "test_seqnms", "results.md"))


def test_fgfa_loss_falls_and_resume_is_exact(synthetic_root, tmp_path):
    overrides = ("TRAIN.EPOCHS=3", "TRAIN.LR=0.01", "TRAIN.LR_STEPS=[]", "TRAIN.WARMUP_EPOCHS=0.0")
    cfg = _cfg(TINY, synthetic_root, str(tmp_path / "straight"), *overrides)
    train_set, _ = _few_frames(cfg, 3)
    straight = train(cfg, dataset=train_set)
    history = json.load(open(os.path.join(str(tmp_path / "straight"), "history.json")))
    losses = [e["losses"]["loss"] for e in history["epochs"]]
    assert losses[-1] < 0.8 * losses[0], losses

    # the same run interrupted after epoch 1 and resumed: bit-identical parameters
    cfg1 = _cfg(TINY, synthetic_root, str(tmp_path / "resumed"), *overrides[1:], "TRAIN.EPOCHS=1")
    train(cfg1, dataset=train_set)
    cfg3 = _cfg(TINY, synthetic_root, str(tmp_path / "resumed"), *overrides)
    resumed = train(cfg3, dataset=train_set)
    assert resumed["start_epoch"] == 1
    a = straight["model"]._collect_params_with_prefix()
    b = resumed["model"]._collect_params_with_prefix()
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name].data().asnumpy(), b[name].data().asnumpy(), err_msg=name)

    # the checkpoint reloads into a fresh model for testing; a wrong class count is named
    model, classes = load_model(cfg3)
    assert classes == train_set.classes
    np.testing.assert_array_equal(model.rpn.cls.weight.data().asnumpy(), resumed["model"].rpn.cls.weight.data().asnumpy())
    with pytest.raises(CheckpointError, match="does not match the network"):
        load_model(cfg3, classes=["only_one"] * 3)


def test_fgfa_starts_from_the_rfcn_baseline_weights(tmp_path):
    """NETWORK.INIT_WEIGHTS: backbone and heads come from the R-FCN file, FlowNet and embedding keep
    their initialisation; a missing file is a config error naming the key."""
    from fgfa.train import load_init_weights
    from lib.config import ConfigError
    rfcn = build_model(get_config(RFCN_TINY, [f"OUTPUT_DIR={tmp_path}"]), 2)
    for p in rfcn.collect_params().values():
        p.set_data(p.data() + 0.5)        # distinct from any fresh initialisation
    path = str(tmp_path / "rfcn.params")
    rfcn.save_parameters(path)
    cfg = get_config(TINY, [f"OUTPUT_DIR={tmp_path}", f"NETWORK.INIT_WEIGHTS={path}"])
    fgfa = build_model(cfg, 2)
    fresh = {k: v.data().asnumpy() for k, v in fgfa._collect_params_with_prefix().items()}
    loaded, skipped = load_init_weights(fgfa, cfg)
    source = rfcn._collect_params_with_prefix()
    assert set(loaded) == set(source) and skipped
    assert {name.split(".")[0] for name in skipped} == {"flownet", "embed"}
    for name, param in fgfa._collect_params_with_prefix().items():
        expected = source[name].data().asnumpy() if name in source else fresh[name]
        np.testing.assert_array_equal(param.data().asnumpy(), expected, err_msg=name)
    missing = get_config(TINY, [f"OUTPUT_DIR={tmp_path}", "NETWORK.INIT_WEIGHTS=nope/rfcn.params"])
    with pytest.raises(ConfigError, match="NETWORK.INIT_WEIGHTS: parameter file not found: .*nope/rfcn.params"):
        load_init_weights(fgfa, missing)


def test_missing_checkpoint_and_bad_paths_give_clear_errors(tmp_path):
    cfg = get_config(TINY, [f"OUTPUT_DIR={tmp_path / 'empty'}"])
    with pytest.raises(CheckpointError, match="class list not found"):
        load_model(cfg)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_model(cfg, classes=["a", "b"])
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_model(cfg, classes=["a", "b"], checkpoint=str(tmp_path / "nope.params"))
    from fgfa.experiment import main
    assert main(["--cfg", str(tmp_path / "missing.yaml")]) == 2
    bad = get_config(TINY, [f"OUTPUT_DIR={tmp_path / 'x'}", "PRETRAINED=model/does_not_exist.params"])
    with pytest.raises(ConfigError, match="PRETRAINED: .*does_not_exist.params"):
        build_model(bad, 2)


def test_demo_on_short_synthetic_clip(tmp_path):
    from fgfa import demo
    from lib.dataset.synthetic import render_video
    cfg = get_config(TINY)
    model = build_model(cfg, 2)
    model_path = str(tmp_path / "model" / "tiny.params")
    os.makedirs(os.path.dirname(model_path))
    model.save_parameters(model_path)
    with open(demo.sidecar(model_path), "w") as f:
        json.dump({"classes": ["disc", "square"], "config": TINY}, f)
    frames, _ = render_video(5, num_frames=5, width=160, height=120, num_classes=2)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # names that sort wrongly as text: 0, 1, 10, 2, ...
        cv2.imwrite(str(folder / f"frame{i * 5}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    count, _ = demo.run(str(folder), None, model_path, str(out), 0.0)   # (frames, speed: not asserted)
    assert count == 5
    assert sorted(os.listdir(out)) == sorted([f"frame{i * 5}.jpg" for i in range(5)] + ["demo.mp4"])
    cap = cv2.VideoCapture(str(out / "demo.mp4"))
    # every frame in the MP4, at the 25 fps the demo gives a folder of frames (they carry no rate)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and cap.get(cv2.CAP_PROP_FPS) == 25.0
    cap.release()
    assert demo.main(["--input", str(folder), "--model", str(tmp_path / "none.params")]) == 2
    mx.nd.waitall()


def test_default_model_of_an_older_demo_config_is_retrained(tmp_path):
    from fgfa import demo
    model_path = str(tmp_path / "fgfa_rfcn_demo.params")
    assert not demo.default_model_is_current(model_path)          # no sidecar: unknown network
    current = demo.network_of(demo.DEMO_CFG)
    assert current["WIDTH"] == 0.5 and current["DEPTH"] == 18
    for network, expected in ((current, True), (dict(current, WIDTH=1.0), False)):
        with open(demo.sidecar(model_path), "w") as f:
            json.dump({"classes": ["disc", "square"], "network": network}, f)
        assert demo.default_model_is_current(model_path) is expected


def test_unreadable_frames_are_reported_and_skipped(synthetic_root, tmp_path, caplog):
    import logging

    from fgfa.data import TrainSamples
    from fgfa.test import detect_dataset
    from fgfa.train import make_batches
    from lib.dataset import Record
    cfg = _cfg(TINY, synthetic_root, str(tmp_path / "bad"), "TEST.K=1")
    _, frames = _few_frames(cfg, 3)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    recs = list(frames.records)
    bad = Record(image=str(junk), width=160, height=120, boxes=recs[1].boxes, labels=recs[1].labels,
                 video=recs[1].video, frame=recs[1].frame, image_id="junk")
    dataset = DetectionDataset([recs[0], bad, recs[2]], frames.classes, "with_bad")
    model = build_model(cfg, 2)
    with caplog.at_level(logging.WARNING):
        records, detections, _ = detect_dataset(model, dataset, cfg, progress=False,
                                                logger=logging.getLogger("fgfa_test"))
    assert [r.image_id for r in records] == [recs[0].image_id, "junk", recs[2].image_id]
    assert len(detections) == 3 and len(detections[1][0]) == 0
    assert "junk.jpg" in caplog.text
    # training: the bad key frame is skipped, the other two make batches
    caplog.clear()
    samples = TrainSamples(DetectionDataset([recs[0], bad, recs[2]], frames.classes, "with_bad"), cfg, 0)
    with caplog.at_level(logging.WARNING):
        batches = list(make_batches(samples, 1, logging.getLogger("fgfa_train"))(0))
    assert len(batches) == 2 and "junk.jpg" in caplog.text


def test_batch_of_two_images_of_different_sizes_and_pretrained_backbone(tmp_path):
    from gluoncv.model_zoo.resnet import get_resnet
    reference = get_resnet(1, 18)
    reference.initialize(mx.init.Xavier())
    reference(mx.nd.zeros((1, 3, 32, 32)))
    weights = str(tmp_path / "resnet18_v1.params")
    reference.save_parameters(weights)
    cfg = get_config(TINY, [f"NETWORK.PRETRAINED={weights}", "NETWORK.FROZEN_STAGES=2"])
    model = build_model(cfg, 2)
    np.testing.assert_array_equal(model.features.backbone.features[4][0].body[0].weight.data().asnumpy(),
                                  reference.features[4][0].body[0].weight.data().asnumpy())
    assert model.features.backbone.features[0].weight.grad_req == "null"      # conv1 frozen
    assert model.features.backbone.features[5][0].body[0].weight.grad_req == "write"
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.uniform(-1, 1, (2, 3, 3, 96, 128)))
    im_info = np.array([[96, 128, 1.0], [80, 112, 1.0]], np.float32)
    boxes = [np.array([[10, 10, 50, 60]], np.float32), np.array([[20, 5, 70, 45], [60, 30, 100, 70]], np.float32)]
    labels = [np.array([0]), np.array([1, 0])]
    with mx.autograd.record():
        loss, parts = model.train_loss(data, im_info, boxes, labels, np.random.RandomState(0))
    loss.backward()
    assert np.isfinite(loss.asscalar()) and set(parts) == {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}
    assert float(model.flownet.flow_preds[-1].weight.grad().abs().sum().asscalar()) > 0  # flow is trained
    assert float(model.embed.body[0].weight.grad().abs().sum().asscalar()) > 0


def test_training_tiles_are_one_crop_of_the_whole_sample(synthetic_root, tmp_path):
    from fgfa.data import TrainSamples
    cfg_full = _cfg(TINY, synthetic_root, str(tmp_path / "full"), "IMAGE.FLIP=true")
    cfg_tile = _cfg(TINY, synthetic_root, str(tmp_path / "tile"), "IMAGE.FLIP=true", "IMAGE.TRAIN_TILE.SIZE=[64,48]",
                    "IMAGE.TRAIN_TILE.OBJECT_PROB=1.0")
    dataset = load_train_set(cfg_full)
    full, tiled = TrainSamples(dataset, cfg_full, 2), TrainSamples(dataset, cfg_tile, 2)
    checked = 0
    for index in range(len(full)):
        f_frames, f_info, f_boxes, f_labels = full.load(index, np.random.RandomState(index))
        t_frames, t_info, t_boxes, t_labels = tiled.load(index, np.random.RandomState(index))
        assert t_frames.shape == (3, 3, 48, 64) and tuple(t_info[:2]) == (48, 64) and t_info[2] == f_info[2]
        if not len(f_boxes):
            continue
        # the same window of every frame (key and both neighbours): find it on the key frame
        h, w = int(f_info[0]), int(f_info[1])
        offsets = [(y, x) for y in range(h - 48 + 1) for x in range(w - 64 + 1)
                   if np.array_equal(f_frames[0, :, y:y + 48, x:x + 64], t_frames[0])]
        assert offsets, "the tile is not a window of the resized key frame"
        y, x = offsets[0]
        np.testing.assert_array_equal(f_frames[:, :, y:y + 48, x:x + 64], t_frames)
        # boxes: the whole sample's boxes shifted into the window, clipped; OBJECT_PROB 1 keeps one
        shifted = f_boxes - np.array([x, y, x, y], np.float32)
        clipped = np.clip(shifted, 0, [64, 48, 64, 48])
        for box, label in zip(t_boxes, t_labels):
            match = np.where(np.all(np.abs(clipped - box) < 1e-4, axis=1))[0]
            assert len(match) and label in f_labels[match]
        assert len(t_boxes) >= 1
        checked += 1
    assert checked >= 5


def test_training_degrades_each_frame_of_a_sample_on_its_own(synthetic_root, tmp_path):
    """TRAIN.AUGMENTATIONS RandomDegrade: the same sample (same scale, flip, neighbours: the degradation
    is drawn last) with every frame changed at p = 1, unchanged at p = 0, boxes untouched; frames of
    one sample get different degradations (oracle: the undegraded load of the same seed)."""
    from fgfa.data import TrainSamples
    flip = "IMAGE.FLIP=true"
    cfg_plain = _cfg(TINY, synthetic_root, str(tmp_path / "plain"), flip)
    dataset = load_train_set(cfg_plain)
    plain = TrainSamples(dataset, cfg_plain, 2)
    every = TrainSamples(dataset, _cfg(TINY, synthetic_root, str(tmp_path / "p1"), flip,
                                       "TRAIN.AUGMENTATIONS=[RandomFlip, {name: RandomDegrade, p: 1.0}]"), 2)
    never = TrainSamples(dataset, _cfg(TINY, synthetic_root, str(tmp_path / "p0"), flip,
                                       "TRAIN.AUGMENTATIONS=[RandomFlip, {name: RandomDegrade, p: 0.0}]"), 2)
    assert plain.per_frame is None and every.flip and every.per_frame is not None
    for index in range(0, len(plain), 3):
        ref_frames, ref_info, ref_boxes, ref_labels = plain.load(index, np.random.RandomState(index))
        frames, info, boxes, labels = every.load(index, np.random.RandomState(index))
        np.testing.assert_array_equal(info, ref_info)
        np.testing.assert_array_equal(boxes, ref_boxes)
        np.testing.assert_array_equal(labels, ref_labels)
        changed = [not np.array_equal(frames[k], ref_frames[k]) for k in range(3)]
        assert all(changed), (index, changed)
        assert not np.array_equal(frames[1] - ref_frames[1], frames[2] - ref_frames[2])
        np.testing.assert_array_equal(never.load(index, np.random.RandomState(index))[0], ref_frames)
    with pytest.raises(ConfigError, match=r"TRAIN.AUGMENTATIONS\[0\].*unknown kind"):
        _cfg(TINY, synthetic_root, str(tmp_path / "bad"), "TRAIN.AUGMENTATIONS=[{name: RandomDegrade, kinds: [rain]}]")


def test_training_drops_frames_of_a_sample_on_their_own(synthetic_root, tmp_path):
    """TRAIN.AUGMENTATIONS RandomFrameDrop (alias frame_drop): a dropped frame is the flat value, normalised
    as the frames are, on its content (the padding stays zero); the others are the plain load of the same
    seed; boxes untouched; key frame and neighbours dropped independently (at p = 0.5 some samples mix
    dropped and kept frames, and both kinds of key frame occur)."""
    from fgfa.data import TrainSamples
    cfg_plain = _cfg(TINY, synthetic_root, str(tmp_path / "plain"))
    dataset = load_train_set(cfg_plain)
    plain = TrainSamples(dataset, cfg_plain, 2)
    cfg_drop = _cfg(TINY, synthetic_root, str(tmp_path / "drop"), "TRAIN.AUGMENTATIONS=[{name: frame_drop, p: 0.5}]")
    half = TrainSamples(dataset, cfg_drop, 2)
    flat = (np.full(3, 127, np.float32) - np.asarray(cfg_drop.INPUT.MEAN, np.float32)) / np.asarray(
        cfg_drop.INPUT.STD, np.float32)
    mixed, key_dropped, key_kept = 0, 0, 0
    for index in range(len(plain)):
        ref_frames, ref_info, ref_boxes, ref_labels = plain.load(index, np.random.RandomState(index))
        frames, info, boxes, labels = half.load(index, np.random.RandomState(index))
        np.testing.assert_array_equal(info, ref_info)
        np.testing.assert_array_equal(boxes, ref_boxes)
        np.testing.assert_array_equal(labels, ref_labels)
        h, w = int(info[0]), int(info[1])
        dropped = []
        for k in range(3):
            if np.array_equal(frames[k], ref_frames[k]):
                dropped.append(False)
                continue
            np.testing.assert_allclose(frames[k][:, :h, :w], np.broadcast_to(flat[:, None, None], (3, h, w)))
            assert not frames[k][:, h:, :].any() and not frames[k][:, :, w:].any()
            dropped.append(True)
        mixed += 0 < sum(dropped) < 3
        key_dropped += dropped[0]
        key_kept += not dropped[0]
    assert mixed and key_dropped and key_kept, (mixed, key_dropped, key_kept)


def test_frame_drop_needs_the_window(synthetic_root, tmp_path):
    """RandomFrameDrop with NETWORK.AGGREGATE false (the R-FCN frame baseline) is a config error naming
    TRAIN.AUGMENTATIONS; with the window, or with TRAIN.AUGMENT off, the config loads."""
    drop = "TRAIN.AUGMENTATIONS=[RandomFlip, {name: RandomFrameDrop, p: 0.1}]"
    with pytest.raises(ConfigError, match=r"TRAIN.AUGMENTATIONS: RandomFrameDrop .*NETWORK.AGGREGATE: false"):
        _cfg(TINY, synthetic_root, str(tmp_path / "a"), drop, "NETWORK.AGGREGATE=false")
    assert not _cfg(TINY, synthetic_root, str(tmp_path / "b"), drop, "NETWORK.AGGREGATE=false",
                    "TRAIN.AUGMENT=false").NETWORK.AGGREGATE
    assert _cfg(TINY, synthetic_root, str(tmp_path / "c"), drop).NETWORK.AGGREGATE


def test_test_context_streams_whole_videos_and_reports_the_split(synthetic_root, tmp_path):
    """TEST.CONTEXT: video. Oracle: the same model streamed over the whole video, its results at the
    split's frames; a still image outside every video keeps its own result."""
    from fgfa.test import detect_dataset, test_context
    from lib.config import ConfigError
    from lib.dataset import whole_videos_spec
    cfg = _cfg(TINY, synthetic_root, str(tmp_path / "ctx"), "TEST.K=2", "TEST.SCORE_THRESH=0.0")
    full = load_train_set(cfg)
    video = list(full.snippets().values())[0]
    whole = DetectionDataset(video, full.classes, "whole")
    import shutil
    from lib.dataset import Record
    shutil.copy(video[0].image, tmp_path / "still.jpg")
    still = Record(image=str(tmp_path / "still.jpg"), width=video[0].width, height=video[0].height,
                   boxes=video[0].boxes, labels=video[0].labels, image_id="still")
    picked = [1, 4, 5, 9]                     # a random split leaves gaps between the test frames
    split = DetectionDataset([video[i] for i in picked] + [still], full.classes, "split")
    mx.random.seed(0)
    model = build_model(cfg, 2)
    for pred in model.flownet.flow_preds:    # non-zero flows: the neighbours really matter
        pred.weight.set_data(mx.nd.random.normal(0, 0.05, pred.weight.shape))
    _, oracle, _ = detect_dataset(model, whole, cfg, progress=False)
    records, detections, _ = detect_dataset(model, split, cfg, progress=False, context=whole)
    assert [r.image_id for r in records] == [video[i].image_id for i in picked] + ["still"]
    for k, i in enumerate(picked):
        for got, want in zip(detections[k], oracle[i]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    _, alone, _ = detect_dataset(model, split, cfg, progress=False)     # the split's frames only
    assert any(not np.allclose(a[1], o[1], atol=1e-4) if a[1].shape == o[1].shape else True
               for a, o in zip(alone[:4], detections[:4]))
    # the spec without its subset key, per format; bad values name the key
    assert whole_videos_spec({"FORMAT": "voc", "ROOT": "r", "SPLIT": "test"}) == {"FORMAT": "voc", "ROOT": "r"}
    assert whole_videos_spec({"FORMAT": "vid", "ROOT": "r", "IMAGE_SET": "s", "SPLIT": "val"}) == \
        {"FORMAT": "vid", "ROOT": "r", "SPLIT": "val"}
    assert whole_videos_spec({"FORMAT": "coco", "ANNOTATIONS": "a.json"}) is None
    assert test_context(cfg, split) is None   # TEST.CONTEXT: split (default)
    cfg.TEST.CONTEXT = "videos"
    with pytest.raises(ConfigError, match="TEST.CONTEXT"):
        test_context(cfg, split)


def test_flownet_dis_teacher_crop_larger_than_the_frames_is_a_config_error(synthetic_root, tmp_path, monkeypatch):
    """TRAIN.FLOW_PRETRAIN.SOURCE dis cuts its pairs at the test scale: a crop larger than those frames is a
    config error naming the key (the learning itself: tests/test_flow_pairs.py)."""
    from fgfa.flow_pretrain import pretrain_flownet
    monkeypatch.setenv("VIDEODET_TEACHER_CACHE", str(tmp_path / "teacher"))
    pre = ["TRAIN.FLOW_PRETRAIN.SOURCE=dis", "TRAIN.FLOW_PRETRAIN.ITERS=40", "TRAIN.FLOW_PRETRAIN.BATCH=4",
           "TRAIN.FLOW_PRETRAIN.IMAGES=40", "TRAIN.FLOW_PRETRAIN.DIS_PRESET=fast"]
    big = _cfg(TINY, synthetic_root, str(tmp_path / "big"), *pre, "TRAIN.FLOW_PRETRAIN.SIZE=[160,160]")
    with pytest.raises(ConfigError, match=r"TRAIN.FLOW_PRETRAIN.SIZE \[160, 160\].*larger than the training "
                                          r"frames at the test scale \(128x96\)"):
        pretrain_flownet(build_model(big, 2), big, load_train_set(big), str(tmp_path / "big"), progress=False)


def test_training_with_dis_flow(synthetic_root, tmp_path, monkeypatch):
    """NETWORK.FLOW dis in training: the aggregation warps with DIS flows of the batch's own frames (a
    texture 16 px = 1 cell further right in the neighbour gives +1 cell), the FlowNet is neither
    pre-trained nor changed, and the loss falls."""
    from fgfa.data import normalize_pad
    from lib.flow import DISFlow
    calls = []
    grid = DISFlow.grid
    monkeypatch.setattr(DISFlow, "grid", lambda self, *a, **k: calls.append(1) or grid(self, *a, **k))
    cfg = _cfg(TINY, synthetic_root, str(tmp_path / "dis"), "NETWORK.FLOW=dis", "TRAIN.FLOW_PRETRAIN.ITERS=500",
               "TRAIN.EPOCHS=3", "TRAIN.LR=0.01", "TRAIN.LR_STEPS=[]", "TRAIN.WARMUP_EPOCHS=0.0")
    model = build_model(cfg, 2)
    rng = np.random.RandomState(7)
    big = cv2.resize(rng.randint(0, 255, (30, 40, 3)).astype(np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    key, moved = big[100:196, 200:328], big[100:196, 216:344]          # the neighbour: content 16 px left
    data = mx.nd.array(np.stack([normalize_pad(f, cfg.INPUT.MEAN, cfg.INPUT.STD, 16) for f in (key, moved, key)])[None])
    flows = model.dis_flows(data, (6, 8)).asnumpy()
    assert flows.shape == (2, 2, 6, 8)
    # content at x in the key frame is at x - 16 px in the neighbour: flow -1 cell; itself: 0
    np.testing.assert_allclose(np.median(flows[0][:, 1:-1, 1:-1].reshape(2, -1), axis=1), [-1.0, 0.0], atol=0.15)
    np.testing.assert_allclose(flows[1], 0.0, atol=0.05)

    train_set, _ = _few_frames(cfg, 3)
    calls.clear()
    from lib.train import seed_everything
    seed_everything(cfg.TRAIN.SEED, 0)        # as train() does before building: the same initial weights
    before = {n: p.data().asnumpy().copy() for n, p in build_model(cfg, 2).flownet._collect_params_with_prefix().items()}
    summary = train(cfg, dataset=train_set)
    assert calls, "training did not use DIS"
    assert not os.path.exists(os.path.join(str(tmp_path / "dis"), "flownet_pretrained.params"))
    after = summary["model"].flownet._collect_params_with_prefix()
    for name, value in before.items():       # same seed, same init: the FlowNet stayed as initialised
        np.testing.assert_array_equal(after[name].data().asnumpy(), value, err_msg=name)
    history = json.load(open(os.path.join(str(tmp_path / "dis"), "history.json")))
    losses = [e["losses"]["loss"] for e in history["epochs"]]
    assert losses[-1] < losses[0], losses


def test_window_only_training_keeps_the_detector_and_trains_the_window(synthetic_root, tmp_path):
    """TRAIN.WINDOW_ONLY: backbone, RPN and R-FCN stay bit-identical, BatchNorm statistics included (MXNet does
    not record, so does not update, a layer whose parameters and inputs need no gradient); the
    embedding, its quality logit and the learned aggregation scale train; bad combinations are config errors."""
    from lib.config import ConfigError
    overrides = ("TRAIN.EPOCHS=1", "TRAIN.LR=0.01", "TRAIN.LR_STEPS=[]", "TRAIN.WARMUP_EPOCHS=0.0",
                 "TRAIN.WINDOW_ONLY=true", "TRAIN.AGGREGATE_KEY=true", "NETWORK.AGGREGATE_QUALITY=true",
                 "NETWORK.AGGREGATE_SCALE_LEARNED=true", "TRAIN.CHECKPOINT_EVERY=100")
    cfg = _cfg(TINY, synthetic_root, str(tmp_path / "window"), *overrides)
    train_set, _ = _few_frames(cfg, 3)
    from lib.train import seed_everything
    seed_everything(cfg.TRAIN.SEED, 0)        # as train() does: the same initial weights
    start = {k: v.data().asnumpy().copy() for k, v in build_model(cfg, train_set.num_classes)._collect_params_with_prefix().items()}
    summary = train(cfg, dataset=train_set)
    after = {k: v.data().asnumpy() for k, v in summary["model"]._collect_params_with_prefix().items()}
    detector = [k for k in after if k.split(".")[0] in ("features", "rpn", "rfcn")]
    assert any("running_mean" in k for k in detector)           # trainable BatchNorm in the tiny config
    for name in detector:
        np.testing.assert_array_equal(after[name], start[name], err_msg=name)
    for name in ("embed.quality.weight", "aggregate_log_scale", "embed.body.0.weight"):
        assert np.abs(after[name] - start[name]).max() > 0, name
    for bad, message in ((("TRAIN.WINDOW_ONLY=true",), "needs NETWORK.AGGREGATE: true and TRAIN.AGGREGATE_KEY: true"),
                         (("TRAIN.WINDOW_ONLY=true", "TRAIN.AGGREGATE_KEY=true", "TRAIN.TRAINABLE_PATTERNS=[rpn]"),
                          "leave TRAIN.TRAINABLE_PATTERNS empty")):
        with pytest.raises(ConfigError, match=message):
            _cfg(TINY, synthetic_root, str(tmp_path / "bad"), *bad)
