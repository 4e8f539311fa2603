"""The whole "your own object from your own video" recipe (docs/custom_workflow.md) on a tiny synthetic
video: film -> extract frames -> label (VOC XML next to the frames, as LabelImg writes them) -> check
-> split by snippet -> pack records -> train (M2Det, a few iterations) -> evaluate -> export (MXNet +
ONNX) -> infer on the video -> annotated MP4, then int8 quantization.

Oracles: the exported artifact run by lib.tools.infer (no training code) must give the detections of
the in-process model; onnxruntime must give the MXNet graph's; the split must keep each clip on one
side; the frames decoded back from the video must carry the labels written for them.
"""
import json
import os
import runpy

import cv2
import numpy as np
import pytest

from lib.config import PROJECT_ROOT
from lib.dataset import load_dataset, load_recordio, read_image
from lib.dataset.synthetic import render_video
from lib.dataset.voc import voc_xml_string
from lib.dataset import Record

CLIPS, FRAMES, GAP = 3, 8, 3          # 3 clips of 8 frames, 3 blank frames between clips (trimmed away)
WIDTH, HEIGHT = 192, 128


def _script(name):
    return runpy.run_path(os.path.join(PROJECT_ROOT, "experiments", "custom", name), run_name="recipe_test")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    # 1. "film": clips of a moving object, with blank frames between them, in one MP4
    video = str(root / "dashcam.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (WIDTH, HEIGHT))
    truth = {}                        # frame index in the video -> (boxes, labels)
    index = 0
    for clip in range(CLIPS):
        frames, annotations = render_video(11, clip, FRAMES, WIDTH, HEIGHT, 1, 1, 0.0, False)
        for frame, (boxes, labels, _, _) in zip(frames, annotations):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            truth[index] = (boxes, labels)
            index += 1
        for _ in range(GAP):
            writer.write(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
            index += 1
    writer.release()
    return {"root": root, "video": video, "truth": truth, "total": index}


def test_whole_recipe(recipe, capsys):
    from lib.tools import check_dataset, extract_frames, infer, pack_records, split
    from lib.tools import export as export_tool
    from lib.tools.quantize import quantize
    root, video, truth = recipe["root"], recipe["video"], recipe["truth"]

    # 2. extract every frame
    frames_dir = root / "frames"
    assert extract_frames.main([video, str(frames_dir), "--pattern", "frame%d.jpg"]) == 0
    extracted = sorted(os.listdir(frames_dir))
    assert len(extracted) == recipe["total"]

    # 3. label: one VOC XML per frame with the object (the blank frames are not labelled)
    for idx, (boxes, labels) in truth.items():
        image = str(frames_dir / f"frame{idx}.jpg")
        rec = Record(image=image, width=WIDTH, height=HEIGHT, boxes=boxes, labels=labels)
        (frames_dir / f"frame{idx}.xml").write_text(voc_xml_string(rec, ["disc"]))
    background = root / "background"      # frames of the road without the object
    background.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        noise = cv2.GaussianBlur(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8), (9, 9), 0)
        cv2.imwrite(str(background / f"bg{k}.jpg"), noise)

    # 4. check: it lists the frames nobody labelled (the blank gaps); trim them, then nothing is wrong
    check_dataset.main(["--data", str(frames_dir), "--format", "voc", "--out", str(root / "check")])
    report = json.loads((root / "check" / "check.json").read_text())
    unlabelled = sorted(os.path.basename(p) for p in report["images_without_annotations"])
    assert unlabelled == sorted(f"frame{i}.jpg" for i in range(recipe["total"]) if i not in truth)
    for name in unlabelled:
        os.remove(frames_dir / name)
    assert check_dataset.main(["--data", str(frames_dir), "--format", "voc", "--out", str(root / "check"),
                               "--fail-on-problems"]) == 0
    report = json.loads((root / "check" / "check.json").read_text())
    assert report["images"] == CLIPS * FRAMES and report["problems"] == []
    assert len(report["snippets"]) == CLIPS

    # 5. split by snippet: the trimmed gaps separate the clips; each clip lands on one side only
    split_dir = root / "split"
    assert split.main(["--data", str(frames_dir), "--format", "voc", "--snippets", "1,-,-", "--by", "snippet",
                       "--test-fraction", "0.3", "--out", str(split_dir)]) == 0
    train_ids = (split_dir / "train.txt").read_text().split()
    test_ids = (split_dir / "test.txt").read_text().split()
    clip_of = lambda name: int(name[5:]) // (FRAMES + GAP)  # noqa: E731
    assert len(test_ids) == FRAMES and len(train_ids) == (CLIPS - 1) * FRAMES
    assert not {clip_of(n) for n in train_ids} & {clip_of(n) for n in test_ids}

    # 6. pack the training split into RecordIO and read it back
    prefix = str(root / "records" / "train")
    os.makedirs(os.path.dirname(prefix))
    assert pack_records.main(["--data", str(frames_dir), "--format", "voc", "--split",
                              str(split_dir / "train.txt"), "--out", prefix, "--inspect"]) == 0
    packed = load_recordio(prefix)
    assert len(packed) == len(train_ids) and packed.classes == ["disc"]
    packed_boxes = sum(r.num_boxes for r in packed.records)

    # 7. train: one config key chooses the detector; records + background images as training data
    run_dir = root / "run"
    cfg_path = root / "recipe.yaml"
    cfg_path.write_text(f"""
DETECTOR: m2det
BASE: experiments/m2det/cfgs/tiny.yaml
INPUT: {{SIZE: [160]}}
TRAIN: {{BATCH_SIZE: 4, ITERATIONS: 3, LR: 0.01, AUGMENT: []}}
DATA:
  TRAIN:
    - {{FORMAT: recordio, PREFIX: {prefix}}}
    - {{FORMAT: background, IMAGES_DIR: {background}}}
  VAL:
    - {{FORMAT: voc, ROOT: {frames_dir}, SPLIT: {split_dir / 'test.txt'}}}
    - {{FORMAT: background, IMAGES_DIR: {background}}}
OVERRIDES: {{TRAIN: {{EVALUATE: false}}, TEST: {{SCORE_THRESH: 0.2}}}}
EVAL: {{THRESHOLDS: [0.2, 0.5]}}
OUTPUT_DIR: {run_dir}
""")
    assert _script("train.py")["main"](["--cfg", str(cfg_path), "--no-progress"]) == 0
    assert (run_dir / "run.json").is_file() and list(run_dir.glob("ckpt-*.params"))
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["family"], meta["classes"], meta["recipe"]) == ("m2det", ["disc"], "recipe.yaml")
    coverage = json.loads((run_dir / "anchor_coverage.json").read_text())
    assert coverage["boxes"] == sum(b["boxes"] for b in coverage["bands"]) == packed_boxes > 0
    # the debug drawing with the run's own anchors counts the same matches on the same boxes
    from lib.tools.draw import main as draw_main
    assert draw_main(["--data", prefix, "--format", "recordio", "--anchors", str(run_dir),
                      "--out", str(root / "drawn")]) == 0
    drawn = json.loads((root / "drawn" / "anchor_coverage.json").read_text())
    assert (drawn["boxes"], drawn["matched"]) == (coverage["boxes"], coverage["matched"])

    # 8. evaluate on the held-out clip + background images
    assert _script("evaluate.py")["main"](["--model", str(run_dir), "--out", str(root / "eval"),
                                           "--save-images", "4", "--image-thresh", "2"]) == 0
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    # the held-out clip has labelled frames: an mAP (untrained model: any value in [0, 1]) and its PR plot
    assert metrics["mAP@0.5"] is not None and 0 <= metrics["mAP@0.5"] <= 1
    assert cv2.imread(str(root / "eval" / "pr_all.png")) is not None
    drawn_frames = sorted((root / "eval" / "images").glob("*.jpg"))
    assert len(drawn_frames) == 4
    labelled = [p for p in drawn_frames if p.stem.startswith("frame") and len(truth[int(p.stem[5:])][0])]
    assert labelled
    # threshold 2, above any score (the untrained model's softmax can round to exactly 1.0): none of its
    # boxes drawn (lib.viz is tested on its own), so the drawing changed the frame only along the
    # ground-truth box
    for path in labelled:
        drawn = cv2.imread(str(path)).astype(int)
        raw = cv2.imread(str(frames_dir / (path.stem + ".jpg"))).astype(int)
        x1, y1, _, y2 = (int(v) for v in truth[int(path.stem[5:])][0][0])
        mid = slice((y1 + y2) // 2, y2 - 1)
        assert np.abs(drawn - raw)[mid, x1].mean() > 3 * np.abs(drawn - raw).mean()
    empty_test_frames = sum(len(truth[int(n[5:])][0]) == 0 for n in test_ids)
    assert metrics["images"] == FRAMES + 3 and metrics["background_images"] == 3 + empty_test_frames
    fp = metrics["false_positives"]
    assert [r["threshold"] for r in fp] == [0.2, 0.5]
    for r in fp:
        assert r["all"]["false_positives"] == r["with_objects"]["false_positives"] + r["background"]["false_positives"]
    misses = metrics["small_misses"]   # the miss analysis counts the boxes the small-object AP counts
    assert misses["boxes"] == metrics["small_gt"] == misses["localised"] + misses["loose"] + misses["missed"]
    assert "small objects: " in (root / "eval" / "results.md").read_text()
    dets = json.loads((root / "eval" / "detections.json").read_text())
    assert all(d["score"] >= 0.2 for d in dets)
    # the run's family config changed for one evaluation: OVERRIDES.<family key> (here the score threshold)
    assert _script("evaluate.py")["main"](["--model", str(run_dir), "--out", str(root / "eval_thresh"),
                                           "--set", "OVERRIDES.TEST.SCORE_THRESH=0.5"]) == 0
    strict = json.loads((root / "eval_thresh" / "metrics.json").read_text())
    assert strict["family_overrides"] == ["TEST.SCORE_THRESH=0.5"]
    strict_dets = json.loads((root / "eval_thresh" / "detections.json").read_text())
    assert all(d["score"] >= 0.5 for d in strict_dets)
    assert len(strict_dets) == sum(d["score"] >= 0.5 for d in dets)

    # 9. export (MXNet + ONNX, checked in onnxruntime against MXNet on frames of the video)
    artifact = root / "artifact"
    code = export_tool.main(["--model", str(run_dir), "--cfg", str(cfg_path), "--format", "onnx",
                             "--out", str(artifact), "--check-input", video, "--check-frames", "3"])
    assert code == 0, capsys.readouterr().err
    for name in ("model-symbol.json", "model-0000.params", "model.onnx", "meta.json"):
        assert (artifact / name).is_file()
    assert "ONNX check" in capsys.readouterr().out
    assert _script("evaluate.py")["main"](["--model", str(artifact), "--cfg", str(cfg_path),
                                           "--set", "OVERRIDES.TEST.SCORE_THRESH=0.5"]) == 2
    assert "is an exported artifact: OVERRIDES.*" in capsys.readouterr().err

    # 10. run the artifact on the video: annotated MP4 + detections JSON
    out = root / "infer"
    assert infer.main(["--model", str(artifact), "--input", video, "--output", str(out), "--thresh", "0.0"]) == 0
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == recipe["total"]
    cap.release()
    exported = json.loads((out / "detections.json").read_text())

    # the exported model gives the in-process model's detections on the same decoded frames
    from lib.family import load_model
    model = load_model(str(run_dir))
    cap = cv2.VideoCapture(video)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    in_process = model.detect(frames)
    by_frame = {}
    for d in exported:
        by_frame.setdefault(int(d["image_id"]), []).append(d)
    compared = 0
    for t, (boxes, scores, labels) in enumerate(in_process):
        entries = sorted(by_frame.get(t, []), key=lambda d: -d["score"])
        order = np.argsort(-scores, kind="stable")
        assert len(entries) == len(order), f"frame {t}"
        got_boxes = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                              for d in entries]).reshape(-1, 4)
        np.testing.assert_allclose([d["score"] for d in entries], scores[order], atol=1e-4)
        np.testing.assert_allclose(got_boxes, np.clip(boxes[order], 0, [WIDTH, HEIGHT, WIDTH, HEIGHT]), atol=1e-2)
        assert [d["category_id"] for d in entries] == labels[order].tolist()
        compared += len(entries)
    assert compared > 0

    # 10b. tiled inference: one tile covering the frame is the plain detector; smaller tiles still run
    detect_video = _script("detect_video.py")["main"]
    one_tile = root / "tiled_one"
    assert detect_video(["--model", str(artifact), "--cfg", str(cfg_path), "--input", video, "--output",
                         str(one_tile), "--thresh", "0.0", "--tiling", "on",
                         "--set", f"TILING.INFER.SIZE=[{WIDTH}, {HEIGHT}]"]) == 0
    tiled = json.loads((one_tile / "detections.json").read_text())
    assert len(tiled) == len(exported)
    for a, b in zip(sorted(tiled, key=lambda d: (d["image_id"], -d["score"])),
                    sorted(exported, key=lambda d: (d["image_id"], -d["score"]))):
        assert a["image_id"] == b["image_id"] and abs(a["score"] - b["score"]) < 1e-6
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
    # 10c. with the box-level memory (OVERRIDES.TEST.FUSE): the first frame is the plain detector's; later,
    # every plain detection is there at its score or higher, next to boxes carried from the frames before
    fused_dir = root / "fused"
    assert detect_video(["--model", str(artifact), "--cfg", str(cfg_path), "--input", video, "--output",
                         str(fused_dir), "--thresh", "0.0", "--tiling", "off",
                         "--set", "OVERRIDES.TEST.FUSE.ENABLED=true", "--set", "OVERRIDES.TEST.FUSE.MIN_SCORE=0.0"]) == 0
    fused = json.loads((fused_dir / "detections.json").read_text())
    plain_by_frame, fused_by_frame = {}, {}
    for entries, table in ((exported, plain_by_frame), (fused, fused_by_frame)):
        for d in entries:
            table.setdefault(int(d["image_id"]), []).append(d)
    assert sorted(d["score"] for d in fused_by_frame[0]) == pytest.approx(sorted(d["score"] for d in plain_by_frame[0]))
    assert len(fused) > len(exported)
    for t, entries in plain_by_frame.items():
        for d in entries:
            same = [f["score"] for f in fused_by_frame[t] if np.allclose(f["bbox"], d["bbox"], atol=1e-3)]
            assert same and max(same) >= d["score"] - 1e-6, f"frame {t}"
    for bad, message in (("OVERRIDES.TEST.FUSE.DECAY=2", "TEST.FUSE.DECAY must be in (0, 1], got 2"),
                         ("OVERRIDES.TEST.FUSE.DECAI=0.5", "unknown key 'TEST.FUSE.DECAI'")):
        assert detect_video(["--model", str(artifact), "--cfg", str(cfg_path), "--input", video, "--output",
                             str(root / "fused_bad"), "--set", "OVERRIDES.TEST.FUSE.ENABLED=true", "--set", bad]) == 2
        assert message in capsys.readouterr().err
    small_tiles = root / "tiled_small"
    assert detect_video(["--model", str(artifact), "--cfg", str(cfg_path), "--input", str(frames_dir),
                         "--output", str(small_tiles), "--thresh", "0.3", "--tiling", "on",
                         "--set", "TILING.INFER.SIZE=[96, 96]", "--set", "TILING.INFER.OVERLAP=32"]) == 0
    cap = cv2.VideoCapture(str(small_tiles / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == CLIPS * FRAMES
    cap.release()
    for d in json.loads((small_tiles / "detections.json").read_text()):
        x, y, w, h = d["bbox"]
        assert d["score"] >= 0.3 and x >= 0 and y >= 0 and x + w <= WIDTH + 1e-3 and y + h <= HEIGHT + 1e-3

    # 11. int8: calibrate on a few training frames, the quantized artifact runs and finds boxes in the frame
    int8 = root / "artifact_int8"
    quantize(str(artifact), str(frames_dir), str(int8), num_calib=4)
    runner = infer.ExportedDetector(str(int8), "mxnet")
    boxes, scores, labels = runner(cv2.imread(str(frames_dir / "frame0.jpg")))
    assert runner.meta["quantized"]["dtype"] == "int8"
    assert len(scores) > 0 and np.all((labels >= 0) & (labels < 1))
    assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= WIDTH) and np.all(boxes[:, 3] <= HEIGHT)
    assert np.all(scores >= 0.2 - 1e-6)


def test_labels_survive_the_video(recipe, tmp_path):
    """Frames decoded from the MP4 and their XML give back the boxes drawn into the video."""
    from lib.tools import extract_frames
    frames_dir = tmp_path / "frames"
    assert extract_frames.main([recipe["video"], str(frames_dir), "--every", "4"]) == 0
    names = sorted(os.listdir(frames_dir))
    assert len(names) == int(np.ceil(recipe["total"] / 4))
    assert names[1] == "000004.jpg"        # numbered by the frame index in the video
    for idx in (0, 4, 12, 16):
        boxes, labels = recipe["truth"][idx]
        rec = Record(image=str(frames_dir / f"{idx:06d}.jpg"), width=WIDTH, height=HEIGHT, boxes=boxes, labels=labels)
        (frames_dir / f"{idx:06d}.xml").write_text(voc_xml_string(rec, ["disc"]))
    ds = load_dataset({"FORMAT": "voc", "ROOT": str(frames_dir), "CLASSES": ["disc"]})
    assert len(ds) == 4
    for rec in ds:
        idx = int(rec.image_id)
        np.testing.assert_array_equal(rec.boxes, recipe["truth"][idx][0])
        assert read_image(rec.image).shape == (HEIGHT, WIDTH, 3)


def test_per_snippet_ap_splits_the_hold_out():
    # two snippets: every box of "a" found, the box of "b" missed; a background still image
    from lib.dataset import DetectionDataset
    box = np.array([[10, 10, 40, 60]], np.float32)
    small = np.array([[10, 10, 20, 30]], np.float32)     # 20 px high: a small object
    recs = [Record(image=f"a{i}.jpg", width=100, height=100, boxes=b, labels=[0], video="a", frame=i)
            for i, b in enumerate([box, small])]
    recs.append(Record(image="b0.jpg", width=100, height=100, boxes=box, labels=[0], video="b", frame=0))
    recs.append(Record(image="bg.jpg", width=100, height=100))
    ds = DetectionDataset(recs, ["x"])
    hit = lambda b: (b, np.array([0.9], np.float32), np.array([0]))          # noqa: E731
    miss = (np.array([[60, 60, 90, 90]], np.float32), np.array([0.8], np.float32), np.array([0]))
    none = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    rows = _script("evaluate.py")["per_snippet_ap"](ds, [hit(box), hit(small), miss, none], 32.0)
    assert list(rows) == ["a", "b"]
    assert rows["a"]["frames"] == 2 and rows["a"]["boxes"] == 2 and rows["a"]["mAP@0.5"] == pytest.approx(1.0)
    assert rows["a"]["small_gt"] == 1 and rows["a"]["AP@0.5 small"] == pytest.approx(1.0)
    assert rows["b"]["mAP@0.5"] == pytest.approx(0.0) and rows["b"]["small_gt"] == 0
