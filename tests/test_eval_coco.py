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
