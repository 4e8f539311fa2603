"""The data command-line tools, run as `python -m lib.tools.<name>` would run them (through main())."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import lib.dataset as D
from lib import anchor_coverage, viz
from lib.config import PROJECT_ROOT
from lib.dataset.synthetic import generate_video_dataset
from lib.tools import check_dataset, convert, draw, extract_frames, pack_records, split

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")
TOOLS = ["extract_frames", "check_dataset", "split", "convert", "draw", "pack_records"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help(tool):
    out = subprocess.run([sys.executable, "-m", f"lib.tools.{tool}", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "usage: python -m lib.tools." + tool in out.stdout


def test_extract_frames_tool(tmp_path, capsys):
    path = str(tmp_path / "v.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 24))
    for k in range(30):
        w.write(np.full((24, 32, 3), 8 * k, np.uint8))
    w.release()
    assert extract_frames.main([path, str(tmp_path / "out"), "--every", "4", "--start", "0.5", "--end", "1.2"]) == 0
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [f"{k:06d}.jpg" for k in (10, 14, 18, 22)]
    assert [round(cv2.imread(str(tmp_path / "out" / n)).mean() / 8) for n in names] == [10, 14, 18, 22]
    assert extract_frames.main([str(tmp_path / "nope.mp4"), str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err


def _broken_voc(tmp_path):
    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for k in range(4):
        cv2.imwrite(str(root / "images" / f"frame{k}.jpg"), np.zeros((40, 60, 3), np.uint8))
    obj = "<object><name>car</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>" \
          "</bndbox></object>"
    for k, boxes in enumerate([[(1, 1, 10, 10)], [(20, 5, 10, 30)], [(50, 30, 90, 45)]]):
        (root / "annotations" / f"frame{k}.xml").write_text(
            f"<annotation><filename>frame{k}.jpg</filename><size><width>60</width><height>40</height></size>"
            + "".join(obj.format(*b) for b in boxes) + "</annotation>")
    (root / "annotations" / "frame9.xml").write_text("<annotation><filename>frame9.jpg</filename></annotation>")
    return root


def test_check_dataset_finds_problems(tmp_path, capsys):
    root = _broken_voc(tmp_path)
    out = tmp_path / "check"
    code = check_dataset.main(["--data", str(root), "--out", str(out), "--fail-on-problems"])
    assert code == 1
    result = json.load(open(out / "check.json"))
    assert result["images_without_annotations"] == [str(root / "images" / "frame3.jpg")]
    assert any("frame9.xml" in p for p in result["annotations_without_images"])
    msgs = " | ".join(p["message"] for p in result["problems"])
    assert "x2 <= x1" in msgs and "extends outside the 60x40 image" in msgs
    assert result["class_counts"] == {"car": 2} and result["box_sizes"]["boxes"] == 2
    png = cv2.imread(str(out / "box_sizes.png"))
    assert png is not None and png.shape[0] > 100
    text = capsys.readouterr().out
    assert "frame3.jpg" in text and "frame1.xml" in text


def test_check_dataset_speedtrap_snippets(tmp_path, capsys):
    assert check_dataset.main(["--data", SPEEDTRAP, "--snippets", "3,0.05,5", "--check-images", "exists",
                               "--out", str(tmp_path)]) == 0
    result = json.load(open(tmp_path / "check.json"))
    assert result["images"] == 491 and result["box_sizes"]["boxes"] == 389 and not result["problems"]
    assert result["images_without_annotations"] == []
    fg = [k for k, v in result["snippets"].items() if not v["background"]]
    assert len(fg) == 7 and len(result["snippets"]) == 11
    assert "snippets: 7 + 4 background" in capsys.readouterr().out
    # without --snippets only the gaps in the numbering count: 144-245 and 248-410 stay merged
    assert check_dataset.main(["--data", SPEEDTRAP, "--check-images", "exists"]) == 0
    assert "snippets: 5 + 3 background (frame-number gaps only" in capsys.readouterr().out


def test_check_dataset_compares_splits(tmp_path, capsys):
    # the README's random 80/20 split shares every approach between train and test
    assert check_dataset.main(["--data", SPEEDTRAP, "--snippets", "3,0.05,5", "--split", "train",
                               "--compare-split", "test", "--check-images", "exists"]) == 0
    assert "7 snippet(s) in both splits -> near-duplicate frames" in capsys.readouterr().out
    out = tmp_path / "s"
    assert split.main(["--data", SPEEDTRAP, "--snippets", "3,0.05,5", "--by", "snippet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert check_dataset.main(["--data", SPEEDTRAP, "--snippets", "3,0.05,5", "--split", str(out / "train.txt"),
                               "--compare-split", str(out / "test.txt"), "--check-images", "exists"]) == 0
    assert "0 snippet(s) in both splits; 0 image(s) in both" in capsys.readouterr().out


def test_split_by_snippet_keeps_snippets_whole(tmp_path):
    out = tmp_path / "split"
    assert split.main(["--data", SPEEDTRAP, "--snippets", "3,0.05,5", "--by", "snippet", "--seed", "3",
                       "--test-fraction", "0.2", "--out", str(out)]) == 0
    train = open(out / "train.txt").read().split()
    test = open(out / "test.txt").read().split()
    assert len(train) + len(test) == 491 and not set(train) & set(test)
    assert 0.2 * 491 <= len(test) <= 0.5 * 491
    summary = json.load(open(out / "split.json"))
    assert not set(summary["train"]["snippets"]) & set(summary["test"]["snippets"])
    # the lists load back with load_voc, and no frame of a test snippet is in train
    full = D.load_voc(SPEEDTRAP, snippets=D.SPEEDTRAP_SNIPPETS)
    video_of = {os.path.basename(r.image_id): r.video for r in full}
    assert not {video_of[i] for i in train} & {video_of[i] for i in test}
    assert len(D.load_voc(SPEEDTRAP, split=str(out / "test.txt"))) == len(test)
    # random split: deterministic from the seed, disjoint, right size
    assert split.main(["--data", SPEEDTRAP, "--out", str(tmp_path / "r"), "--seed", "1"]) == 0
    a = open(tmp_path / "r" / "test.txt").read()
    assert split.main(["--data", SPEEDTRAP, "--out", str(tmp_path / "r2"), "--seed", "1"]) == 0
    assert a == open(tmp_path / "r2" / "test.txt").read() and len(a.split()) == round(0.2 * 491)


def test_convert_and_pack_records(tmp_path, capsys):
    src = tmp_path / "synth"
    ds = generate_video_dataset(str(src), seed=4, num_videos=1, num_frames=5, width=64, height=48)
    assert convert.main(["--data", str(src), "--to", "coco", "--out", str(tmp_path / "c.json")]) == 0
    assert convert.main(["--data", str(tmp_path / "c.json"), "--to", "csv", "--out", str(tmp_path / "a.csv")]) == 0
    assert convert.main(["--data", str(tmp_path / "a.csv"), "--classes", str(tmp_path / "a_classes.csv"),
                         "--to", "voc", "--out", str(tmp_path / "voc"), "--label-map", str(tmp_path / "lm.pbtxt")]) == 0
    voc = D.load_voc(str(tmp_path / "voc"), classes=str(tmp_path / "lm.pbtxt"))
    assert [r.boxes.tolist() for r in voc] == [r.boxes.tolist() for r in ds]
    assert pack_records.main(["--data", str(tmp_path / "voc"), "--classes", str(tmp_path / "lm.pbtxt"),
                              "--out", str(tmp_path / "rec" / "train"), "--inspect"]) == 0
    assert "packed 5 records" in capsys.readouterr().out
    back = D.load_recordio(str(tmp_path / "rec" / "train"))
    for a, b in zip(ds, back):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_draw_colours_by_anchor_coverage(tmp_path):
    from lib.anchors import rpn_base_anchors, shift_anchors, ssd_priors
    # oracle: a box equal to an RPN anchor (MXNet's inclusive x2/y2 + 1 = our convention) is green;
    # a 6x6 box (IoU with the 128..512 px anchors far below 0.5) is red
    anchor = shift_anchors(rpn_base_anchors(16, (8,), (1,)), 16, 16, 16)[4 * 16 + 4].copy()
    anchor[2:] += 1
    np.testing.assert_array_equal(anchor, [8, 8, 136, 136])
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.full((256, 256, 3), 90, np.uint8))
    (tmp_path / "ann.csv").write_text("img/a.png,8,8,136,136,obj\nimg/a.png,200,200,206,206,obj\n")
    (tmp_path / "anchors.yaml").write_text("TYPE: rpn\nLEVELS: [{STRIDE: 16, BASE_SIZE: 16, SCALES: [8, 16, 32], "
                                           "RATIOS: [0.5, 1, 2]}]\n")
    out = tmp_path / "out"
    assert draw.main(["--data", str(tmp_path / "ann.csv"), "--out", str(out), "--anchors",
                      str(tmp_path / "anchors.yaml")]) == 0
    cov = json.load(open(out / "anchor_coverage.json"))
    assert cov["boxes"] == 2 and cov["matched"] == 1
    assert [u["box"] for u in cov["unmatched"]] == [[200, 200, 206, 206]]
    png = cv2.cvtColor(cv2.imread(str(out / "img__a.png")), cv2.COLOR_BGR2RGB)
    assert tuple(int(v) for v in png[70, 8]) == viz.GREEN   # left edge of the anchor-sized box
    assert tuple(int(v) for v in png[203, 200]) == viz.RED  # left edge of the small box
    # with the image scaled to short side 600 the small box grows but still has no anchor
    cfg = {"TYPE": "rpn", "RESIZE": {"SHORT": 600, "MAX": 1000},
           "LEVELS": [{"STRIDE": 16, "BASE_SIZE": 16, "SCALES": [8, 16, 32], "RATIOS": [0.5, 1, 2]}]}
    best, matched = anchor_coverage.anchor_match(cfg, np.array([[200, 200, 206, 206]], np.float32), 256, 256)
    assert not matched[0] and best[0] < 0.1
    # SSD priors: a box equal to a prior (normalised corners * image size) matches with IoU 1
    cfg = {"TYPE": "ssd", "IMAGE_SIZE": 300, "FEATURE_SIZES": [3], "STEPS": [100], "MIN_SIZES": [100],
           "MAX_SIZES": [200], "ASPECT_RATIOS": [[2]]}
    prior = ssd_priors(300, [3], [100], [100], [200], [[2]])[4] * np.array([600, 450, 600, 450])
    best, matched = anchor_coverage.anchor_match(cfg, np.array([prior, [0, 0, 5, 5]], np.float32), 600, 450)
    np.testing.assert_allclose(best[0], 1.0, atol=1e-5)
    assert matched.tolist() == [True, False]
    # retinanet-style levels: anchors centred at (k + 0.5) * stride as keras-retinanet shifts them
    cfg = {"TYPE": "retinanet", "SIZES": [32], "STRIDES": [8], "RATIOS": [1], "SCALES": [1.0]}
    best, matched = anchor_coverage.anchor_match(cfg, np.array([[4, 4, 36, 36], [8, 8, 40, 40]], np.float32), 64, 64)
    np.testing.assert_allclose(best, [1.0, 28 * 28 / (2 * 32 * 32 - 28 * 28)], atol=1e-5)
