"""The recipe (experiments.custom.recipe) over the family registry (lib.family): recipe keys mapped onto
each family's config, data specs (lists, background folders, tiles), anchor coverage, the exported
artifacts of ssdlite and R-FCN against each package's own numpy post-processing, and what cannot be
exported."""
import json
import os
import runpy

import cv2
import mxnet as mx
import numpy as np
import pytest

from experiments.custom import recipe
from fgfa.config import flip_enabled, input_scale, training_scales
from lib import anchor_coverage
from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset.specs import resolve_spec
from lib.export import ExportNotSupported
from lib.family import LoadedModel, get_family, load_model
from lib.tiling import tile_dataset
from lib.dataset import DetectionDataset, Record
from lib.dataset.voc import voc_xml_string


def _cfg(tmp_path, text, name="recipe.yaml", overrides=None):
    path = tmp_path / name
    path.write_text(text)
    return recipe.load_recipe_config(str(path), overrides)


def _images(rng, shapes):
    # smooth random images (blurred noise) so detectors see some structure
    return [cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (7, 7), 0) for h, w in shapes]


def _canonical(boxes, scores, labels):
    """Detections in an order that does not depend on how ties in score were broken."""
    order = np.lexsort((np.round(scores, 4), np.round(boxes[:, 3], 1), np.round(boxes[:, 2], 1),
                        np.round(boxes[:, 1], 1), np.round(boxes[:, 0], 1), labels))
    return boxes[order], scores[order], labels[order]


def _sorted(boxes, scores, labels, width, height):
    order = np.argsort(-scores, kind="stable")
    return np.clip(boxes[order], 0, [width, height, width, height]), scores[order], labels[order]


# ------------------------------------------------------------------------------------------ config

def test_recipe_keys_reach_each_family(tmp_path):
    common = """
INPUT: {{SIZE: [{size}]}}
TRAIN: {{BATCH_SIZE: 3, LR: 0.02, OPTIMIZER: adam, EPOCHS: 7, AUGMENT: [{{name: RandomFlip}}]}}
OUTPUT_DIR: {out}
"""
    cfg = _cfg(tmp_path, "DETECTOR: m2det\n" + common.format(size=320, out=tmp_path / "m"))
    fam = recipe.family_config(cfg, ["a"])
    assert (fam.INPUT.SIZE, fam.TRAIN.BATCH_SIZE, fam.TRAIN.LR, fam.TRAIN.OPTIMIZER, fam.TRAIN.EPOCHS) == \
        (320, 3, 0.02, "adam", 7)
    assert fam.TRAIN.AUGMENT is True and fam.OUTPUT_DIR == str(tmp_path / "m")
    assert fam.TRAIN.AUGMENTATIONS == [{"name": "RandomFlip"}]   # M2Det runs the listed transforms
    # the rest comes from the family's speedtrap config
    assert fam.MODEL.BACKBONE == "mobilenetv2"

    for family in ("ssdlite", "lstm_ssd"):
        cfg = _cfg(tmp_path, f"DETECTOR: {family}\n" + common.format(size=256, out=tmp_path / family))
        fam = recipe.family_config(cfg, ["a", "b"])
        assert (fam.MODEL.TYPE, fam.INPUT.SIZE, fam.MODEL.NUM_CLASSES) == (family, 256, 2)
        assert (fam.TRAIN.BATCH_SIZE, fam.TRAIN.LR, fam.TRAIN.EPOCHS, fam.TRAIN.AUGMENT) == (3, 0.02, 7, True)
        assert fam.TRAIN.AUGMENTATIONS == [{"name": "RandomFlip"}]
        assert fam.DATASET.CLASSES == ["a", "b"]
        wide = _cfg(tmp_path, f"DETECTOR: {family}\nINPUT: {{SIZE: [180, 320]}}\nOUTPUT_DIR: {tmp_path / family}\n")
        assert recipe.family_config(wide, ["a"]).INPUT.SIZE == [180, 320]

    for family in ("rfcn", "fgfa"):
        cfg = _cfg(tmp_path, f"DETECTOR: {family}\nINPUT: {{SHORT_SIDE: 360, MAX_SIZE: 640}}\n"
                             f"TRAIN: {{BATCH_SIZE: 2, AUGMENT: [PhotometricDistort]}}\nOUTPUT_DIR: {tmp_path}")
        fam = recipe.family_config(cfg, ["a"])
        assert fam.NETWORK.AGGREGATE is (family == "fgfa")
        assert training_scales(fam) == [[360, 640]] and input_scale(fam) == (360, 640)
        assert fam.TRAIN.BATCH_SIZE == 2 and flip_enabled(fam) is False   # no flip in the augment list
        # training scales as factors of the input size; testing stays at the input size
        jitter = _cfg(tmp_path, f"DETECTOR: {family}\nINPUT: {{SHORT_SIDE: 360, MAX_SIZE: 640, "
                                f"TRAIN_SCALES: [0.5, 0.75, 1.1]}}\nOUTPUT_DIR: {tmp_path}")
        fam = recipe.family_config(jitter, ["a"])
        assert training_scales(fam) == [[180, 320], [270, 480], [396, 704]] and input_scale(fam) == (360, 640)


def test_lr_steps_follow_the_recipe_epochs(tmp_path):
    # rfcn BASE (speedtrap): 30 epochs, LR drops at [22, 27]; 12 recipe epochs -> [8.8, 10.8] rounded
    cfg = _cfg(tmp_path, "DETECTOR: rfcn\nTRAIN: {EPOCHS: 12}\n")
    fam = recipe.family_config(cfg, ["a"])
    assert fam.TRAIN.EPOCHS == 12 and fam.TRAIN.LR_STEPS == [9, 11]
    # m2det BASE: 60 epochs, [40, 52]; ITERATIONS 30 of batch 8 over 80 images -> 3 epochs -> [2, 2.6] -> [2, 3]
    cfg = _cfg(tmp_path, "DETECTOR: m2det\nTRAIN: {BATCH_SIZE: 8, ITERATIONS: 30}\n")
    fam = recipe.family_config(cfg, ["a"], train_size=80)
    assert fam.TRAIN.EPOCHS == 3 and fam.TRAIN.LR_STEPS == [2, 3]
    # steps the user set in OVERRIDES are kept as written; same epochs as BASE: unchanged
    cfg = _cfg(tmp_path, "DETECTOR: rfcn\nTRAIN: {EPOCHS: 12}\nOVERRIDES: {TRAIN: {LR_STEPS: [5]}}\n")
    assert recipe.family_config(cfg, ["a"]).TRAIN.LR_STEPS == [5]
    cfg = _cfg(tmp_path, "DETECTOR: rfcn\nTRAIN: {EPOCHS: 30}\n")
    assert recipe.family_config(cfg, ["a"]).TRAIN.LR_STEPS == [22, 27]


def test_overrides_and_iterations(tmp_path):
    cfg = _cfg(tmp_path, "DETECTOR: m2det\nBASE: experiments/m2det/cfgs/tiny.yaml\n"
                         "TRAIN: {BATCH_SIZE: 4, ITERATIONS: 10}\nOVERRIDES: {TEST: {SCORE_THRESH: 0.3}}\n")
    # 10 iterations of batch 4 over 25 images: 7 per epoch -> 2 epochs
    fam = recipe.family_config(cfg, ["a"], train_size=25)
    assert fam.TEST.SCORE_THRESH == 0.3 and fam.TRAIN.EPOCHS == 2 and fam.INPUT.SIZE == 160
    # fewer iterations than one epoch: one capped epoch
    fam = recipe.family_config(cfg, ["a"], train_size=100)
    assert fam.TRAIN.EPOCHS == 1 and fam.TRAIN.MAX_BATCHES == 10
    cfg = _cfg(tmp_path, "DETECTOR: ssdlite\nBASE: experiments/lstm_ssd/cfgs/tiny_test.yaml\n"
                         "TRAIN: {BATCH_SIZE: 2, ITERATIONS: 3}\n")
    fam = recipe.family_config(cfg, ["a"], train_size=80)   # 2 clips x 4 frames per batch: 10 per epoch
    assert fam.TRAIN.EPOCHS == 1 and fam.TRAIN.MAX_BATCHES == 3
    # 40 video frames (10 clips of 4) + 40 still images (one pseudo-video clip each): 25 batches of 2 clips
    cfg = _cfg(tmp_path, "DETECTOR: lstm_ssd\nBASE: experiments/lstm_ssd/cfgs/tiny_test.yaml\n"
                         "TRAIN: {BATCH_SIZE: 2, ITERATIONS: 30}\n")
    fam = recipe.family_config(cfg, ["a"], train_size=80, still_images=40)
    assert fam.TRAIN.UNROLL == 4 and fam.TRAIN.EPOCHS == 2
    fam = recipe.family_config(cfg, ["a"], train_size=80, still_images=0)   # 10 batches per epoch
    assert fam.TRAIN.EPOCHS == 3


@pytest.mark.parametrize("family, backbone, key, value", [
    ("m2det", "ssd_mobilenet_v2", "MODEL.BACKBONE", "mobilenetv2"),
    ("m2det", "resnet101", "MODEL.BACKBONE", "resnet101"),
    ("ssdlite", "mobilenet_v1", "MODEL.LARGE.NET", "mobilenet_v1"),
    ("rfcn", "faster_rcnn_resnet101", "NETWORK.DEPTH", 101),
    ("fgfa", "resnet_v1_50", "NETWORK.DEPTH", 50),
])
def test_backbone_names_map_to_family_keys(tmp_path, family, backbone, key, value):
    fam = recipe.family_config(_cfg(tmp_path, f"DETECTOR: {family}\nBACKBONE: {backbone}\n"), ["a"])
    node = fam
    for part in key.split("."):
        node = node[part]
    assert node == value


def test_unknown_backbone_keeps_the_base_and_warns(tmp_path, caplog):
    base = recipe.family_config(_cfg(tmp_path, "DETECTOR: rfcn\n"), ["a"])
    with caplog.at_level("WARNING"):
        fam = recipe.family_config(_cfg(tmp_path, "DETECTOR: rfcn\nBACKBONE: faster_rcnn_inception_v2\n"), ["a"])
    assert fam.NETWORK.DEPTH == base.NETWORK.DEPTH
    assert "faster_rcnn_inception_v2" in caplog.text and "OVERRIDES" in caplog.text


@pytest.mark.parametrize("name", ["m2det", "ssdlite", "lstm_ssd", "rfcn", "fgfa", "tiny_m2det"])
def test_templates_load(name):
    cfg = recipe.load_recipe_config(os.path.join(PROJECT_ROOT, "experiments", "custom", name + ".yaml"))
    fam = recipe.family_config(cfg, ["radar"], train_size=392)
    assert cfg.DETECTOR == name.replace("tiny_", "") and fam.OUTPUT_DIR.endswith(os.path.join("custom", name))


def test_command_line_changes_one_key_of_the_data_specs(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("DATA:\n  TRAIN: [{FORMAT: voc, ROOT: x, SPLIT: train}, {FORMAT: background, IMAGES_DIR: y}]\n"
                    "  VAL: {FORMAT: voc, ROOT: x, SPLIT: test}\n")
    cfg = recipe.load_recipe_config(str(path), ["DATA.TRAIN.SPLIT=train_bg", "DATA.VAL.SNIPPETS={max_gap: 3}",
                                                   "TRAIN.LR=0.5"])
    # DATA (the section's name before the shared schema) is read as DATASET, a single spec as a list of one
    assert cfg.DATASET.TRAIN == [{"FORMAT": "voc", "ROOT": "x", "SPLIT": "train_bg"},
                                 {"FORMAT": "background", "IMAGES_DIR": "y"}]
    assert cfg.DATASET.VAL == [{"FORMAT": "voc", "ROOT": "x", "SPLIT": "test", "SNIPPETS": {"max_gap": 3}}]
    assert cfg.TRAIN.LR == 0.5


@pytest.mark.parametrize("text, message", [
    ("DETECTOR: yolo\n", "DETECTOR must be one of"),
    ("DETECTOR: ssdlite\nINPUT: {SHORT_SIDE: 600}\n", "INPUT.SHORT_SIDE"),
    ("DETECTOR: m2det\nINPUT: {TRAIN_SCALES: [0.5, 1.0]}\n", "INPUT.TRAIN_SCALES .* Expand"),
    ("DETECTOR: rfcn\nINPUT: {TRAIN_SCALES: [0, 1.0]}\n", "INPUT.TRAIN_SCALES"),
    ("DETECTOR: m2det\nOVERRIDES: {MODEL: {NOT_A_KEY: 1}}\n", "MODEL.NOT_A_KEY"),
    ("DETECTOR: m2det\nTRAIN: {LR: fast}\n", "TRAIN.LR"),
    ("DETECTOR: m2det\nTILING: {INFER: {SIZE: [512]}}\n", "TILING.INFER.SIZE"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        recipe.family_config(_cfg(tmp_path, text), ["a"])
    assert "recipe.yaml" in str(err.value)


def test_m2det_takes_the_recipe_non_square_input(tmp_path):
    """INPUT.SIZE [H, W] reaches M2Det as [H, W] (a 16:9 video is not squeezed into a square)."""
    from m2det.detector import M2Det
    fam = recipe.family_config(_cfg(tmp_path, "DETECTOR: m2det\nINPUT: {SIZE: [384, 672]}\n"), ["a"])
    assert list(fam.INPUT.SIZE) == [384, 672]
    net = M2Det(fam.MODEL, 1, fam.INPUT.SIZE)     # shapes only: no weights are allocated
    assert net.input_hw == (384, 672) and net.feature_sizes[0] == (48, 84)


def test_tf_pipeline_import_feeds_the_recipe(tmp_path):
    """pipeline.config -> import_tf_pipeline yaml -> recipe config -> SSDLite config."""
    from lib.tools import import_tf_pipeline
    out = tmp_path / "imported.yaml"
    sample = os.path.join(os.path.dirname(__file__), "data", "ssd_mobilenet_v2_pipeline.config")
    assert import_tf_pipeline.main([sample, "--out", str(out)]) == 0
    cfg = recipe.load_recipe_config(str(out), [f"OUTPUT_DIR={tmp_path / 'run'}"])
    assert cfg.DETECTOR == "ssdlite" and cfg.NUM_CLASSES == 1
    fam = recipe.family_config(cfg, ["radar"], train_size=48)
    assert fam.INPUT.SIZE == 300 and fam.TRAIN.BATCH_SIZE == 24 and fam.TRAIN.LR == pytest.approx(0.004)
    assert fam.TRAIN.OPTIMIZER == "rmsprop" and fam.TRAIN.AUGMENT is True
    assert fam.MODEL.LARGE.NET == "mobilenet_v2" and fam.MODEL.LARGE.WIDTH == 1.0   # ssd_mobilenet_v2, x1.0
    assert fam.MODEL.LARGE.NUM_BLOCKS == -1                                        # the whole network
    assert fam.TRAIN.EPOCHS == 10000   # 48 images in batches of 24 single frames: two batches per epoch
    spec = resolve_spec(cfg.DATASET.TRAIN[0], out_dir=str(tmp_path / "run"))
    assert spec["FORMAT"] == "tfrecord" and os.path.isabs(spec["PATHS"]) and spec["PATHS"].endswith("train.record")
    assert spec["OUT_DIR"] == os.path.join(str(tmp_path / "run"), "tfrecord_images")


# -------------------------------------------------------------------------------------------- data

def _voc_folder(folder, boxes_per_image, classes, size=(120, 90)):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k, boxes in enumerate(boxes_per_image):
        path = str(folder / f"frame{k}.jpg")
        cv2.imwrite(path, _images(rng, [(size[1], size[0])])[0])
        rec = Record(image=path, width=size[0], height=size[1], boxes=boxes, labels=[0] * len(boxes))
        (folder / f"frame{k}.xml").write_text(voc_xml_string(rec, classes))


def test_data_lists_and_background_folders(tmp_path):
    _voc_folder(tmp_path / "labelled", [[[10, 10, 40, 40]], [[20, 30, 60, 70]]], ["radar"])
    bg = tmp_path / "bg"
    bg.mkdir()
    for k in range(3):
        cv2.imwrite(str(bg / f"road{k}.jpg"), np.full((50, 70, 3), 90, np.uint8))
    cfg = _cfg(tmp_path, f"DATA:\n  TRAIN:\n    - {{FORMAT: voc, ROOT: {tmp_path / 'labelled'}}}\n"
                         f"    - {{FORMAT: background, IMAGES_DIR: {bg}}}\n")
    ds = recipe.load_data(cfg)
    assert len(ds) == 5 and ds.classes == ["radar"]
    background = [r for r in ds if r.num_boxes == 0]
    assert len(background) == 3 and {(r.width, r.height) for r in background} == {(70, 50)}
    # a second dataset with other classes is an error naming the entry
    _voc_folder(tmp_path / "other", [[[1, 1, 9, 9]]], ["cone"])
    cfg = _cfg(tmp_path, f"DATA:\n  TRAIN:\n    - {{FORMAT: voc, ROOT: {tmp_path / 'labelled'}}}\n"
                         f"    - {{FORMAT: voc, ROOT: {tmp_path / 'other'}, CLASSES: [cone]}}\n")
    with pytest.raises(ConfigError, match=r"DATASET.TRAIN\[1\] has classes \['cone'\]"):
        recipe.load_data(cfg)
    cfg = _cfg(tmp_path, "NUM_CLASSES: 2\nDATA: {TRAIN: {FORMAT: voc, ROOT: %s}}\n" % (tmp_path / "labelled"))
    with pytest.raises(ConfigError, match="NUM_CLASSES is 2"):
        recipe.load_data(cfg)


def test_training_tiles_cut_the_frame(tmp_path):
    rng = np.random.default_rng(3)
    image = _images(rng, [(300, 400)])[0]
    path = str(tmp_path / "big.png")        # lossless: tiles compare to the frame pixel by pixel
    cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    box = np.array([[250, 40, 270, 80]], np.float32)
    ds = DetectionDataset([Record(image=path, width=400, height=300, boxes=box, labels=[0])], ["radar"])
    cfg = _cfg(tmp_path, "TILING: {TRAIN: {ENABLED: true, SIZE: [128, 96], TILES_PER_IMAGE: 3, OBJECT_PROB: 1.0,"
                         " KEEP_FULL_FRAMES: true}}\n")
    tiles = tile_dataset(ds, str(tmp_path / "tiles"), cfg.TILING.TRAIN)
    assert len(tiles) == 4 and tiles[0].image == path
    for rec in tiles.records[1:]:
        assert (rec.width, rec.height) == (128, 96) and rec.num_boxes == 1
        x0, y0 = (box[0, :2] - rec.boxes[0, :2]).astype(int)   # the tile's offset in the frame
        np.testing.assert_array_equal(rec.boxes[0], box[0] - [x0, y0, x0, y0])
        tile = cv2.cvtColor(cv2.imread(rec.image), cv2.COLOR_BGR2RGB)
        error = np.abs(tile.astype(int) - image[y0:y0 + 96, x0:x0 + 128].astype(int)).mean()
        shifted = np.abs(tile[:, 4:].astype(int) - image[y0:y0 + 96, x0:x0 + 124].astype(int)).mean()
        assert error < 5.0 and shifted > 2 * error     # JPEG noise only, and not some other crop


def test_iterations_cap_rfcn_batches(tmp_path):
    """rfcn / fgfa honour the shared TRAIN.MAX_BATCHES, which TRAIN.ITERATIONS shorter than an epoch sets."""
    from fgfa.train import make_batches
    cfg = _cfg(tmp_path, "DETECTOR: fgfa\nTRAIN: {BATCH_SIZE: 2, ITERATIONS: 13}\n")
    fam = recipe.family_config(cfg, ["a"], train_size=70)          # 35 batches of 2 per epoch
    assert fam.TRAIN.EPOCHS == 1 and fam.TRAIN.MAX_BATCHES == 13

    class Samples:                                                # 70 one-frame samples of 32x32
        def __len__(self):
            return 70

        def load(self, index, rng):
            return (np.full((1, 3, 32, 32), index, np.float32), np.array([32, 32, 1], np.float32),
                    np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    np.random.seed(0)
    epoch = make_batches(Samples(), 2, max_batches=fam.TRAIN.MAX_BATCHES)(0)
    batches = list(epoch)
    assert len(epoch) == len(batches) == 13 and all(b[0].shape[0] == 2 for b in batches)
    seen = [int(v) for b in batches for v in b[0][:, 0, 0, 0, 0]]
    assert len(set(seen)) == 26                                   # 26 distinct key frames of the epoch's order
    assert len(list(make_batches(Samples(), 2)(0))) == 35         # no cap: the whole epoch


# ------------------------------------------------------------------------------------------ export

# ------------------------------------------------------------------------------------ anchor coverage

def test_anchor_coverage_counts_boxes_by_height_in_network_pixels():
    # one 100x100 anchor on a 100x100 image: IoU 1, 0.5, 0.01 and 0.2 (hand-computed)
    spec = {"TYPE": "rpn", "LEVELS": [{"STRIDE": 100, "BASE_SIZE": 100, "SCALES": [1], "RATIOS": [1]}]}
    boxes = np.array([[0, 0, 100, 100], [0, 0, 50, 100], [0, 0, 10, 10], [0, 0, 100, 20]], np.float32)
    ds = DetectionDataset([Record(image="a.jpg", width=100, height=100, boxes=boxes, labels=[0] * 4),
                           Record(image="b.jpg", width=100, height=100)], ["x"])
    cov = anchor_coverage.anchor_coverage(ds, spec)
    assert (cov["boxes"], cov["matched"]) == (4, 2)
    assert [(b["min_height"], b["boxes"], b["matched"]) for b in cov["bands"]] == \
        [(0, 1, 0), (16, 1, 0), (32, 0, 0), (64, 2, 2)]
    warnings = anchor_coverage.coverage_warnings(cov, min_boxes=1)
    assert len(warnings) == 2 and "0 of the 1 training boxes 0-16 px" in warnings[0]
    assert anchor_coverage.coverage_warnings(cov) == []          # bands under 10 boxes are not judged
    # the network sees a 200x200 frame at half size: heights halve, IoUs stay (anchor in that frame)
    big = DetectionDataset([Record(image="c.jpg", width=200, height=200, boxes=boxes * 2, labels=[0] * 4)], ["x"])
    cov = anchor_coverage.anchor_coverage(big, dict(spec, RESIZE={"SHORT": 100}))
    assert [(b["boxes"], b["matched"]) for b in cov["bands"]] == [(1, 0), (1, 0), (0, 0), (2, 2)]


def test_anchor_spec_gives_each_family_its_own_anchors(tmp_path):
    from lib.anchor_coverage import build_anchors
    ssd = _untrained(tmp_path, "ssdlite", "experiments/lstm_ssd/cfgs/tiny_test.yaml", ["a", "b"])
    size = int(ssd.cfg.INPUT.SIZE)
    spec = get_family("ssdlite").anchor_spec(ssd.cfg, 2)
    np.testing.assert_allclose(build_anchors(spec, size, size), ssd.net.anchors() * size, atol=1e-4)
    wide = _untrained(tmp_path, "ssdlite", "experiments/lstm_ssd/cfgs/tiny_test.yaml", ["a", "b"],
                      "INPUT: {SIZE: [48, 80]}\n")
    spec = get_family("ssdlite").anchor_spec(wide.cfg, 2)
    np.testing.assert_allclose(build_anchors(spec, 80, 48), wide.net.anchors() * [80, 48, 80, 48], atol=1e-4)
    rfcn = _untrained(tmp_path, "rfcn", "experiments/rfcn/cfgs/rfcn_tiny.yaml", ["a", "b"])
    spec = get_family("rfcn").anchor_spec(rfcn.cfg, 2)
    stride = rfcn.cfg.NETWORK.FEAT_STRIDE
    one_cell = build_anchors(spec, stride, stride)             # the first cell's anchors = the base anchors
    np.testing.assert_allclose(one_cell, rfcn.net.base_anchors + [0, 0, 1, 1])   # MultiProposal's inclusive x2
    assert spec["RESIZE"] == {"SHORT": rfcn.cfg.INPUT.SHORT_SIDE, "MAX": rfcn.cfg.INPUT.MAX_SIZE}


def _untrained(tmp_path, family, base, classes, extra=""):
    cfg = _cfg(tmp_path, f"DETECTOR: {family}\nBASE: {base}\nOUTPUT_DIR: {tmp_path / 'run'}\n{extra}")
    fam = recipe.family_config(cfg, classes)
    mx.random.seed(4)
    np.random.seed(4)
    net = get_family(family).build(fam, len(classes), mx.cpu())
    return LoadedModel(family, net, fam, classes, mx.cpu())


def _spread_scores(net, seed=3):
    """Random weights of the prediction convs: a fresh net's logits are all ~0, and scores tied at
    0.5 make the order of equal detections (and so which of them NMS keeps) arbitrary."""
    rng = np.random.RandomState(seed)
    for predictor in list(net.head.cls_preds) + list(net.head.box_preds):
        for p in predictor.pw.collect_params().values():
            p.set_data(mx.nd.array(rng.normal(0, 0.3, p.shape)))


@pytest.mark.parametrize("size", [None, [48, 80]])
def test_ssdlite_artifact_equals_numpy_postprocessing(tmp_path, size):
    """Graph decode + NMS (exported, MXNet and onnxruntime) == lstm_ssd's numpy decode + multiclass_nms,
    for the tiny config's square input and a 16:10 one (INPUT.SIZE [H, W])."""
    from lib.tools.export import compare_runtimes
    from lib.tools.infer import ExportedDetector
    extra = f"INPUT: {{SIZE: {size}}}\n" if size else ""
    model = _untrained(tmp_path, "ssdlite", "experiments/lstm_ssd/cfgs/tiny_test.yaml", ["a", "b"], extra)
    assert model.net.image_hw == tuple(size or (64, 64))
    _spread_scores(model.net)
    paths = model.export(str(tmp_path / "art"), onnx=True)
    meta = json.loads(open(paths["meta"]).read())
    assert meta["detector"] == "ssdlite" and meta["input"] == {"resize": "fixed", "size": size or [64, 64],
                                                               "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    runner = ExportedDetector(str(tmp_path / "art"))
    images = _images(np.random.default_rng(5), [(48, 80), (64, 64), (90, 70)])
    total = 0
    for image in images:
        h, w = image.shape[:2]
        expected = _sorted(*model.detect([image])[0], w, h)
        got = runner(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert len(got[1]) == len(expected[1]) > 0
        np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
        np.testing.assert_allclose(got[0], expected[0], atol=1e-3)
        np.testing.assert_array_equal(got[2], expected[2])
        total += len(got[1])
    worst = compare_runtimes(str(tmp_path / "art"), [cv2.cvtColor(i, cv2.COLOR_RGB2BGR) for i in images])
    assert worst["detections"] == total and worst["scores"] <= 1e-4 and worst["boxes"] <= 1e-4

    # int8: the two classes' detections are merged in float (a quantized merge would round the scores)
    from lib.tools.quantize import quantize
    calib = tmp_path / "calib"
    calib.mkdir()
    for k, image in enumerate(images):
        cv2.imwrite(str(calib / f"{k}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    quantize(str(tmp_path / "art"), str(calib), str(tmp_path / "int8"), num_calib=3)
    int8 = ExportedDetector(str(tmp_path / "int8"))
    for image in images:
        h, w = image.shape[:2]
        fp32 = runner(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        boxes, scores, labels = int8(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert len(scores) > 0 and set(labels.tolist()) <= {0, 1}
        assert np.all(scores >= meta["score_threshold"]) and np.all(np.diff(scores) <= 0)
        assert abs(scores.max() - fp32[1].max()) < 0.05
        assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)


def test_ssdlite_artifact_pre_nms_top_k_equals_numpy(tmp_path):
    """TEST.PRE_NMS_TOP_K: box_nms's topk in the graph == multiclass_nms(pre_nms_top_k) in numpy."""
    from lib.tools.infer import ExportedDetector
    model = _untrained(tmp_path, "ssdlite", "experiments/lstm_ssd/cfgs/tiny_test.yaml", ["a", "b"])
    images = _images(np.random.default_rng(5), [(48, 80), (90, 70)])
    unlimited = [model.detect([image])[0] for image in images]
    model.cfg.TEST.PRE_NMS_TOP_K = 3
    model.export(str(tmp_path / "art"))
    runner = ExportedDetector(str(tmp_path / "art"))
    for image, full in zip(images, unlimited):
        h, w = image.shape[:2]
        expected = _sorted(*model.detect([image])[0], w, h)
        assert 0 < len(expected[1]) <= 2 * 3 < len(full[1])           # the limit is active
        got = runner(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
        np.testing.assert_allclose(got[0], expected[0], atol=1e-3)
        np.testing.assert_array_equal(got[2], expected[2])


def test_rfcn_artifact_equals_in_process_detector(tmp_path):
    """Padding, im_info, proposals, decode and NMS in the exported graph == fgfa's WindowRunner + numpy."""
    from lib.tools.infer import ExportedDetector
    model = _untrained(tmp_path, "rfcn", "experiments/rfcn/cfgs/rfcn_tiny.yaml", ["a", "b"])
    with pytest.raises(ExportNotSupported, match="no ONNX mapping"):
        model.export(str(tmp_path / "art"), onnx=True)
    meta = json.loads((tmp_path / "art" / "meta.json").read_text())   # the MXNet artifact is complete
    assert meta["ops_library"] is True and meta["input"]["resize"] == "keep_ratio"
    runner = ExportedDetector(str(tmp_path / "art"))
    # sizes whose resized sides are not multiples of 16 exercise the in-graph padding
    from fgfa.data import target_size
    short, long_side = input_scale(model.cfg)
    for image in _images(np.random.default_rng(6), [(90, 150), (120, 160), (70, 75)]):
        h, w = image.shape[:2]
        boxes, scores, labels = model.detect([image])[0]
        # fgfa maps boxes back with its nominal scale, the artifact's runner with the exact ratio of the
        # rounded resized size: compare in the network's input pixels, mapped the runner's way
        scale = target_size(h, w, short, long_side)
        tw, th = round(w * scale), round(h * scale)
        boxes = boxes * scale * np.array([w / tw, h / th, w / tw, h / th], np.float32)
        expected = _sorted(boxes, scores, labels, w, h)
        got = runner(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert len(got[1]) == len(expected[1]) > 0
        np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
        np.testing.assert_allclose(got[0], expected[0], atol=1e-3)
        np.testing.assert_array_equal(got[2], expected[2])
    # MXNet's own operators instead of the compiled ones: a stock-mxnet artifact, same detections
    model.export(str(tmp_path / "art_builtin"), builtin_ops=True)
    assert json.loads((tmp_path / "art_builtin" / "meta.json").read_text())["ops_library"] is False
    assert "detops" not in (tmp_path / "art_builtin" / "model-symbol.json").read_text()
    assert model.net.builtin_ops is None                      # the model is left as it was
    portable = ExportedDetector(str(tmp_path / "art_builtin"))
    image = _images(np.random.default_rng(7), [(90, 150)])[0]
    a = runner(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    b = portable(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert len(a[1]) == len(b[1]) > 0
    np.testing.assert_allclose(b[1], a[1], atol=1e-5)
    np.testing.assert_allclose(b[0], a[0], atol=1e-3)


def _tiny_video_recipe(tmp_path, detector, seed, width, height, extra=""):
    """A recipe config of the tiny lstm_ssd-family model, one iteration, on one 4-frame synthetic video."""
    from lib.dataset.synthetic import generate_video_dataset
    generate_video_dataset(str(tmp_path / "synth"), seed=seed, num_videos=1, num_frames=4, width=width,
                           height=height, num_classes=1, max_objects=1, load=False)
    synth = tmp_path / "synth"
    return _cfg(tmp_path, f"""DETECTOR: {detector}
BASE: experiments/lstm_ssd/cfgs/tiny_test.yaml
TRAIN: {{BATCH_SIZE: 1, ITERATIONS: 1}}
DATASET: {{TRAIN: {{FORMAT: synthetic, ROOT: {synth}}}, VAL: {{FORMAT: synthetic, ROOT: {synth}}}}}
OUTPUT_DIR: {tmp_path / 'run'}
""" + extra)


def test_lstm_ssd_run_streams_and_refuses_single_frame_export(tmp_path, capsys):
    from lib.tools import export as export_tool
    cfg = _tiny_video_recipe(tmp_path, "lstm_ssd", seed=2, width=80, height=64)
    result = recipe.train(cfg, progress=False)
    assert result["summary"]["iterations"] == 1 and result["classes"] == ["disc"]
    model = load_model(str(tmp_path / "run"))
    frames = [cv2.cvtColor(cv2.imread(r.image), cv2.COLOR_BGR2RGB) for r in recipe.load_data(cfg).records]
    stream = model.detect_stream(frames)
    # the memory changes the outputs: frame 2 alone differs from frame 2 after frames 0 and 1
    alone = model.detect([frames[2]])[0]
    assert len(stream) == 4 and not np.array_equal(stream[2][1], alone[1])
    again = model.detect_stream(frames)        # reset at the start of each stream
    np.testing.assert_array_equal(again[2][1], stream[2][1])
    # EVAL.SUBSETS: the mAP of listed frames of the streamed snippet (the memory still saw them all)
    from lib.eval import voc_ap
    from lib.eval.subsets import write_frame_list
    records = recipe.load_data(cfg).records
    listed = write_frame_list(str(tmp_path / "later.txt"), records[2:])
    evaluate = runpy.run_path(os.path.join(PROJECT_ROOT, "experiments", "custom", "evaluate.py"),
                              run_name="subset_test")
    assert evaluate["main"](["--model", str(tmp_path / "run"), "--out", str(tmp_path / "ev_sub"),
                             "--set", f"EVAL.SUBSETS.later={listed}"]) == 0
    later = json.loads((tmp_path / "ev_sub" / "metrics.json").read_text())["subsets"]["later"]
    assert later["frames"] == 2 and later["mAP"] == pytest.approx(voc_ap(records[2:], stream[2:], ["disc"])["mAP"])
    assert "subset later: mAP@0.5" in (tmp_path / "ev_sub" / "results.md").read_text()
    # EVAL.CONTEXT: a frame list that keeps frames 2 and 3 of the video; by default the memory is streamed
    # over the whole video (the frames before are context, not scored), with 'split' over the list only
    listed = tmp_path / "late_frames.txt"
    listed.write_text("".join(f"{r.video} {r.frame + 1} {r.frame} 4\n" for r in records[2:]))
    for context, expected in (("video", stream[2:]), ("split", model.detect_stream(frames[2:]))):
        late_cfg = recipe.run_recipe(str(tmp_path / "run"), [f"DATASET.VAL.IMAGE_SET={listed}",
                                                             f"EVAL.CONTEXT={context}"])
        late = recipe.load_data(late_cfg, "VAL")
        assert [r.frame for r in late.records] == [2, 3]
        detections, _, streamed = evaluate["detect_all"](str(tmp_path / "run"), late_cfg, late, False)
        assert streamed == (4 if context == "video" else 2)
        for got, want in zip(detections, expected):
            np.testing.assert_array_equal(got[1], want[1])
    assert not np.array_equal(stream[2][1], model.detect_stream(frames[2:])[0][1])    # the context mattered
    assert evaluate["main"](["--model", str(tmp_path / "run"), "--set", "EVAL.CONTEXT=videos"]) == 2
    assert "EVAL.CONTEXT must be 'video' or 'split'" in capsys.readouterr().err
    assert export_tool.main(["--model", str(tmp_path / "run"), "--format", "mxnet", "--out", str(tmp_path / "a")]) == 3
    assert "lstm_ssd.export" in capsys.readouterr().err
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        pytest.skip("the float parts passed; the int8 part needs an MKLDNN (oneDNN) build of MXNet")
    # int8 in process instead (extractor and head; the memory in float): the same streaming results
    # within int8 rounding
    model.quantize_int8(frames[:2])
    int8 = model.detect_stream(frames)
    assert model.net.quantized and len(int8) == 4
    for (f_boxes, f_scores, _), (q_boxes, q_scores, _) in zip(stream, int8):
        assert abs(len(q_scores) - len(f_scores)) <= max(2, len(f_scores) // 5)
        assert abs(float(q_scores.max()) - float(f_scores.max())) < 0.05
    evaluate = runpy.run_path(os.path.join(PROJECT_ROOT, "experiments", "custom", "evaluate.py"),
                              run_name="int8_test")
    assert evaluate["main"](["--model", str(tmp_path / "run"), "--int8", "2", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["int8_calibration_frames"] == 2 and np.isfinite(metrics["ms_per_frame"])
    assert "int8 calibrated on 2 training frames" in (tmp_path / "ev" / "results.md").read_text()
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "meta.json").write_text("{}")
    assert evaluate["main"](["--model", str(artifact), "--cfg", str(tmp_path / "recipe.yaml"), "--int8", "2"]) == 2
    assert "lib.tools.quantize" in capsys.readouterr().err


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_model(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="run.json"):
        load_model(str(tmp_path))


def test_fused_evaluation_streams_a_frame_detector_with_the_box_memory(tmp_path):
    """OVERRIDES.TEST.FUSE.ENABLED on an ssdlite run: evaluate streams each snippet through
    lib.streaming.TrackedFusion, with and without tiling; the oracle is the same composition built by hand
    from the model's own frame detection (and the plain evaluation, which must stay per image)."""
    from lib.flow import BoxTracker
    from lib.streaming import FrameRunner, TrackedFusion
    cfg = _tiny_video_recipe(tmp_path, "ssdlite", seed=3, width=160, height=128,
                             extra="TILING: {INFER: {ENABLED: false, SIZE: [96, 96], OVERLAP: 16}}\n"
                                   "OVERRIDES: {TEST: {SCORE_THRESH: 0.0}}\n")
    recipe.train(cfg, progress=False)
    dataset = recipe.load_data(cfg, "VAL")
    frames = [cv2.cvtColor(cv2.imread(r.image), cv2.COLOR_BGR2RGB) for r in dataset.records]
    evaluate = runpy.run_path(os.path.join(PROJECT_ROOT, "experiments", "custom", "evaluate.py"), run_name="fuse_test")
    model = load_model(str(tmp_path / "run"))
    fuse = ["TEST.FUSE.ENABLED=true", "TEST.FUSE.MIN_SCORE=0.0"]
    for tiling in (False, True):
        detect = (lambda im: model.detect_tiled(im, cfg.TILING.INFER)) if tiling else (lambda im: model.detect([im])[0])
        plain = [detect(im) for im in frames]
        by_hand = TrackedFusion(FrameRunner(detect), BoxTracker("ultrafast", 0.5, decay=0.7), min_score=0.0,
                                max_boxes=model.cfg.TEST.MAX_PER_IMAGE).detect_video(frames)
        got, _, streamed = evaluate["detect_all"](str(tmp_path / "run"), cfg, dataset, tiling, overrides=fuse)
        unfused, _, _ = evaluate["detect_all"](str(tmp_path / "run"), cfg, dataset, tiling)
        assert streamed == 4
        for g, want, u, p in zip(got, by_hand, unfused, plain):
            for a, b in ((g, want), (u, p)):          # as sets: an untrained model's scores tie
                for x, y in zip(_canonical(*a), _canonical(*b)):
                    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-3)
        # the memory added carried boxes on the later frames (scores 0.0 and up are kept)
        assert sum(len(g[1]) for g in got[1:]) > sum(len(u[1]) for u in unfused[1:])
    # the artifact of a run with the box memory on carries its settings (lib.tools.infer applies them)
    plain_meta = json.loads(open(model.export(str(tmp_path / "plain_art"))["meta"]).read())
    assert "fuse" not in plain_meta
    fused_model = load_model(str(tmp_path / "run"), overrides=fuse + ["TEST.FUSE.DECAY=0.6"])
    meta = json.loads(open(fused_model.export(str(tmp_path / "fused_art"))["meta"]).read())
    assert meta["fuse"] == {"decay": 0.6, "iou": 0.5, "min_score": 0.0, "preset": "ultrafast", "scale": 0.5,
                            "min_visible": 0.3, "max_boxes": model.cfg.TEST.MAX_PER_IMAGE}
    assert {k: v for k, v in meta.items() if k != "fuse"} == plain_meta
    # a value infer would refuse is refused at export, by its key, before anything is written
    for bad, key in ((["TEST.FUSE.DECAY=1.5"], "TEST.FUSE.DECAY"), (["TEST.FUSE.PRESET=fastest"], "preset")):
        with pytest.raises(ConfigError, match=key):
            load_model(str(tmp_path / "run"), overrides=fuse + bad).export(str(tmp_path / "bad_art"))
        assert not (tmp_path / "bad_art").exists()
