"""The M2Det toolkit commands end to end on a tiny CSV dataset (with a negative image), CSV edge cases
and a tiny model overfitting a few images."""
import json
import os
import time

import cv2
import mxnet as mx
import numpy as np
import pytest

from lib.dataset import DetectionDataset
from lib.dataset.csv_format import load_csv
from lib.anchor_coverage import best_prior_iou
from lib.config import ConfigError
from m2det import cli
from m2det import config as m2det_config
from m2det import data as m2det_data
from m2det import inference
from m2det.detector import build_model, prior_spec
from m2det.train import M2DetTask

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "experiments", "m2det", "cfgs", "tiny.yaml")


def make_csv_dataset(root):
    """4 images with a red and a blue square (float coordinates) and one image without objects."""
    os.makedirs(root, exist_ok=True)
    rows = []
    for i in range(4):
        image = np.full((120, 160, 3), 90, np.uint8)
        x1, y1 = 20 + 10 * i, 15 + 5 * i
        cv2.rectangle(image, (x1, y1), (x1 + 49, y1 + 39), (0, 0, 255), -1)
        cv2.rectangle(image, (100, 60), (149, 109), (255, 0, 0), -1)
        cv2.imwrite(os.path.join(root, f"img{i}.png"), image)
        rows.append(f"img{i}.png,{x1}.0,{y1}.25,{x1 + 50}.0,{y1 + 40},red")
        rows.append(f"img{i}.png,100,60,150,110,blue")
    cv2.imwrite(os.path.join(root, "negative.png"), np.full((120, 160, 3), 90, np.uint8))
    rows.append("negative.png,,,,,")
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(root, "classes.csv"), "w") as f:
        f.write("red,0\nblue,1\n")
    return os.path.join(root, "train.csv"), os.path.join(root, "classes.csv")


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    return make_csv_dataset(str(tmp_path_factory.mktemp("csv")))


def test_csv_float_coordinates_and_negative_image(csv_data):
    dataset = load_csv(csv_data[0], classes=csv_data[1], strict=True)
    assert len(dataset) == 5 and dataset.classes == ["red", "blue"]
    first = dataset.records[0]
    np.testing.assert_allclose(first.boxes[0], [20.0, 15.25, 70.0, 55.0])
    negative = [r for r in dataset.records if r.image.endswith("negative.png")][0]
    assert negative.boxes.shape == (0, 4)


@pytest.mark.parametrize("bad_rows,classes,message", [
    ("img0.png,70,15,20,55,red\n", "red,0\nblue,1\n", r"train.csv:1: .*x2 <= x1"),
    ("missing.png,1,2,30,40,red\n", "red,0\nblue,1\n", r"train.csv:1: .*missing.png"),
    ("img0.png,1,2,30,40,red\n", "red,0\nred,1\n", r"classes.csv:2: .*red"),
])
def test_csv_errors_name_the_line(csv_data, tmp_path, bad_rows, classes, message):
    folder = os.path.dirname(csv_data[0])
    bad_csv, bad_classes = os.path.join(folder, "train_bad.csv"), str(tmp_path / "classes.csv")
    # keep the name train.csv in the message: write it next to the images under that stem
    bad_csv = os.path.join(folder, "bad", "train.csv")
    os.makedirs(os.path.dirname(bad_csv), exist_ok=True)
    with open(bad_csv, "w") as f:
        f.write(bad_rows.replace("img0.png", "../img0.png"))
    with open(bad_classes, "w") as f:
        f.write(classes)
    # the console script's exit status (one 'error:' line, lib.cli)
    assert cli.train_main(["--cfg", TINY, "--strict", "--snapshot-path", str(tmp_path / "run"),
                           "csv", bad_csv, bad_classes]) == 2
    from lib.dataset.io import DatasetError
    with pytest.raises(DatasetError, match=message):
        from lib.dataset.labelmap import read_classes_csv
        load_csv(bad_csv, classes=read_classes_csv(bad_classes), strict=True)


def test_toolkit_commands_end_to_end(csv_data, tmp_path, capsys):
    annotations, classes = csv_data
    run = str(tmp_path / "run")
    common = ["--cfg", TINY, "--snapshot-path", run, "--batch-size", "3", "--tensorboard-dir",
              str(tmp_path / "tb")]
    assert cli.train_main(common + ["--epochs", "1", "--random-transform", "csv", annotations, classes,
                                    "--val-annotations", annotations]) == 0
    assert os.path.isfile(os.path.join(run, "ckpt-0001.json"))
    history = json.load(open(os.path.join(run, "history.json")))
    assert "mAP" in history["val"][-1]["metrics"]  # evaluation each epoch
    assert os.path.islink(str(tmp_path / "tb"))
    # resume: the run folder continues from epoch 1
    assert cli.train_main(common + ["--epochs", "2", "--no-evaluation", "csv", annotations, classes]) == 0
    history = json.load(open(os.path.join(run, "history.json")))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]

    capsys.readouterr()
    assert cli.evaluate_main(["--model", run, "--score-threshold", "0.01", "--save-path",
                              str(tmp_path / "annotated"), "--results", str(tmp_path / "dets.json"),
                              "csv", annotations, classes]) == 0
    out = capsys.readouterr().out
    assert "instances of class red" in out and "mAP@0.5" in out and "COCO AP" in out
    assert len(os.listdir(tmp_path / "annotated")) == 5
    assert cli.evaluate_main(["--model", run, "--test-sizes", "160", "160x224", "--flip", "--weighted-average",
                              "--no-coco", "csv", annotations, classes]) == 0
    out = capsys.readouterr().out
    assert "weighted mAP@0.5" in out and "COCO" not in out
    assert cli.convert_main([run, str(tmp_path / "exported")]) == 0
    meta = json.load(open(tmp_path / "exported" / "meta.json"))
    assert meta["classes"] == ["red", "blue"] and meta["input"]["size"] == [160, 160]
    assert cli.debug_main(["--cfg", TINY, "--random-transform", "--output-dir", str(tmp_path / "debug"),
                           "csv", annotations,
                           classes]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # random crops may drop boxes whose centre falls outside the patch, never all of an image
    assert 4 <= summary["boxes"] <= 8 and summary["covered"] + summary["uncovered"] == summary["boxes"]
    assert len([f for f in os.listdir(tmp_path / "debug") if f.endswith(".jpg")]) == 5
    coverage = json.load(open(tmp_path / "debug" / "anchor_coverage.json"))
    assert len(coverage["unmatched"]) == summary["uncovered"]

    # the converted model (loaded without training code) gives the training model's detections
    net, cfg, names = inference.load_trained_model(run)
    dataset = load_csv(annotations, classes=classes)
    cfg.TEST.SCORE_THRESH = 0.0
    detector = inference.Detector(net, cfg, hybridize=False)
    from lib.tools.infer import ExportedDetector
    exported = ExportedDetector(str(tmp_path / "exported"))
    for record in dataset.records[:3]:
        image = cv2.imread(record.image)
        boxes, scores, labels = exported(image)
        ref_boxes, ref_scores, ref_labels = detector.detect([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])[0]
        keep = ref_scores > meta["score_threshold"]
        ref_boxes = np.clip(ref_boxes[keep], 0, [160, 120, 160, 120])
        np.testing.assert_allclose(np.sort(scores), np.sort(ref_scores[keep]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(boxes[np.argsort(-scores, kind="stable")],
                                   ref_boxes[np.argsort(-ref_scores[keep], kind="stable")], atol=0.05)

    # converted at a test size of its own (TEST.SIZES[0], priors at the trained pixel sizes): the artifact
    # gives what the in-process test-size detector gives
    assert cli.convert_main([run, str(tmp_path / "exported_224"), "--set", "TEST.SIZES=[[160, 224]]"]) == 0
    assert json.load(open(tmp_path / "exported_224" / "meta.json"))["input"]["size"] == [160, 224]
    cfg.TEST.SIZES = [[160, 224]]
    at_224 = inference.build_detector(net, cfg, hybridize=False)
    image = cv2.imread(dataset.records[0].image)
    boxes, scores, _ = ExportedDetector(str(tmp_path / "exported_224"))(image)
    ref_boxes, ref_scores, _ = at_224.detect([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])[0]
    keep = ref_scores > meta["score_threshold"]
    assert keep.sum() > 0
    np.testing.assert_allclose(np.sort(scores), np.sort(ref_scores[keep]), rtol=1e-4, atol=1e-5)


def test_model_at_other_size_shares_the_weights():
    cfg = m2det_config.load(TINY)
    net = build_model(cfg, 2)
    same, _ = inference.model_at_size(net, cfg, 160)
    x = mx.nd.random.normal(shape=(1, 3, 160, 160))
    for a, b in zip(net(x), same(x)):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    bigger, big_cfg = inference.model_at_size(net, cfg, 192, prior_sizes="input")
    assert bigger.feature_sizes == [(f, f) for f in (24, 12, 6, 3, 1)] and big_cfg.MODEL.PRIORS.STEPS == []
    np.testing.assert_array_equal(bigger.head.loc[0].weight.data().asnumpy(),
                                  net.head.loc[0].weight.data().asnumpy())
    assert bigger(mx.nd.zeros((1, 3, 192, 192)))[0].shape == (1, bigger.num_priors, 3)
    # 'input': the first prior (level 0's min size) covers the same share of the image; 'trained': the
    # same pixels, min size = SIZE_PATTERN[0] * 160 at any input
    def level0_min_width(model):     # the first prior of level 0's centre cell (unclipped)
        fh, fw = model.feature_sizes[0]
        box = model.priors[((fh // 2) * fw + fw // 2) * model.anchors_per_cell]
        return box[2] - box[0]
    np.testing.assert_allclose(level0_min_width(bigger), level0_min_width(net), rtol=1e-5)
    pyramid, _ = inference.model_at_size(net, cfg, 192)      # default: 'trained'
    assert pyramid.feature_sizes == bigger.feature_sizes
    np.testing.assert_allclose(level0_min_width(pyramid) * 192, cfg.MODEL.PRIORS.SIZE_PATTERN[0] * 160, rtol=1e-5)
    np.testing.assert_allclose(level0_min_width(net) * 160, cfg.MODEL.PRIORS.SIZE_PATTERN[0] * 160, rtol=1e-5)
    with pytest.raises(ConfigError, match="TEST.PRIOR_SIZES"):
        inference.model_at_size(net, cfg, 192, prior_sizes="pixels")


def test_mirror_boxes_hand_computed():
    np.testing.assert_array_equal(inference.mirror_boxes([[10, 5, 30, 25]], 100), [[70, 5, 90, 25]])


@pytest.mark.parametrize("merge", ["nms", "vote"])
def test_test_time_augmentation_is_mirror_equivariant(merge):
    """Flip TTA merges the passes on the frame and on its mirror image, so running it on the mirrored
    frame must give the mirror image of its detections on the frame (an oracle independent of how the
    passes are merged); TEST.SIZES of only INPUT.SIZE is the single-pass detector."""
    cfg = m2det_config.load(TINY, ["TEST.SCORE_THRESH=0.0", "TEST.FLIP=true", "TEST.SIZES=[160, [160, 224]]",
                                   f"TEST.MERGE={merge}"])
    mx.random.seed(3)
    net = build_model(cfg, 2)
    tta = inference.build_detector(net, cfg, hybridize=False)
    assert isinstance(tta, inference.MultiScaleDetector) and len(tta.detectors) == 2
    rng = np.random.RandomState(0)
    image = rng.randint(0, 255, (120, 176, 3)).astype(np.uint8)
    boxes, scores, labels = tta.detect([image])[0]
    m_boxes, m_scores, m_labels = tta.detect([np.ascontiguousarray(image[:, ::-1])])[0]
    assert len(scores) > 10
    order, m_order = np.lexsort((boxes[:, 0], -scores)), np.lexsort((-m_boxes[:, 2], -m_scores))
    np.testing.assert_allclose(m_scores[m_order], scores[order], rtol=1e-5)
    np.testing.assert_array_equal(m_labels[m_order], labels[order])
    np.testing.assert_allclose(m_boxes[m_order], inference.mirror_boxes(boxes[order], 176), atol=1e-3)
    single = m2det_config.load(TINY, ["TEST.SIZES=[160]"])
    assert type(inference.build_detector(net, single, hybridize=False)) is inference.Detector
    with pytest.raises(ConfigError, match="TEST.MERGE"):
        inference.build_detector(net, m2det_config.load(TINY, ["TEST.MERGE=mean"]))
    with pytest.raises(ConfigError, match=r"TEST.SIZES\[1\]"):
        inference.build_detector(net, m2det_config.load(TINY, ["TEST.SIZES=[160, [0, 5]]"]))
    with pytest.raises(ConfigError, match=r"TEST.SIZES entry \[128, 192\].*no valid pyramid"):
        inference.build_detector(net, m2det_config.load(TINY, ["TEST.SIZES=[[128, 192]]"]))


def test_debug_anchor_coverage_oracle():
    priors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    boxes = np.array([[0.0, 0.0, 0.5, 0.25],      # IoU 0.5 with prior 0
                      [0.6, 0.6, 0.7, 0.7]])      # IoU 0.04 with prior 1
    np.testing.assert_allclose(best_prior_iou(boxes, priors), [0.5, 0.04])


def test_debug_uses_the_model_priors_in_the_shared_draw_tool(csv_data):
    from lib.anchor_coverage import anchor_match, build_anchors
    from m2det.detector import M2Det
    cfg = m2det_config.load(TINY)
    net = M2Det(cfg.MODEL, 2, cfg.INPUT.SIZE)
    spec = prior_spec(net)
    np.testing.assert_allclose(build_anchors(spec, 160, 160) / 160.0, net.priors, atol=1e-6)
    record = load_csv(csv_data[0], classes=csv_data[1]).records[0]
    best, _ = anchor_match(spec, record.boxes, record.width, record.height)
    norm = record.boxes / np.array([record.width, record.height] * 2, np.float32)
    np.testing.assert_allclose(best, best_prior_iou(norm, net.priors), atol=1e-4)


@pytest.mark.parametrize("size", ["160", "[160, 224]"], ids=["square", "non-square"])
def test_tiny_model_overfits_two_images(csv_data, tmp_path, size):
    """Training targets, the inference graph and the mapping back to image pixels agree: the model
    learns the boxes (mAP by lib.eval), also when the 160x120 images go to a 224x160 input; the
    exported artifact, run by lib.tools.infer on the image file, gives the in-process detections."""
    from lib.tools.infer import ExportedDetector
    from m2det.export import export_inference_model
    dataset = load_csv(csv_data[0], classes=csv_data[1])
    few = dataset.subset([0, 1])
    train = DetectionDataset(few.records * 10, few.classes)
    cfg = m2det_config.load(TINY, [f"OUTPUT_DIR={tmp_path / 'overfit'}", "TRAIN.OPTIMIZER=adam",
                                     "TRAIN.LR=0.003", "TRAIN.EPOCHS=8", "TRAIN.EVAL_EVERY=0",
                                     "TRAIN.CHECKPOINT_EVERY=100", "TRAIN.LOG_EVERY=5",
                                     "MODEL.BN_MOMENTUM=0.8", f"INPUT.SIZE={size}"])
    mx.random.seed(0)
    summary = cli.run_training(cfg, train, few)
    first = json.load(open(tmp_path / "overfit" / "history.json"))["epochs"][0]["losses"]["loss"]
    assert summary["final_losses"]["loss"] < 0.7 * first
    assert summary["val"]["mAP"] > 0.9
    net, cfg, classes = inference.load_trained_model(str(tmp_path / "overfit"))
    image_path = few.records[0].image
    boxes, scores, labels = inference.Detector(net, cfg).detect([cv2.imread(image_path)[:, :, ::-1]])[0]
    export_inference_model(net, cfg, classes, str(tmp_path / "export"))
    got_boxes, got_scores, got_labels = ExportedDetector(str(tmp_path / "export"))(cv2.imread(image_path))
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_boxes, boxes, atol=0.05)


def test_oid_parent_label_selects_the_subtree(tmp_path):
    from m2det.datasets import oid_labels_under
    descriptions = tmp_path / "class-descriptions-boxable.csv"
    descriptions.write_text("/m/veh,Vehicle\n/m/car,Car\n/m/bus,Bus\n/m/taxi,Taxi\n/m/cat,Cat\n")
    hierarchy = tmp_path / "hierarchy.json"
    hierarchy.write_text(json.dumps({"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": "/m/veh", "Subcategory": [
            {"LabelName": "/m/car", "Subcategory": [{"LabelName": "/m/taxi"}]},
            {"LabelName": "/m/bus"}]},
        {"LabelName": "/m/cat"}]}))
    assert oid_labels_under(str(hierarchy), str(descriptions), "Vehicle") == ["Car", "Taxi", "Bus"]
    from lib.dataset.io import DatasetError
    with pytest.raises(DatasetError, match="'Dog' is not a class name"):
        oid_labels_under(str(hierarchy), str(descriptions), "Dog")


SPEEDTRAP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                         "data", "speedtrap")


def test_debug_on_pascal_voc_speedtrap(tmp_path, capsys):
    assert cli.debug_main(["--cfg", os.path.join(os.path.dirname(TINY), "speedtrap_mobilenet.yaml"),
                           "--limit", "3", "--output-dir", str(tmp_path), "pascal", SPEEDTRAP,
                           "--val-split", "test"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 3 and len([f for f in os.listdir(tmp_path) if f.endswith(".jpg")]) == 3


@pytest.mark.parametrize("size", ["160", "[160, 224]"], ids=["square", "non-square"])
def test_training_samples_reproducible_and_targets_decode_to_the_boxes(csv_data, size):
    from lib.bbox import decode_boxes
    from m2det.detector import M2Det
    dataset = load_csv(csv_data[0], classes=csv_data[1])
    cfg = m2det_config.load(TINY, ["TRAIN.AUGMENT=true", f"INPUT.SIZE={size}"])
    priors = M2Det(cfg.MODEL, 2, cfg.INPUT.SIZE).priors
    augmented = m2det_data._RecordDataset(dataset.records, m2det_data.TrainSample(cfg, priors), cfg)
    augmented.epoch_seed = 5
    first, again = augmented[0], augmented[0]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert first[0].shape == (3, 160, 160 if size == "160" else 224)
    plain = m2det_data.TrainSample(cfg, priors)  # no augmentation: exact targets
    data, cls_t, box_t = plain(dataset.records[0])
    positive = cls_t > 0
    assert set(np.unique(cls_t[positive]).astype(int)) == {1, 2}  # red -> 1, blue -> 2 (0 = background)
    record = dataset.records[0]
    gt = record.boxes / np.array([record.width, record.height] * 2, np.float32)
    decoded = decode_boxes(box_t[positive], priors[positive], stds=(0.1, 0.1, 0.2, 0.2))
    labels = cls_t[positive].astype(int) - 1
    np.testing.assert_allclose(decoded, gt[labels], atol=1e-4)  # one box per class in this image
    negative_sample = [r for r in dataset.records if r.num_boxes == 0][0]
    assert np.all(plain(negative_sample)[1] == 0)


def test_data_parallel_loss_equals_single_device(csv_data):
    """Two CPU contexts (split batch, losses rescaled to the batch's positives) give the same
    total loss and gradients as one context; BatchNorm uses running statistics here
    (train_mode=False) because batch statistics differ per device by design."""
    from mxnet import autograd
    from m2det.detector import M2Det
    dataset = load_csv(csv_data[0], classes=csv_data[1])
    cfg = m2det_config.load(TINY, ["TRAIN.AUGMENT=false"])
    priors = M2Det(cfg.MODEL, 2, cfg.INPUT.SIZE).priors
    sample = m2det_data.TrainSample(cfg, priors)
    items = [sample(r) for r in dataset.records[:4]]
    batch = [mx.nd.array(np.stack([it[k] for it in items])) for k in range(3)]
    devices = [mx.cpu(0), mx.cpu(1)]
    mx.random.seed(1)
    net = build_model(cfg, 2, devices)
    results = []
    for ctx in ([mx.cpu(0)], devices):
        task = M2DetTask(net, cfg, ctx)
        with autograd.record(train_mode=False):
            loss, parts = task.loss(batch)
        losses = loss if isinstance(loss, list) else [loss]
        autograd.backward(losses)
        weight = net.head.conf[0].weight
        grad = sum(g.asnumpy() for g in weight.list_grad()) if len(ctx) > 1 else weight.grad(mx.cpu(0)).asnumpy()
        results.append((sum(float(l.asscalar()) for l in losses), parts, grad.copy()))
        for p in net.collect_params().values():
            if p.grad_req != "null":
                p.zero_grad()
    (single, single_parts, single_grad), (multi, multi_parts, multi_grad) = results
    assert single == pytest.approx(multi, rel=1e-4)
    assert single_parts["cls_loss"] == pytest.approx(multi_parts["cls_loss"], rel=1e-4)
    np.testing.assert_allclose(multi_grad, single_grad, rtol=1e-3, atol=1e-6)


def test_every_dataset_format_evaluates_alike(csv_data, tmp_path, capsys):
    """The same images and boxes written as VOC, COCO and KITTI give the CSV's mAP in m2det-evaluate."""
    import shutil
    from lib.dataset.coco import write_coco
    from lib.dataset.kitti import write_kitti
    from lib.dataset.voc import write_voc
    annotations, classes = csv_data
    dataset = load_csv(annotations, classes=classes)
    dataset.records = [r for r in dataset.records if r.num_boxes]  # KITTI / COCO keep only labelled
    run = str(tmp_path / "run")
    # The overfitting recipe below, so that the model finds objects whatever the machine's float rounding.
    cfg = m2det_config.load(TINY, [f"OUTPUT_DIR={run}", "TRAIN.OPTIMIZER=adam", "TRAIN.LR=0.003",
                                     "TRAIN.EPOCHS=8", "TRAIN.EVAL_EVERY=0", "MODEL.BN_MOMENTUM=0.8",
                                     "TRAIN.SEED=0"])
    cli.run_training(cfg, DetectionDataset(dataset.records * 10, dataset.classes))
    cli.convert_main([run, str(tmp_path / "exported")])
    voc_root, coco_root, kitti_root = tmp_path / "voc", tmp_path / "coco", tmp_path / "kitti"
    write_voc(dataset, str(voc_root), split="test")
    os.makedirs(coco_root / "images" / "val2017")
    os.makedirs(kitti_root / "image_2")
    for record in dataset.records:
        shutil.copy(record.image, coco_root / "images" / "val2017")
        shutil.copy(record.image, kitti_root / "image_2")
    write_coco(dataset, str(coco_root / "annotations" / "instances_val2017.json"),
               images_root=str(coco_root / "images" / "val2017"))
    write_kitti(dataset, str(kitti_root / "label_2"))
    csv_rows = tmp_path / "labelled.csv"
    with open(annotations) as f:
        csv_rows.write_text("".join(line.replace("img", os.path.dirname(annotations) + "/img")
                                    for line in f if ",,,,," not in line))

    def mean_ap(dataset_args):
        cli.evaluate_main(["--model", str(tmp_path / "exported"), "--score-threshold", "0.01", "--no-coco"]
                          + dataset_args)
        line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mAP@0.5")][0]
        return line.split(":")[1].strip()

    reference = mean_ap(["csv", str(csv_rows), classes])
    assert float(reference) > 0.3, reference
    assert mean_ap(["pascal", str(voc_root), "--classes", "red,blue"]) == reference
    assert mean_ap(["coco", str(coco_root), "--classes", "red,blue"]) == reference
    assert mean_ap(["kitti", str(kitti_root), "--classes", "red,blue"]) == reference


def test_train_test_entry_point(csv_data, tmp_path, capsys):
    import runpy
    script = os.path.join(os.path.dirname(os.path.dirname(TINY)), "train_test.py")
    main = runpy.run_path(script, run_name="m2det_train_test")["main"]
    spec = f"{{FORMAT: csv, ANNOTATIONS: {csv_data[0]}, CLASSES: {csv_data[1]}}}"
    started = time.perf_counter()
    assert main(["--cfg", TINY, "--set", f"DATASET.TRAIN={spec}", "--set", f"DATASET.VAL={spec}",
                 "--set", f"OUTPUT_DIR={tmp_path}", "--set", "TRAIN.EVALUATE=false"]) == 0
    whole_run = time.perf_counter() - started
    results = json.load(open(tmp_path / "results.json"))
    assert results["val_images"] == 5 and set(results["AP@0.5 per class"]) == {"red", "blue"}
    # the training part of the run, in seconds (not milliseconds, not a sum over threads): within the run
    assert 0 < results["train_wall_seconds"] <= whole_run
    assert 0 <= results["coco"]["mAP"] <= 1
    assert main(["--cfg", TINY, "--set", f"DATASET.VAL={spec}", "--set", f"OUTPUT_DIR={tmp_path}",
                 "--test-only"]) == 0
    assert json.load(open(tmp_path / "results.json"))["mAP@0.5"] == results["mAP@0.5"]


def test_loader_threads_give_the_batches_of_the_single_threaded_loader(csv_data):
    """TRAIN.WORKERS only changes who prepares the batches: with loader threads running samples
    concurrently, every augmented batch equals the one prepared in the training thread."""
    from m2det.detector import M2Det
    dataset = load_csv(csv_data[0], classes=csv_data[1])
    epochs = {}
    for workers in (0, 3):
        cfg = m2det_config.load(TINY, ["TRAIN.AUGMENT=true", f"TRAIN.WORKERS={workers}",
                                         "TRAIN.BATCH_SIZE=2"])
        batches = m2det_data.train_batches(dataset, cfg, M2Det(cfg.MODEL, 2, cfg.INPUT.SIZE).priors)
        np.random.seed(7)   # lib.train.fit seeds numpy per epoch before asking for its batches
        mx.random.seed(7)   # the loader's shuffling
        epochs[workers] = [[part.asnumpy() for part in batch] for batch in batches(0)]
    assert len(epochs[0]) == len(epochs[3]) == 2   # 5 images, rollover
    for single, threaded in zip(epochs[0], epochs[3]):
        for a, b in zip(single, threaded):
            np.testing.assert_array_equal(a, b)
