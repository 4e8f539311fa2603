"""COCO AP equals pycocotools run directly on JSON files written here independently of lib.eval."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lib.dataset import Record
from lib.eval import coco_ap

CLASSES = ["car", "person", "bike", "unused"]
CAT_IDS = [3, 1, 2, 7]  # arbitrary COCO category ids in the files: the mapping must not matter


def _case(seed, num_images=25):
    """Raw gt/detections as plain lists: [x, y, w, h] pixels, 'crowd' flag, class index."""
    rng = np.random.RandomState(seed)
    images = []
    for i in range(num_images):
        gts = []
        for _ in range(0 if i % 6 == 0 else rng.randint(1, 7)):
            w, h = float(rng.randint(8, 250)), float(rng.randint(8, 250))  # small, medium and large
            x, y = float(rng.randint(0, 300)), float(rng.randint(0, 300))
            gts.append({"bbox": [x, y, w, h], "cls": int(rng.randint(0, 3)), "crowd": bool(rng.rand() < 0.1)})
        dets = []
        for g in gts:
            for _ in range(rng.randint(0, 3)):
                x, y, w, h = g["bbox"]
                jitter = rng.uniform(-0.15, 0.15, 4) * [w, h, w, h]
                dets.append({"bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                             "cls": g["cls"] if rng.rand() < 0.9 else int(rng.randint(0, 3)),
                             "score": float(rng.rand())})
        for _ in range(rng.randint(0, 3)):
            dets.append({"bbox": [float(rng.uniform(0, 400)), float(rng.uniform(0, 400)),
                                  float(rng.uniform(5, 80)), float(rng.uniform(5, 80))],
                         "cls": int(rng.randint(0, 3)), "score": float(rng.rand())})
        images.append({"gts": gts, "dets": dets})
    return images


def _direct_pycocotools(images, tmp_path, cat_ids=None):
    gt = {"images": [], "annotations": [], "categories": []}
    results = []
    for i, img in enumerate(images):
        image_id = 1000 + 3 * i
        gt["images"].append({"id": image_id, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for g in img["gts"]:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                      "category_id": CAT_IDS[g["cls"]], "bbox": g["bbox"],
                                      "area": g["bbox"][2] * g["bbox"][3], "iscrowd": int(g["crowd"])})
        for d in img["dets"]:
            results.append({"image_id": image_id, "category_id": CAT_IDS[d["cls"]], "bbox": d["bbox"],
                            "score": d["score"]})
    gt["categories"] = [{"id": cid, "name": n} for cid, n in zip(CAT_IDS, CLASSES)]
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(res_path))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _ours(images):
    records, detections = [], []
    for i, img in enumerate(images):
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (g["bbox"] for g in img["gts"])]
        records.append(Record(image=f"/data/{i}.jpg", width=640, height=480, boxes=np.array(boxes, np.float64),
                              labels=[g["cls"] for g in img["gts"]], difficult=[g["crowd"] for g in img["gts"]]))
        dboxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in img["dets"])]).reshape(-1, 4)
        detections.append((dboxes, np.array([d["score"] for d in img["dets"]]),
                           np.array([d["cls"] for d in img["dets"]], np.int64)))
    return records, detections


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_ap_equals_pycocotools_on_files(seed, tmp_path):
    images = _case(seed)
    ref = _direct_pycocotools(images, tmp_path)
    records, detections = _ours(images)
    res = coco_ap(records, detections, CLASSES)
    ours = [v if v is not None else -1.0 for v in res["stats"].values()]
    # float32 Record boxes vs float64 JSON boxes: equal up to rounding
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert res["mAP"] == pytest.approx(ref[0], abs=1e-5)
    assert 0.05 < res["mAP"] < 0.95
    assert "Average Precision" in res["summary"]
    # per-class AP equals pycocotools restricted to that category
    for c in range(3):
        ref_c = _direct_pycocotools(images, tmp_path, cat_ids=[CAT_IDS[c]])
        assert res["per_class"][CLASSES[c]]["ap"] == pytest.approx(ref_c[0], abs=1e-5)
        assert res["per_class"][CLASSES[c]]["ap50"] == pytest.approx(ref_c[1], abs=1e-5)
    assert res["per_class"]["unused"]["ap"] is None


def test_no_detections_at_all(tmp_path):
    images = _case(3)
    records, _ = _ours(images)
    empty = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)) for _ in records]
    res = coco_ap(records, empty, CLASSES)
    assert res["mAP"] == 0.0
    assert res["per_class"]["car"]["ap"] == 0.0


# ---- detections on disk (COCO results JSON) mapped onto a dataset ----

from lib.dataset import DetectionDataset  # noqa: E402
from lib.eval import DetectionsFormatError, evaluate, read_detections, write_detections  # noqa: E402


def _dataset():
    recs = [Record(image="/data/set/images/a/0001.jpg", width=100, height=100, image_id="a/0001",
                   boxes=[[0, 0, 10, 10]], labels=[0]),
            Record(image="/data/set/images/b/0001.jpg", width=100, height=100, image_id="b/0001"),
            Record(image="/data/set/images/b/0002.jpg", width=100, height=100, image_id="000042",
                   boxes=[[5, 5, 50, 60]], labels=[1])]
    return DetectionDataset(recs, ["car", "person"])


def test_write_read_round_trip(tmp_path):
    ds = _dataset()
    dets = [(np.array([[1.5, 2, 11, 12.25]]), np.array([0.75]), np.array([0])),
            (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)),
            (np.array([[5, 5, 50, 60], [0, 0, 1, 1.0]]), np.array([0.5, 0.25]), np.array([1, 0]))]
    path = tmp_path / "dets.json"
    assert write_detections(path, ds, dets) == 3
    entries = json.loads(path.read_text())
    assert entries[0] == {"image_id": "a/0001", "category_id": 1, "category": "car",
                          "bbox": [1.5, 2.0, 9.5, 10.25], "score": 0.75}
    back = read_detections(path, ds)
    for (b0, s0, l0), (b1, s1, l1) in zip(dets, back):
        np.testing.assert_allclose(b1, b0)
        np.testing.assert_allclose(s1, s0)
        assert l1.tolist() == l0.tolist()
    assert evaluate(ds, str(path), "voc")["per_class"]["person"]["ap"] == 1.0


def test_lookup_by_file_name_number_and_category_id(tmp_path):
    ds = _dataset()
    entries = [{"file_name": "a/0001.jpg", "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.1},
               {"file_name": "/data/set/images/b/0002.jpg", "category": "car", "bbox": [0, 0, 1, 1], "score": 0.2},
               {"image_id": 42, "category_name": "person", "bbox": [0, 0, 2, 2], "score": 0.3},
               {"file_name": "0002.jpg", "category_id": 1, "bbox": [0, 0, 3, 3], "score": 0.4}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(entries))
    dets = read_detections(path, ds)
    assert dets[0][2].tolist() == [1]
    assert sorted(dets[2][1].tolist()) == [0.2, 0.3, 0.4]
    # a dataset read from COCO carries its own category ids and COCO image ids
    ds.category_ids = [17, 3]
    ds.coco_image_ids = {"b/0001": 9}
    path.write_text(json.dumps([{"image_id": 9, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}]))
    dets = read_detections(path, ds)
    assert dets[1][2].tolist() == [1]


@pytest.mark.parametrize("entry, message", [
    ({"image_id": "nope", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, "entry 1: image_id 'nope' is not"),
    ({"file_name": "0001.jpg", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, "entry 1: .* ambiguous"),
    ({"image_id": "a/0001", "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}, "entry 1: category_id 0 is unknown"),
    ({"image_id": "a/0001", "category": "dog", "bbox": [0, 0, 1, 1], "score": 1}, "entry 1: category 'dog'"),
    ({"image_id": "a/0001", "category": "car", "bbox": [0, 0, 1], "score": 1}, "entry 1: bbox must be 4"),
    ({"image_id": "a/0001", "category": "car", "bbox": [0, 0, -1, 1], "score": 1}, "entry 1: bbox width"),
    ({"image_id": "a/0001", "category": "car", "bbox": [0, 0, 1, 1]}, "entry 1: score"),
    ({"category": "car", "bbox": [0, 0, 1, 1], "score": 1}, "entry 1: needs an 'image_id' or a 'file_name'"),
])
def test_bad_entries_name_the_index(tmp_path, entry, message):
    good = {"image_id": "a/0001", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, entry]))
    with pytest.raises(DetectionsFormatError, match=message):
        read_detections(path, _dataset())


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"image_id": "a/0001",\n')
    with pytest.raises(DetectionsFormatError, match="broken.json: not valid JSON \\(line 3"):
        read_detections(path, _dataset())
