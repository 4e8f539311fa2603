"""lib.eval.false_positives: hand-computed cases and, on random data, the false-positive counts of
lib.eval.voc_ap (the VOC devkit's greedy matching) on the detections above the threshold."""
import mxnet as mx
import numpy as np
import pytest

from lib.dataset import Record
from lib.eval import voc_ap
from lib.eval.false_positives import false_positive_table, false_positives


def _rec(name, boxes=(), labels=(), difficult=None):
    return Record(image=f"/x/{name}.jpg", width=100, height=100, boxes=list(boxes), labels=list(labels),
                  difficult=difficult)


def test_hand_computed_case():
    records = [
        _rec("a", [[10, 10, 50, 50]], [0]),
        _rec("b", [[0, 0, 20, 20], [60, 60, 90, 90]], [0, 1], difficult=[False, True]),
        _rec("bg1"),
        _rec("bg2"),
    ]
    detections = [
        # a: a hit (IoU 1), a duplicate of it (FP), a low-score box (dropped at 0.5)
        (np.array([[10, 10, 50, 50], [11, 11, 50, 50], [70, 70, 80, 80]], np.float32),
         np.array([0.9, 0.8, 0.3]), np.array([0, 0, 0])),
        # b: right box but wrong class (FP, class 1 has only the difficult box elsewhere),
        #    a box on the difficult gt (ignored), a box on nothing (FP)
        (np.array([[0, 0, 20, 20], [60, 60, 90, 90], [30, 30, 40, 40]], np.float32),
         np.array([0.7, 0.95, 0.6]), np.array([1, 1, 0])),
        # bg1: two boxes above the threshold, one below
        (np.array([[1, 1, 5, 5], [10, 10, 30, 30], [40, 40, 60, 60]], np.float32),
         np.array([0.55, 0.99, 0.1]), np.array([0, 1, 0])),
        # bg2: nothing
        (np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, np.int64)),
    ]
    r = false_positives(records, detections, ["car", "sign"], threshold=0.5)
    assert r["per_image"] == [1, 2, 2, 0]
    assert r["all"] == {"images": 4, "false_positives": 5, "true_positives": 1, "fp_per_image": 1.25}
    assert r["with_objects"] == {"images": 2, "false_positives": 3, "true_positives": 1, "fp_per_image": 1.5}
    assert r["background"] == {"images": 2, "false_positives": 2, "true_positives": 0, "fp_per_image": 1.0,
                               "images_with_fp": 1}
    assert r["per_class"] == {"car": 3, "sign": 2}
    # a higher threshold drops the duplicate (0.8 kept, 0.7 / 0.6 / 0.55 dropped)
    r = false_positives(records, detections, ["car", "sign"], threshold=0.75)
    assert r["per_image"] == [1, 0, 1, 0]
    assert r["background"]["images_with_fp"] == 1


def test_no_background_images_reports_none():
    records = [_rec("a", [[10, 10, 50, 50]], [0])]
    r = false_positives(records, [(np.array([[10, 10, 50, 50]]), np.array([0.9]), np.array([0]))], ["car"])
    assert r["background"]["fp_per_image"] is None and r["background"]["images"] == 0
    assert r["all"]["false_positives"] == 0 and r["all"]["true_positives"] == 1


def test_detector_outputs_with_padding():
    """gluoncv-style mx.nd outputs (K,1) with -1 padding are accepted, padding ignored."""
    records = [_rec("bg")]
    ids = mx.nd.array([[0], [-1], [-1]])
    scores = mx.nd.array([[0.9], [-1], [-1]])
    boxes = mx.nd.array([[1, 1, 10, 10], [-1, -1, -1, -1], [-1, -1, -1, -1]])
    r = false_positives(records, [(boxes, scores, ids)], ["car"], threshold=0.5)
    assert r["per_image"] == [1]


def _random_case(rng, n_images, n_classes):
    records, detections = [], []
    for i in range(n_images):
        n_gt = int(rng.integers(0, 4)) if i % 3 else 0   # every third image is background
        xy = rng.uniform(0, 60, (n_gt, 2))
        wh = rng.uniform(5, 40, (n_gt, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        records.append(_rec(f"im{i}", gt, rng.integers(0, n_classes, n_gt),
                            difficult=rng.random(n_gt) < 0.15))
        # detections: jittered copies of the gt (some duplicated) plus random boxes
        jitter = np.repeat(gt, 2, axis=0) + rng.normal(0, 4, (2 * n_gt, 4))
        n_rand = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, (n_rand, 2))
        rand = np.concatenate([xy, xy + rng.uniform(5, 40, (n_rand, 2))], 1)
        boxes = np.concatenate([jitter, rand]).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.concatenate([np.repeat(records[-1].labels, 2), rng.integers(0, n_classes, n_rand)])
        labels = np.where(rng.random(len(labels)) < 0.1, rng.integers(0, n_classes, len(labels)), labels)
        detections.append((boxes, rng.random(len(boxes)), labels.astype(np.int64)))
    return records, detections


@pytest.mark.parametrize("seed", range(5))
def test_counts_equal_voc_devkit_matching(seed):
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c"]
    records, detections = _random_case(rng, 30, len(classes))
    for threshold in (0.0, 0.3, 0.7):
        r = false_positives(records, detections, classes, threshold=threshold)
        kept = [(b[s >= threshold], s[s >= threshold], l[s >= threshold]) for b, s, l in detections]
        voc = voc_ap(records, kept, classes)
        for name in classes:
            assert r["per_class"][name] == voc["per_class"][name]["fp"], (threshold, name)
        assert r["all"]["true_positives"] == sum(v["tp"] for v in voc["per_class"].values())
        # background images: every kept detection is false
        bg = [i for i, rec in enumerate(records) if rec.num_boxes == 0]
        assert r["background"]["false_positives"] == sum(len(kept[i][1]) for i in bg)
        assert r["all"]["false_positives"] == r["with_objects"]["false_positives"] + \
            r["background"]["false_positives"]


def test_table_lists_each_threshold():
    rng = np.random.default_rng(7)
    records, detections = _random_case(rng, 12, 2)
    results, table = false_positive_table(records, detections, ["a", "b"], thresholds=(0.2, 0.8))
    assert [r["threshold"] for r in results] == [0.2, 0.8]
    assert results[0]["all"]["false_positives"] >= results[1]["all"]["false_positives"]
    assert table.count("\n") == 4 and "| 0.20 |" in table and "| 0.80 |" in table


def test_misaligned_detections_are_an_error():
    with pytest.raises(ValueError, match="2 entries for 1"):
        false_positives([_rec("a")], [None, None], ["car"])
