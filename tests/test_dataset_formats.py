"""Dataset formats: speedtrap counts, bad-input reports, label maps, round trips, RecordIO, TFRecord.

Oracles: the speedtrap README's table; pycocotools' own COCO index; gluoncv's RecordFileDetection;
TFRecords written by the `tfrecord` package's writer; hand-written files."""
import json
import os

import cv2
import numpy as np
import pytest

import lib.dataset as D
from lib.config import PROJECT_ROOT
from lib.dataset import DatasetError, Record, DetectionDataset

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")


def _image(path, w=64, h=48, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _box_set(dataset):
    """Per record, in dataset order: sorted (class name, rounded box) pairs (writers keep the order)."""
    return [sorted((dataset.classes[int(l)], tuple(np.round(b.astype(np.float64), 3)))
                   for b, l in zip(r.boxes, r.labels)) for r in dataset]


# ---------------------------------------------------------------- speedtrap (real data)

def test_speedtrap_counts_and_snippets():
    ds = D.load_dataset({"FORMAT": "voc", "ROOT": SPEEDTRAP, "SNIPPETS": D.SPEEDTRAP_SNIPPETS})
    assert len(ds) == 491
    assert sum(r.num_boxes for r in ds) == 389
    assert ds.classes == ["radar"]
    assert sum(r.num_boxes == 0 for r in ds) == 102
    assert ds.report.ok
    fg = [s for s in ds.snippet_list if not s.background]
    bg = [s for s in ds.snippet_list if s.background]
    # the README's table: 7 approaches; frames 51 and 248 (no box) stay with their approach
    assert [(s.first, s.last) for s in fg] == [(0, 51), (53, 90), (92, 138), (144, 186), (187, 248),
                                              (249, 305), (306, 399)]
    assert [(s.first, s.last) for s in bg] == [(400, 410), (497, 518), (645, 699), (811, 822)]
    assert sum(len(s.frames) for s in bg) == 100
    # frame index inside each snippet is 0..n-1 in frame order
    for name, recs in ds.snippets().items():
        assert [r.frame for r in recs] == list(range(len(recs)))
        nums = [D.frame_number(r.image) for r in recs]
        assert nums == sorted(nums)


def test_speedtrap_splits_keep_snippets_of_the_whole_folder():
    train = D.load_voc(SPEEDTRAP, split="train", snippets=D.SPEEDTRAP_SNIPPETS)
    test = D.load_voc(SPEEDTRAP, split="test", snippets=D.SPEEDTRAP_SNIPPETS)
    assert (len(train), len(test)) == (312, 79)
    full = D.load_voc(SPEEDTRAP, snippets=D.SPEEDTRAP_SNIPPETS)
    where = {r.image_id: (r.video, r.frame) for r in full}
    for r in list(train) + list(test):
        assert (r.video, r.frame) == where[r.image_id]
    assert [i["name"] for i in D.read_label_map(os.path.join(SPEEDTRAP, "label_map.pbtxt"))] == ["radar"]


def test_speedtrap_voc_box_convention():
    # frame10.xml: xmin 555 ymin 466 xmax 575 ymax 517 (1-based inclusive) -> [554, 465, 575, 517]
    ds = D.load_voc(SPEEDTRAP, split=[os.path.join(SPEEDTRAP, "splits", "train.txt")])
    rec = next(r for r in ds if r.image_id == "images/frame10")
    np.testing.assert_array_equal(rec.boxes, [[554, 465, 575, 517]])
    assert (rec.width, rec.height) == (1280, 720)
    # README: "boxes from 8x16 to 192x338 px", measured as xmax - xmin (our widths count xmax - xmin + 1)
    full = D.load_voc(SPEEDTRAP)
    b = np.concatenate([r.boxes for r in full])
    w, h = b[:, 2] - b[:, 0] - 1, b[:, 3] - b[:, 1] - 1
    assert (w.min(), h.min(), w.max(), h.max()) == (8, 16, 192, 338)


# ---------------------------------------------------------------- label maps and classes files

def test_label_map_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "lm.pbtxt")
    D.write_label_map(path, ["car", "it's", "person"])
    items = D.read_label_map(path)
    assert [(i["id"], i["name"]) for i in items] == [(1, "car"), (2, "it's"), (3, "person")]
    (tmp_path / "dup.pbtxt").write_text("item {\n id: 1\n name: 'a'\n}\n# comment\nitem {\n id: 1\n name: 'b'\n}\n")
    with pytest.raises(DatasetError, match=r"dup.pbtxt:6: duplicate id 1"):
        D.read_label_map(str(tmp_path / "dup.pbtxt"))
    (tmp_path / "zero.pbtxt").write_text('item { id: 0 name: "bg" }')
    with pytest.raises(DatasetError, match="id 0 < 1"):
        D.read_label_map(str(tmp_path / "zero.pbtxt"))
    (tmp_path / "open.pbtxt").write_text('item {\n id: 2\n name: "x"\n')
    with pytest.raises(DatasetError, match="not closed"):
        D.read_label_map(str(tmp_path / "open.pbtxt"))
    # unsorted ids: classes follow ascending id
    (tmp_path / "order.pbtxt").write_text('item { name: "b" id: 5 display_name: "B" }\nitem { id: 2 name: "a" }')
    assert D.load_classes_file(str(tmp_path / "order.pbtxt")) == ["a", "b"]


def test_classes_csv_errors_name_the_line(tmp_path):
    p = tmp_path / "classes.csv"
    p.write_text("cat,0\ndog,1\ncat,2\n")
    with pytest.raises(DatasetError, match=r"classes.csv:3: duplicate class name 'cat'"):
        D.read_classes_csv(str(p))
    p.write_text("cat,0\ndog,x\n")
    with pytest.raises(DatasetError, match=r"classes.csv:2: class id 'x'"):
        D.read_classes_csv(str(p))
    p.write_text("dog,1\ncat,0\n")
    assert D.read_classes_csv(str(p)) == ["cat", "dog"]


# ---------------------------------------------------------------- CSV (keras-retinanet)

def _csv_fixture(tmp_path):
    _image(str(tmp_path / "img" / "a.jpg"), 64, 48, 1)
    _image(str(tmp_path / "img" / "b.jpg"), 64, 48, 2)
    _image(str(tmp_path / "img" / "neg.jpg"), 64, 48, 3)
    (tmp_path / "classes.csv").write_text("cat,0\ndog,1\n")
    (tmp_path / "ann.csv").write_text(
        "img/a.jpg,1,2,30,40,cat\n"
        "img/a.jpg,10.5,5.25,20.75,15,dog\n"
        "img/b.jpg,30,10,20,40,cat\n"        # line 3: x2 <= x1
        "img/b.jpg,5,5,25,25,horse\n"        # line 4: unknown class
        "img/b.jpg,5,5,25\n"                 # line 5: wrong field count
        "img/b.jpg,40,30,80,60,dog\n"        # line 6: sticks out of the 64x48 image -> clipped
        "img/neg.jpg,,,,,\n"
        "img/missing.jpg,1,1,5,5,cat\n")     # line 8: image not found
    return str(tmp_path / "ann.csv"), str(tmp_path / "classes.csv")


def test_csv_reader_reports_and_skips(tmp_path, caplog):
    ann, classes = _csv_fixture(tmp_path)
    ds = D.load_csv(ann, classes)
    assert ds.classes == ["cat", "dog"]
    by_id = {r.image_id: r for r in ds}
    assert sorted(by_id) == ["img/a", "img/b", "img/neg"]
    np.testing.assert_allclose(by_id["img/a"].boxes, [[1, 2, 30, 40], [10.5, 5.25, 20.75, 15]])
    np.testing.assert_array_equal(by_id["img/a"].labels, [0, 1])
    np.testing.assert_allclose(by_id["img/b"].boxes, [[40, 30, 64, 48]])
    assert by_id["img/neg"].num_boxes == 0
    msgs = [(i["line"], i["message"]) for i in ds.report.issues]
    assert any(line == 3 and "x2 <= x1" in m for line, m in msgs)
    assert any(line == 4 and "unknown class 'horse'" in m for line, m in msgs)
    assert any(line == 5 and "expected 6 fields" in m for line, m in msgs)
    assert any(line == 6 and "clipped" in m for line, m in msgs)
    assert any(line == 8 and "not found" in m for line, m in msgs)
    assert ds.report.skipped_images == 1 and ds.report.dropped_boxes == 4 and ds.report.clipped_boxes == 1
    assert "ann.csv:3" in caplog.text
    with pytest.raises(DatasetError, match=r"ann.csv:3: .*x2 <= x1"):
        D.load_csv(ann, classes, strict=True)


# ---------------------------------------------------------------- VOC bad input

def test_voc_bad_input(tmp_path):
    root = tmp_path / "voc"
    _image(str(root / "JPEGImages" / "good.jpg"), 50, 40)
    (root / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8not a jpeg")
    ann = root / "Annotations"
    ann.mkdir(parents=True)
    obj = "<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin>" \
          "<xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"
    (ann / "good.xml").write_text("<annotation><filename>good.jpg</filename><size><width>50</width>"
                                  "<height>40</height></size>" + obj.format("a", 0, 1, 1, 10, 10)
                                  + obj.format("b", 1, 5, 5, 20, 30) + obj.format("zebra", 0, 1, 1, 5, 5)
                                  + obj.format("a", 0, 60, 50, 70, 60) + "</annotation>")
    (ann / "broken.xml").write_text("<annotation><filename>good.jpg</filename>\n<size>\n</annotation>")
    (ann / "corrupt.xml").write_text("<annotation><filename>corrupt.jpg</filename></annotation>")
    (ann / "noimage.xml").write_text("<annotation><filename>nothere.jpg</filename></annotation>")
    (ann / "empty.xml").write_text("")
    ds = D.load_voc(str(root), classes=["a", "b"], check_images="decode")
    assert [r.image_id for r in ds] == ["JPEGImages/good"]
    rec = ds[0]
    np.testing.assert_array_equal(rec.boxes, [[0, 0, 10, 10], [4, 4, 20, 30]])
    np.testing.assert_array_equal(rec.difficult, [False, True])
    text = " | ".join(f"{i['file']}:{i['line']}: {i['message']}" for i in ds.report.issues)
    assert "broken.xml" in text and "malformed XML" in text
    assert "corrupt.xml" in text and "cannot decode" in text
    assert "noimage.xml" in text and "not found" in text
    assert "empty.xml" in text and "empty annotation" in text
    assert "unknown class 'zebra'" in text and "outside the 50x40 image" in text
    assert ds.report.skipped_images == 4 and ds.report.dropped_boxes == 2
    with pytest.raises(DatasetError, match="broken.xml"):
        D.load_voc(str(root), classes=["a", "b"], strict=True)


# ---------------------------------------------------------------- COCO, KITTI, OID

def test_coco_reader_matches_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    for k in range(3):
        _image(str(tmp_path / "images" / f"{k}.jpg"), 80, 60, k)
    data = {"images": [{"id": 10 + k, "file_name": f"{k}.jpg", "width": 80, "height": 60} for k in range(3)],
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
            "annotations": [
                {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1.5, 2, 10, 20], "iscrowd": 0, "area": 200},
                {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 10, 5, 5], "iscrowd": 1, "area": 25},
                {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 80, 60], "iscrowd": 0, "area": 4800},
                {"id": 4, "image_id": 11, "category_id": 99, "bbox": [0, 0, 8, 6], "iscrowd": 0, "area": 48}]}
    path = str(tmp_path / "ann.json")
    with open(path, "w") as f:
        json.dump(data, f)
    ds = D.load_coco(path)
    coco = COCO(path)
    assert ds.classes == [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))]
    assert ds.category_ids == [3, 7]
    for rec in ds:
        iid = ds.coco_image_ids[rec.image_id]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[iid])) if a["category_id"] in (3, 7)]
        expect = sorted((a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
                        for a in anns)
        assert sorted(map(tuple, rec.boxes.tolist())) == expect
    assert ds.report.dropped_boxes == 1 and "unknown category_id 99" in ds.report.issues[0]["message"]
    assert ds[0].difficult.tolist() == [False, True]  # iscrowd
    # writing back gives pycocotools the same boxes
    out = str(tmp_path / "out.json")
    D.write_coco(ds, out)
    again = COCO(out)
    assert len(again.getAnnIds()) == 3
    (tmp_path / "bad.json").write_text('{"images": [\n{"id": 1,,}]}')
    with pytest.raises(DatasetError, match=r"bad.json:2: malformed JSON"):
        D.load_coco(str(tmp_path / "bad.json"))


def test_kitti_reader(tmp_path):
    _image(str(tmp_path / "training" / "image_2" / "000001.png"), 100, 50)
    (tmp_path / "training" / "label_2").mkdir(parents=True)
    (tmp_path / "training" / "label_2" / "000001.txt").write_text(
        "Car 0.00 0 -1.5 10.5 5.0 40.25 30.0 1.5 1.6 3.9 1.0 1.5 20.0 -1.6\n"
        "DontCare -1 -1 -10 50 5 60 20 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "Pedestrian 0.00 0 0.2 60 10 70 45 1.7 0.6 0.8 2.0 1.6 10.0 0.1\n"
        "Car 0.00 0 0.2 60 10\n")
    ds = D.load_kitti(str(tmp_path))
    np.testing.assert_allclose(ds[0].boxes, [[10.5, 5, 40.25, 30], [60, 10, 70, 45]])
    assert [ds.classes[i] for i in ds[0].labels] == ["Car", "Pedestrian"]
    assert ds.report.issues[0]["line"] == 4


def test_oid_reader(tmp_path):
    _image(str(tmp_path / "images" / "abc.jpg"), 100, 50)
    (tmp_path / "desc.csv").write_text("/m/01,Cat\n/m/02,Dog\n")
    (tmp_path / "boxes.csv").write_text(
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
        "abc,xclick,/m/01,1,0.1,0.5,0.2,0.6,0,0,0,0,0\n"
        "abc,xclick,/m/02,1,0.0,1.0,0.0,1.0,0,0,1,0,0\n"
        "abc,xclick,/m/09,1,0.0,1.0,0.0,1.0,0,0,0,0,0\n")
    ds = D.load_oid(str(tmp_path / "boxes.csv"), str(tmp_path / "desc.csv"), str(tmp_path / "images"))
    np.testing.assert_allclose(ds[0].boxes, [[10, 10, 50, 30], [0, 0, 100, 50]], atol=1e-4)
    assert ds[0].difficult.tolist() == [False, True]
    assert ds.report.issues[0]["line"] == 4
    only_dog = D.load_oid(str(tmp_path / "boxes.csv"), str(tmp_path / "desc.csv"), str(tmp_path / "images"),
                          labels_filter=["Dog"])
    assert only_dog.classes == ["Dog"] and only_dog[0].num_boxes == 1


# ---------------------------------------------------------------- round trips and binary records

@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from lib.dataset.synthetic import generate_video_dataset
    root = str(tmp_path_factory.mktemp("synth"))
    ds = generate_video_dataset(root, seed=7, num_videos=2, num_frames=6, width=96, height=64)
    # add a float box and a difficult box so every format has to carry them
    r = ds.records[0]
    ds.records[0] = Record(r.image, r.width, r.height, np.vstack([r.boxes, [[3.25, 4.5, 20.75, 30.125]]]),
                           np.append(r.labels, 1), np.append(r.difficult, True), np.append(r.track_ids, 9),
                           r.video, r.frame, r.image_id)
    last = ds.records[-1]  # and an image without objects
    ds.records[-1] = Record(last.image, last.width, last.height, video=last.video, frame=last.frame,
                            image_id=last.image_id)
    return ds


def test_round_trip_voc_coco_csv_recordio(small_dataset, tmp_path):
    ds = small_dataset
    assert sum(r.num_boxes for r in ds) > 5
    original = _box_set(ds)
    D.write_voc(ds, str(tmp_path / "voc"), split="all")
    voc = D.load_voc(str(tmp_path / "voc"), split="all", classes=ds.classes)
    assert _box_set(voc) == original and voc.report.ok
    assert sorted(r.difficult.sum() for r in voc) == sorted(r.difficult.sum() for r in ds)
    D.write_coco(voc, str(tmp_path / "coco" / "ann.json"))
    coco = D.load_coco(str(tmp_path / "coco" / "ann.json"))
    assert _box_set(coco) == original
    D.write_csv(coco, str(tmp_path / "csv" / "ann.csv"), str(tmp_path / "csv" / "classes.csv"))
    csv_ds = D.load_csv(str(tmp_path / "csv" / "ann.csv"), str(tmp_path / "csv" / "classes.csv"))
    assert _box_set(csv_ds) == original and len(csv_ds) == len(ds)  # negatives kept via path,,,,,
    D.pack_records(csv_ds, str(tmp_path / "rec" / "data"))
    rec = D.load_recordio(str(tmp_path / "rec" / "data"))
    assert len(rec) == len(ds) and rec.classes == ds.classes
    for a, b in zip(csv_ds, rec):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(D.read_image(rec[0].image), D.read_image(csv_ds[0].image))


def test_recordio_is_read_by_gluoncv(small_dataset, tmp_path):
    from gluoncv.data import RecordFileDetection
    prefix = str(tmp_path / "det")
    assert D.pack_records(small_dataset, prefix) == len(small_dataset)
    gcv = RecordFileDetection(prefix + ".rec", coord_normalized=True)
    assert len(gcv) == len(small_dataset)
    for k, rec in enumerate(small_dataset):
        img, label = gcv[k]
        assert img.shape == (rec.height, rec.width, 3)
        if rec.num_boxes:
            np.testing.assert_allclose(label[:, :4], rec.boxes, atol=1e-3)
            np.testing.assert_array_equal(label[:, 4], rec.labels)
            np.testing.assert_array_equal(label[:, 5], rec.difficult)
        else:  # one padding row of class -1
            assert label.shape == (1, 6) and label[0, 4] == -1
    lst = open(prefix + ".lst").read().splitlines()
    assert len(lst) == len(small_dataset) and lst[0].split("\t")[-1] == small_dataset[0].image


def test_tfrecord_import(tmp_path):
    from tfrecord.writer import TFRecordWriter
    paths = [_image(str(tmp_path / "src" / f"im{k}.jpg"), 80, 40, k) for k in range(2)]
    path = str(tmp_path / "train.record")
    w = TFRecordWriter(path)
    w.write({"image/encoded": (open(paths[0], "rb").read(), "byte"), "image/format": (b"jpeg", "byte"),
             "image/filename": (b"im0.jpg", "byte"), "image/width": (80, "int"), "image/height": (40, "int"),
             "image/object/bbox/xmin": ([0.1, 0.5], "float"), "image/object/bbox/xmax": ([0.3, 1.0], "float"),
             "image/object/bbox/ymin": ([0.25, 0.0], "float"), "image/object/bbox/ymax": ([0.75, 0.5], "float"),
             "image/object/class/label": ([2, 1], "int"), "image/object/class/text": ([b"dog", b"cat"], "byte")})
    w.write({"image/encoded": (open(paths[1], "rb").read(), "byte"), "image/format": (b"jpeg", "byte"),
             "image/filename": (b"im1.jpg", "byte"), "image/width": (80, "int"), "image/height": (40, "int"),
             "image/object/bbox/xmin": ([], "float"), "image/object/bbox/xmax": ([], "float"),
             "image/object/bbox/ymin": ([], "float"), "image/object/bbox/ymax": ([], "float"),
             "image/object/class/label": ([], "int")})
    w.write({"image/encoded": (b"garbage", "byte"), "image/filename": (b"bad.jpg", "byte")})
    w.close()
    lm = str(tmp_path / "lm.pbtxt")
    D.write_label_map(lm, ["cat", "dog"])
    ds = D.import_tfrecord(path, str(tmp_path / "out"), label_map=lm)
    assert ds.classes == ["cat", "dog"] and len(ds) == 2
    np.testing.assert_allclose(ds[0].boxes, [[8, 10, 24, 30], [40, 0, 80, 20]], atol=1e-4)
    np.testing.assert_array_equal(ds[0].labels, [1, 0])
    assert ds[1].num_boxes == 0
    assert open(ds[0].image, "rb").read() == open(paths[0], "rb").read()
    assert ds.report.skipped_images == 1 and "cannot decode" in ds.report.issues[0]["message"]
    # without a label map the names come from class/text; our exporter reads back the same
    ds2 = D.import_tfrecord(path, str(tmp_path / "out2"))
    assert ds2.classes == ["cat", "dog"]
    D.export_tfrecord(ds, str(tmp_path / "again.record"))
    ds3 = D.import_tfrecord(str(tmp_path / "again.record"), str(tmp_path / "out3"), label_map=lm)
    assert _box_set(ds3) == _box_set(ds)


def test_load_dataset_keys(tmp_path):
    with pytest.raises(DatasetError, match="FORMAT must be one of"):
        D.load_dataset({"FORMAT": "yolo"})
    with pytest.raises(DatasetError, match=r"unknown key\(s\) \['ANOTATIONS'\]"):
        D.load_dataset({"FORMAT": "coco", "ANOTATIONS": "x.json"})
    with pytest.raises(DatasetError, match=r"needs key\(s\) \['ROOT'\]"):
        D.load_dataset({"format": "voc"})
    ds = D.load_dataset({"FORMAT": "synthetic", "ROOT": str(tmp_path / "s"), "NUM_VIDEOS": 1, "NUM_FRAMES": 3,
                         "WIDTH": 64, "HEIGHT": 48})
    from lib.dataset.synthetic import SYNTHETIC_CLASSES
    assert len(ds) == 3 and ds.classes == SYNTHETIC_CLASSES


def test_dataset_report_and_subset_metadata(tmp_path):
    plain = DetectionDataset([Record("/x/a.jpg", 4, 4)], ["a"])
    assert plain.report.ok and plain.report.summary().startswith("dataset: 0 problem(s)")
    ds = D.load_voc(SPEEDTRAP, snippets=D.SPEEDTRAP_SNIPPETS)
    sub = ds.subset(range(10), name="first10")
    assert len(sub) == 10 and sub.name == "first10" and sub.report is ds.report
    assert sub.snippet_list is ds.snippet_list
    # JSON cache round trip (never pickle)
    path = str(tmp_path / "cache.json")
    sub.to_json(path)
    back = DetectionDataset.from_json(path)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in sub]
    # VOC export keeps file stems when they are unique (frame10.xml stays frame10.xml)
    D.write_voc(sub, str(tmp_path / "voc"), split="first10", images="reference")
    again = D.load_voc(str(tmp_path / "voc"), split="first10")
    assert [os.path.basename(r.image_id) for r in again] == [os.path.basename(r.image_id) for r in sub]
    assert [r.image for r in again] == [r.image for r in sub]  # found through <path>


def test_tfrecord_truncated_file_is_reported(tmp_path):
    from tfrecord.writer import TFRecordWriter
    img = _image(str(tmp_path / "a.jpg"), 40, 30)
    path = str(tmp_path / "t.record")
    w = TFRecordWriter(path)
    for k in range(3):
        w.write({"image/encoded": (open(img, "rb").read(), "byte"), "image/filename": (f"a{k}.jpg".encode(), "byte"),
                 "image/object/bbox/xmin": ([0.0], "float"), "image/object/bbox/xmax": ([0.5], "float"),
                 "image/object/bbox/ymin": ([0.0], "float"), "image/object/bbox/ymax": ([0.5], "float"),
                 "image/object/class/label": ([1], "int"), "image/object/class/text": ([b"obj"], "byte")})
    w.close()
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) - 40])  # cut into the last record
    ds = D.import_tfrecord(path, str(tmp_path / "out"))
    assert len(ds) == 2 and ds.classes == ["obj"]
    assert ds.report.skipped_images == 1 and "record #2" in ds.report.issues[0]["message"]
    with pytest.raises(DatasetError, match="record #2"):
        D.import_tfrecord(path, str(tmp_path / "out2"), strict=True)


def test_read_image_ignores_exif_rotation_like_the_header_size(tmp_path):
    from PIL import Image
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90": a plain cv2.imread would return 40x20
    path = str(tmp_path / "rot.jpg")
    img.save(path, exif=exif)
    assert cv2.imread(path).shape[:2] == (40, 20)
    assert D.read_image(path).shape == (20, 40, 3) and D.image_size(path) == (40, 20)
    with pytest.raises(D.ImageReadError, match="rot2.jpg: image file not found"):
        D.read_image(str(tmp_path / "rot2.jpg"))


def test_spread_picks_evenly_first_and_last_included():
    ds = DetectionDataset([Record(f"{i}.jpg", 64, 48) for i in range(10)], ["a"])
    assert [r.image_id for r in ds.spread(4)] == ["0", "3", "6", "9"]   # linspace(0, 9, 4) = 0, 3, 6, 9
    assert [r.image_id for r in ds.spread(3)] == ["0", "4", "9"]        # 4.5 rounds to even
    assert len(ds.spread(25)) == 10 and ds.spread(0) == []
    assert D.spread_indices(0, 3) == [] and D.spread_indices(1, 3) == [0] and D.spread_indices(5, 2) == [0, 4]
