"""python -m lib.tools.evaluate end to end: VOC folder vs gluoncv on the raw XML integers, COCO file vs
pycocotools on the same files, VID (synthetic video) with perfect detections; tables and PR plots."""
import contextlib
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from gluoncv.utils.metrics.voc_detection import VOC07MApMetric
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lib.config import PROJECT_ROOT
from lib.eval import format_table, save_pr_curves, voc_ap, write_results_table
from lib.tools import evaluate as tool

CLASSES = ["cat", "dog"]


def _voc_xml(name, objects, width=200, height=150):
    objs = "".join(
        f"<object><name>{cls}</name><difficult>{int(diff)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for cls, b, diff in objects)
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


@pytest.fixture(scope="module")
def voc_case(tmp_path_factory):
    """A small VOC folder (raw 1-based inclusive boxes) and random detections as a COCO results list."""
    root = tmp_path_factory.mktemp("voc")
    (root / "Annotations").mkdir()
    (root / "JPEGImages").mkdir()
    rng = np.random.RandomState(7)
    raw = {}
    for i in range(12):
        name = f"img{i:03d}"
        objects = []
        for _ in range(0 if i == 5 else rng.randint(1, 4)):
            x1, y1 = rng.randint(1, 120), rng.randint(1, 90)
            objects.append((CLASSES[rng.randint(0, 2)], [x1, y1, x1 + rng.randint(10, 70), y1 + rng.randint(10, 55)],
                            rng.rand() < 0.15))
        raw[name] = objects
        (root / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, objects))
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), np.zeros((150, 200, 3), np.uint8))
    dets = []
    for name, objects in raw.items():
        for cls, b, _ in objects:
            for _ in range(rng.randint(0, 3)):
                # continuous box around the object: x1 = xmin - 1, x2 = xmax, jittered
                x1, y1, x2, y2 = np.array([b[0] - 1, b[1] - 1, b[2], b[3]], float) + rng.uniform(-6, 6, 4)
                dets.append({"file_name": f"{name}.jpg", "category": cls if rng.rand() < 0.9 else "dog",
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(rng.rand())})
        for _ in range(rng.randint(0, 2)):
            x, y = rng.uniform(0, 150, 2)
            dets.append({"image_id": name, "category": CLASSES[rng.randint(0, 2)], "bbox": [x, y, 30.0, 20.0],
                         "score": float(rng.rand())})
    dets_path = root / "dets.json"
    dets_path.write_text(json.dumps(dets))
    return root, raw, dets, dets_path


def test_voc07_tool_equals_gluoncv_on_raw_xml(voc_case, tmp_path, capsys):
    root, raw, dets, dets_path = voc_case
    out, plots = tmp_path / "res.json", tmp_path / "plots"
    assert tool.main(["--gt", str(root), "--dets", str(dets_path), "--metric", "voc07", "--out", str(out),
                      "--plots", str(plots), "--md", str(tmp_path / "table.md")]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())

    # oracle: gluoncv on the raw XML integers (it adds +1 itself); detections shifted the same way
    metric = VOC07MApMetric(iou_thresh=0.5, class_names=CLASSES)
    for name, objects in raw.items():
        gt = np.array([b for _, b, _ in objects], float).reshape(-1, 4)
        gl = np.array([CLASSES.index(c) for c, _, _ in objects], float)
        gd = np.array([d for _, _, d in objects], float)
        mine = [d for d in dets if d.get("file_name", "") == f"{name}.jpg" or d.get("image_id") == name]
        pb = np.array([[d["bbox"][0] + 1, d["bbox"][1] + 1, d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                       for d in mine]).reshape(-1, 4)
        metric.update(pb[None], np.array([CLASSES.index(d["category"]) for d in mine], float)[None],
                      np.array([d["score"] for d in mine])[None], gt[None], gl[None], gd[None])
    names, values = metric.get()
    ref = dict(zip(names, values))
    assert res["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    for c in CLASSES:
        assert res["per_class"][c]["ap"] == pytest.approx(ref[c], abs=1e-6)
    assert 0.05 < res["mAP"] < 0.95
    assert res["metric"] == "voc07" and res["gt"]["images"] == 12 and res["dets"]["count"] == len(dets)
    assert "curves" not in res
    assert "| cat |" in printed and f"{100 * res['mAP']:.2f}" in printed
    assert (tmp_path / "table.md").read_text().startswith("## voc07 results")
    for png in ["pr_cat.png", "pr_dog.png", "pr_all.png"]:
        img = cv2.imread(str(plots / png))
        assert img is not None and img.shape[0] > 100


def test_max_height_scores_small_objects_like_gluoncv_with_tall_boxes_difficult(voc_case, tmp_path):
    root, raw, dets, dets_path = voc_case
    out = tmp_path / "small.json"
    assert tool.main(["--gt", str(root), "--dets", str(dets_path), "--metric", "voc07", "--max-height", "30",
                      "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    metric = VOC07MApMetric(iou_thresh=0.5, class_names=CLASSES)
    for name, objects in raw.items():
        gt = np.array([b for _, b, _ in objects], float).reshape(-1, 4)
        gl = np.array([CLASSES.index(c) for c, _, _ in objects], float)
        # raw VOC boxes are 1-based inclusive: the height is ymax - ymin + 1 pixels
        gd = np.array([d or (b[3] - b[1] + 1) >= 30 for _, b, d in objects], float)
        mine = [d for d in dets if d.get("file_name", "") == f"{name}.jpg" or d.get("image_id") == name]
        pb = np.array([[d["bbox"][0] + 1, d["bbox"][1] + 1, d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                       for d in mine]).reshape(-1, 4)
        metric.update(pb[None], np.array([CLASSES.index(d["category"]) for d in mine], float)[None],
                      np.array([d["score"] for d in mine])[None], gt[None], gl[None], gd[None])
    ref = dict(zip(*metric.get()))
    assert res["mAP"] == pytest.approx(ref["mAP"], abs=1e-6) and res["max_height"] == 30
    everything = tmp_path / "all.json"
    tool.main(["--gt", str(root), "--dets", str(dets_path), "--metric", "voc07", "--out", str(everything)])
    assert json.loads(everything.read_text())["mAP"] != pytest.approx(res["mAP"], abs=1e-3)  # tall boxes count there

def test_max_height_with_coco_is_a_clear_error(voc_case, capsys):
    root, _, _, dets_path = voc_case
    assert tool.main(["--gt", str(root), "--dets", str(dets_path), "--metric", "coco", "--max-height", "30"]) == 2
    assert "--max-height applies to the voc" in capsys.readouterr().err


def test_unknown_image_is_a_clear_error(voc_case, tmp_path, capsys):
    root = voc_case[0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": "img000", "category": "cat", "bbox": [0, 0, 5, 5], "score": 1},
                               {"image_id": "missing", "category": "cat", "bbox": [0, 0, 5, 5], "score": 1}]))
    assert tool.main(["--gt", str(root), "--dets", str(bad), "--metric", "voc"]) == 2
    assert "entry 1: image_id 'missing' is not in the dataset" in capsys.readouterr().err


def test_coco_tool_equals_pycocotools_on_files(tmp_path):
    rng = np.random.RandomState(3)
    gt = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]}
    results = []
    for i in range(10):
        gt["images"].append({"id": 100 + i, "file_name": f"{i}.jpg", "width": 300, "height": 300})
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.zeros((8, 8, 3), np.uint8))
        for _ in range(rng.randint(0, 4)):
            x, y, w, h = [float(v) for v in rng.randint(0, 150, 2)] + [float(v) for v in rng.randint(8, 140, 2)]
            cat = int(rng.choice([5, 9]))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": 100 + i, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(rng.randint(0, 3)):
                j = rng.uniform(-0.2, 0.2, 4) * [w, h, w, h]
                results.append({"image_id": 100 + i, "category_id": cat if rng.rand() < 0.9 else 14 - cat,
                                "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]], "score": float(rng.rand())})
    gt_path, dets_path, out = tmp_path / "gt.json", tmp_path / "dets.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(results))
    tool.main(["--gt", str(gt_path), "--set", f"IMAGES_DIR={tmp_path}", "--dets", str(dets_path),
               "--metric", "coco", "--out", str(out)])
    res = json.loads(out.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(dets_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert res["mAP"] == pytest.approx(ev.stats[0], abs=1e-5)
    ours = [v if v is not None else -1 for v in res["stats"].values()]
    np.testing.assert_allclose(ours, ev.stats, atol=1e-5)


def test_vid_tool_perfect_and_missing_class(tmp_path):
    from lib.dataset import load_dataset
    from lib.dataset.synthetic import generate_video_dataset
    from lib.eval import write_detections

    root = tmp_path / "synth"
    generate_video_dataset(str(root), seed=3, num_videos=2, num_frames=24, width=160, height=120,
                           num_classes=3, max_objects=3, load=False)
    spec = {"FORMAT": "vid", "ROOT": str(root), "SPLIT": "train", "KIND": "vid", "CLASSES": str(root / "classes.txt")}
    ds = load_dataset(spec)
    present = sorted({int(l) for r in ds for l in r.labels})
    assert len(present) >= 2
    dropped = present[0]
    dets = [(r.boxes, np.linspace(1, 0.5, r.num_boxes), r.labels) for r in ds]
    dets = [(b[l != dropped], s[l != dropped], l[l != dropped]) for b, s, l in dets]
    dets_path, out = tmp_path / "dets.json", tmp_path / "res.json"
    write_detections(dets_path, ds, dets)
    tool.main(["--gt", str(root), "--format", "vid", "--split", "train", "--set", "KIND=vid",
               "--classes", str(root / "classes.txt"), "--dets", str(dets_path), "--metric", "vid", "--out", str(out)])
    res = json.loads(out.read_text())
    # a detector that returns the gt boxes: AP 1 for the detected classes, 0 for the dropped one
    for c, name in enumerate(ds.classes):
        expected = None if c not in present else (0.0 if c == dropped else 1.0)
        assert res["per_class"][name]["ap"] == expected
    assert res["mAP"] == pytest.approx((len(present) - 1) / len(present))
    assert set(res["motion"]) == {"slow", "medium", "fast"} and set(res["area"]) == {"small", "medium", "large"}
    total = sum(r.num_boxes for r in ds)
    assert sum(v["num_gt"] for v in res["area"].values()) >= total  # ranges share their bounds
    for group in ("motion", "area"):
        for v in res[group].values():
            if v["num_gt"]:
                aps = [a for a in v["per_class"].values() if a is not None]
                assert v["mAP"] == pytest.approx(np.mean(aps))


def test_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "lib.tools.evaluate", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert "--metric" in out.stdout and "voc07" in out.stdout


def test_table_and_plots_from_results(tmp_path):
    from lib.dataset import Record
    recs = [Record(image="/a.jpg", width=50, height=50, boxes=[[0, 0, 10, 10], [20, 20, 30, 30]], labels=[0, 1])]
    dets = [(np.array([[0, 0, 10, 10], [21, 21, 30, 30], [40, 40, 45, 45.0]]), np.array([0.9, 0.8, 0.7]),
             np.array([0, 1, 1]))]
    res = voc_ap(recs, dets, ["a", "b/c"])
    text = format_table(res)
    assert "| a | 100.00 | 1 | 1 |" in text and "| b/c | 100.00 | 1 | 2 |" in text
    md = write_results_table(res, md_path=str(tmp_path / "t.md"), json_path=str(tmp_path / "t.json"),
                             include_curves=True)
    assert md == text
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["curves"]["b/c"]["precision"] == [1.0, 0.5]
    paths = save_pr_curves(res, str(tmp_path / "pr"))
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == ["pr_a.png", "pr_all.png", "pr_b_c.png"]


def test_evaluate_dispatch_and_unknown_metric():
    from lib.dataset import DetectionDataset, Record
    from lib.eval import evaluate
    ds = DetectionDataset([Record(image="/a.jpg", width=50, height=50, boxes=[[0, 0, 10, 10]], labels=[0])], ["a"])
    dets = [(np.array([[0, 0, 10, 6.0]]), np.array([0.9]), np.array([0]))]  # IoU 0.6
    assert evaluate(ds, dets, "voc")["mAP"] == 1.0
    assert evaluate(ds, dets, "voc07", iou=0.7)["mAP"] == 0.0
    assert evaluate(ds, dets, "vid")["mAP"] == 1.0
    assert evaluate(ds, dets, "coco")["stats"]["AP50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown metric 'map'"):
        evaluate(ds, dets, "map")


SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")


def test_speedtrap_voc_and_voc07_equal_gluoncv_on_raw_xml(tmp_path):
    """Real data (plain folder of XMLs, small objects): the tool on the test split vs gluoncv fed the
    raw XML integers, parsed here with ElementTree."""
    import xml.etree.ElementTree as ET
    from gluoncv.utils.metrics.voc_detection import VOCMApMetric

    names = [n.strip() for n in open(os.path.join(SPEEDTRAP, "splits", "test_bg.txt")) if n.strip()]
    rng = np.random.RandomState(11)
    raw, dets = {}, []
    for name in names:
        root = ET.parse(os.path.join(SPEEDTRAP, "annotations", name + ".xml")).getroot()
        boxes = [[int(float(o.find("bndbox").find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in root.findall("object")]
        raw[name] = np.array(boxes, float).reshape(-1, 4)
        for b in raw[name]:
            for _ in range(rng.randint(0, 3)):
                x1, y1, x2, y2 = np.array([b[0] - 1, b[1] - 1, b[2], b[3]]) + \
                    rng.uniform(-0.2, 0.2, 4) * np.tile(b[2:] - b[:2] + 1, 2)
                dets.append({"file_name": name + ".jpg", "category": "radar", "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "score": float(rng.rand())})
        x, y = rng.uniform(0, 1200, 2)
        dets.append({"image_id": name, "category_id": 1, "bbox": [x, y, 40.0, 60.0], "score": float(rng.rand())})
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(dets))
    for metric_name, metric_cls in (("voc07", VOC07MApMetric), ("voc", VOCMApMetric)):
        out = tmp_path / f"{metric_name}.json"
        tool.main(["--gt", SPEEDTRAP, "--split", "test_bg", "--format", "voc", "--dets", str(dets_path),
                   "--metric", metric_name, "--out", str(out)])
        res = json.loads(out.read_text())
        metric = metric_cls(iou_thresh=0.5, class_names=["radar"])
        for name in names:
            mine = [d for d in dets if d.get("file_name") == name + ".jpg" or d.get("image_id") == name]
            pb = np.array([[d["bbox"][0] + 1, d["bbox"][1] + 1, d["bbox"][0] + d["bbox"][2],
                            d["bbox"][1] + d["bbox"][3]] for d in mine]).reshape(-1, 4)
            metric.update(pb[None], np.zeros((1, len(mine))), np.array([d["score"] for d in mine])[None],
                          raw[name][None], np.zeros((1, len(raw[name]))))
        ref = dict(zip(*metric.get()))
        assert res["gt"]["images"] == len(names) == 99
        assert res["per_class"]["radar"]["num_gt"] == sum(len(b) for b in raw.values())
        assert res["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
        assert 0.1 < res["mAP"] < 0.9
