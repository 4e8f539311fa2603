"""Hostile but realistic input (issue 30): every bad input is one clear error naming the flag, file or
key (exit status 2, no traceback) or is reported and skipped; nothing is silently lost or wrong.

Commands are run as the user runs them (``python -m lib.tools.<name>`` in a subprocess); the oracles
are the same input without the defect (a BOM changes nothing), pycocotools and OpenCV / PyAV reading
the outputs back, hand-computed metrics and files written with scipy.io.
"""
import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import lib.dataset as D
from lib.config import PROJECT_ROOT
from lib.dataset import DatasetError

BOM = "\ufeff"
RADAR_BOXES = {0: [(10, 8, 30, 28)], 1: [(12, 9, 34, 30)], 2: [(40, 20, 60, 44)]}  # VOC XML, 1-based inclusive


# ------------------------------------------------------------------------------------------ helpers

def run_tool(name, *args, timeout=180):
    """``python -m lib.tools.<name> args`` from the project root, this checkout's packages first."""
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", f"lib.tools.{name}", *map(str, args)], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc, *named):
    """Exit status 2, no traceback, one 'error:' line naming each of ``named``."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for text in named:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def write_jpeg(path, width=64, height=48, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    with open(path, "wb") as f:
        f.write(data.tobytes())
    return data.tobytes()


def voc_xml(filename, boxes, name="radar", width=64, height=48):
    objects = "".join(f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                      f"<ymax>{y2}</ymax></bndbox></object>" for x1, y1, x2, y2 in boxes)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"</size>{objects}</annotation>")


def make_voc(root, boxes=RADAR_BOXES, images=True):
    """A plain VOC folder (annotations/ + images/) of 64x48 frames named frame<k>.jpg."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for k, frame_boxes in boxes.items():
        if images:
            write_jpeg(os.path.join(root, "images", f"frame{k}.jpg"), seed=k)
        with open(os.path.join(root, "annotations", f"frame{k}.xml"), "w", encoding="utf-8") as f:
            f.write(voc_xml(f"frame{k}.jpg", frame_boxes))
    return str(root)


def same_records(a, b):
    assert a.classes == b.classes and len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        assert ra.image == rb.image and ra.image_id == rb.image_id
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        np.testing.assert_array_equal(ra.labels, rb.labels)


# --------------------------------------------------------------- 1. a UTF-8 BOM changes nothing

def _write(path, text, bom):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write((BOM if bom else "") + text)
    return str(path)


def _csv_set(folder, bom):
    os.makedirs(folder, exist_ok=True)
    rows = []
    for k, boxes in RADAR_BOXES.items():
        write_jpeg(os.path.join(folder, f"frame{k}.jpg"), seed=k)
        rows += [f"frame{k}.jpg,{x1},{y1},{x2},{y2},radar" for x1, y1, x2, y2 in boxes]
    ann = _write(os.path.join(folder, "ann.csv"), "\n".join(rows) + "\n", bom)
    classes = _write(os.path.join(folder, "classes.csv"), "radar,0\n", bom)
    return ann, classes


def test_bom_in_csv_annotations_and_classes_is_read_like_plain_utf8_by_the_command(tmp_path):
    """Excel's 'CSV UTF-8' starts with a BOM: before, every box was an 'unknown class' and the first
    image was 'not found'."""
    ann, classes = _csv_set(str(tmp_path / "bom"), bom=True)
    proc = run_tool("check_dataset", "--data", ann, "--classes", classes, "--fail-on-problems")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 images, 3 boxes" in proc.stdout and "class counts: radar: 3" in proc.stdout
    assert "unknown class" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    plain = D.load_csv(*_csv_set(str(tmp_path / "plain"), bom=False))
    with_bom = D.load_csv(ann, classes=classes)
    assert [r.boxes.tolist() for r in with_bom] == [r.boxes.tolist() for r in plain]


@pytest.mark.parametrize("kind", ["label_map", "class_lines", "coco", "voc_split", "voc_xml", "vid_image_set",
                                  "kitti"])
def test_bom_in_every_text_input_loads_the_same_dataset(tmp_path, kind):
    def build(folder, bom):
        folder = str(folder)
        if kind in ("label_map", "class_lines", "voc_split", "voc_xml"):
            root = make_voc(folder)
            spec = {"FORMAT": "voc", "ROOT": root}
            if kind == "label_map":
                spec["CLASSES"] = _write(os.path.join(folder, "label_map.pbtxt"),
                                         "item {\n  id: 1\n  name: 'radar'\n}\n", bom)
            elif kind == "class_lines":
                spec["CLASSES"] = _write(os.path.join(folder, "classes.txt"), "radar\n", bom)
            elif kind == "voc_split":
                spec["SPLIT"] = _write(os.path.join(folder, "train.txt"), "frame0\nframe2\n", bom)
            else:
                xml = os.path.join(root, "annotations", "frame1.xml")
                with open(xml, encoding="utf-8") as f:
                    text = f.read()
                _write(xml, '<?xml version="1.0" encoding="utf-8"?>' + text, bom)
            return spec
        if kind == "coco":
            os.makedirs(folder, exist_ok=True)
            write_jpeg(os.path.join(folder, "a.jpg"))
            coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 5, 20, 10]}],
                    "categories": [{"id": 3, "name": "radar"}]}
            return {"FORMAT": "coco", "ANNOTATIONS": _write(os.path.join(folder, "a.json"), json.dumps(coco), bom)}
        if kind == "vid_image_set":
            from lib.dataset.synthetic import generate_video_dataset
            generate_video_dataset(folder, seed=1, num_videos=1, num_frames=3, width=48, height=32, load=False)
            image_set = os.path.join(folder, "ImageSets", "VID_train_videos.txt")
            with open(image_set, encoding="utf-8") as f:
                text = f.read()
            _write(image_set, text, bom)
            return {"FORMAT": "vid", "ROOT": folder, "IMAGE_SET": "VID_train_videos",
                    "CLASSES": os.path.join(folder, "classes.txt")}
        os.makedirs(os.path.join(folder, "label_2"))
        os.makedirs(os.path.join(folder, "image_2"))
        write_jpeg(os.path.join(folder, "image_2", "000001.jpg"))
        _write(os.path.join(folder, "label_2", "000001.txt"),
               "Car 0.00 0 -1.5 4.00 5.00 30.00 20.00 1.5 1.6 3.9 1.0 1.7 8.0 -1.5\n", bom)
        return {"FORMAT": "kitti", "ROOT": folder}

    plain = D.load_dataset(build(tmp_path / "plain", bom=False))
    with_bom = D.load_dataset(build(tmp_path / "bom", bom=True))
    assert not with_bom.report.issues, with_bom.report.issues
    assert with_bom.classes == plain.classes
    assert sum(r.num_boxes for r in with_bom) == sum(r.num_boxes for r in plain) > 0
    for a, b in zip(plain, with_bom):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_bom_in_a_detections_file_gives_the_same_map(tmp_path):
    root = make_voc(str(tmp_path / "voc"), images=False)
    dets = [{"image_id": f"frame{k}", "category": "radar", "score": 0.9 - 0.1 * k,
             "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]}
            for k, b in RADAR_BOXES.items() for x1, y1, x2, y2 in b]
    dets.append({"image_id": "frame0", "category": "radar", "score": 0.95, "bbox": [40, 30, 10, 10]})
    results = {}
    for bom in (False, True):
        path = _write(tmp_path / f"dets{int(bom)}.json", json.dumps(dets), bom)
        out = tmp_path / f"result{int(bom)}.json"
        proc = run_tool("evaluate", "--gt", root, "--dets", path, "--metric", "voc", "--out", out)
        assert proc.returncode == 0, proc.stderr
        results[bom] = json.loads(out.read_text())["mAP"]
    # the FP at 0.95 comes first: precision 0, 1/2, 2/3, 3/4 at recall 0, 1/3, 2/3, 1 -> AP = 3/4
    assert results[True] == results[False] == pytest.approx(0.75)


def test_require_boxes_refuses_a_set_whose_boxes_were_all_dropped(tmp_path):
    ann, _ = _csv_set(str(tmp_path / "csv"), bom=False)
    other = _write(tmp_path / "other_classes.csv", "car,0\n", bom=False)
    dataset = D.load_csv(ann, classes=other)          # every box: unknown class 'radar'
    assert len(dataset) == 3 and sum(r.num_boxes for r in dataset) == 0
    with pytest.raises(DatasetError, match=r"DATASET.TRAIN: dataset 'ann': none of its 3 images has a box "
                                           r"\(3 box\(es\) dropped while loading: unknown class 'radar'\)"):
        dataset.require_boxes("DATASET.TRAIN")
    assert dataset.require_boxes("DATASET.TRAIN", allow_background_only=True) == 0
    assert D.load_csv(ann).require_boxes() == 3
    with pytest.raises(DatasetError, match="it has no images"):
        D.DetectionDataset([], ["radar"], "empty").require_boxes("DATASET.VAL")


# --------------------------------------------- 4. lib.tools.infer: every frame, the source's frame rate

SIZE = 32


class _ToyDetector(mx.gluon.HybridBlock):
    """One box per image in the exported-artifact layout: ids (1,1,1), scores (1,1,1), boxes (1,1,4)."""

    def __init__(self):
        super().__init__()
        self.dense = mx.gluon.nn.Dense(5)

    def hybrid_forward(self, F, x):
        s = F.sigmoid(self.dense(x)).reshape((0, 1, 5))
        xy = F.slice_axis(s, axis=-1, begin=0, end=2) * (SIZE / 2.0)
        boxes = F.concat(xy, xy + 4.0 + F.slice_axis(s, axis=-1, begin=2, end=4) * (SIZE / 2.0), dim=-1)
        scores = F.slice_axis(s, axis=-1, begin=4, end=5)
        return F.zeros_like(scores), scores, boxes


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifact")
    mx.random.seed(0)
    net = _ToyDetector()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    net.export(str(folder / "model"))
    meta = {"detector": "toy", "classes": ["radar"], "ops_library": False,
            "input": {"resize": "fixed", "size": [SIZE, SIZE], "mean": [0, 0, 0], "std": [255, 255, 255]}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return str(folder)


def _video_frames(path):
    """Frames and frame rate of a video read back with PyAV (an independent decoder)."""
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
    return frames, rate


def test_infer_keeps_every_frame_of_mixed_sizes_and_says_so(artifact, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    sizes = [(64, 48), (96, 48), (64, 48), (40, 40)]            # before: the MP4 kept 2 of these 4
    for k, (w, h) in enumerate(sizes):
        cv2.imwrite(str(folder / f"{k:03d}.png"), np.full((h, w, 3), 60 * k + 20, np.uint8))
    out = tmp_path / "out"
    proc = run_tool("infer", "--model", artifact, "--input", folder, "--output", out, "--thresh", "0.99")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "scaled into it with their aspect kept" in proc.stderr                      # said once...
    assert proc.stderr.count("note: ") == 1 and "2 frame(s) of another size" in proc.stdout  # ...and counted
    assert "4 frames at 25 fps: default for frames without a rate" in proc.stdout
    frames, rate = _video_frames(str(out / "annotated.mp4"))
    assert len(frames) == 4 and rate == 25 and all(f.shape == (48, 64, 3) for f in frames)
    # frame 1 (96x48) is letterboxed: its grey (80) in the middle, black bars above and below
    assert abs(int(frames[1][24, 32, 0]) - 80) < 8 and frames[1][2, 32].max() < 12
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))    # and OpenCV decodes the same 4 frames
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 4


def test_infer_writes_at_the_source_video_frame_rate(artifact, tmp_path):
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for k in range(5):
        writer.write(np.full((48, 64, 3), 40 * k, np.uint8))
    writer.release()
    proc = run_tool("infer", "--model", artifact, "--input", video, "--output", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    assert "5 frames at 10 fps: the input video's rate" in proc.stdout
    frames, rate = _video_frames(str(tmp_path / "a" / "annotated.mp4"))
    assert len(frames) == 5 and rate == 10                  # before: 25 whatever the source
    proc = run_tool("infer", "--model", artifact, "--input", video, "--output", tmp_path / "b", "--fps", "12.5")
    assert proc.returncode == 0 and _video_frames(str(tmp_path / "b" / "annotated.mp4"))[1] == 12.5


@pytest.mark.parametrize("args, named", [
    (["--fps", "0"], "--fps 0"), (["--fps", "-5"], "--fps -5"), (["--fps", "nan"], "--fps nan"),
    (["--thresh", "1.5"], "--thresh 1.5"), (["--thresh", "-0.1"], "--thresh -0.1"),
])
def test_infer_refuses_values_that_make_no_sense(artifact, tmp_path, args, named):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), np.zeros((48, 64, 3), np.uint8))
    proc = run_tool("infer", "--model", artifact, "--input", folder, "--output", tmp_path / "o", *args)
    assert_user_error(proc, named)
    assert not (tmp_path / "o" / "annotated.mp4").exists()      # before: --fps 0 wrote an unreadable MP4


@pytest.mark.parametrize("meta_text, named", [
    ('{"detector": "toy", "classes": ["radar"], "input": {"resize": "fi', "not valid JSON (line 1"),
    ('{"detector": "toy", "input": {"resize": "fixed", "size": [32, 32]}}', '"classes" must be'),
    ('{"classes": ["radar"], "input": {"resize": "fixed", "size": [32, -1]}}', '"input.size" must be 2 positive'),
    ('{"classes": ["radar"], "input": {"resize": "stretch"}}', '"input.resize" must be one of'),
    ('{"classes": ["radar"], "input": {"resize": "fixed", "size": [32, 32], "std": [1, 0, 1]}}', '"input.std"'),
    ('[1, 2]', "must hold a JSON object"),
])
def test_malformed_meta_json_names_the_file_and_the_key(artifact, tmp_path, meta_text, named):
    import shutil
    broken = tmp_path / "artifact"
    shutil.copytree(artifact, broken)
    (broken / "meta.json").write_text(meta_text)
    proc = run_tool("infer", "--model", broken, "--input", tmp_path, "--output", tmp_path / "o")
    assert_user_error(proc, str(broken / "meta.json"), named)


def test_meta_json_with_a_bom_runs(artifact, tmp_path):
    import shutil
    from lib.tools.infer import ExportedDetector
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    text = (copy / "meta.json").read_text()
    (copy / "meta.json").write_text(BOM + text, encoding="utf-8")
    frame = np.full((48, 64, 3), 90, np.uint8)
    for a, b in zip(ExportedDetector(str(copy))(frame), ExportedDetector(artifact)(frame)):
        np.testing.assert_array_equal(a, b)


def test_video_writer_refuses_or_resizes_never_drops_and_leaves_nothing_on_failure(tmp_path):
    from lib.viz import VideoWriter
    path = str(tmp_path / "v.mp4")
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 255
    with pytest.raises(ValueError, match="frame 1 is 32x48, the video is 64x48"):
        with VideoWriter(path, 5) as writer:
            writer.write(red)
            writer.write(np.zeros((48, 32, 3), np.uint8))
    assert os.listdir(tmp_path) == []          # the failed file is not left behind, nor its temporary
    messages = []
    with VideoWriter(path, 5, mismatch="resize", warn=messages.append) as writer:
        for frame in (red, np.zeros((48, 32, 3), np.uint8), np.zeros((24, 32, 3), np.uint8)):
            writer.write(frame)
    assert writer.frames_written == 3 and writer.resized_frames == 2 and len(messages) == 1
    frames, rate = _video_frames(path)
    assert len(frames) == 3 and rate == 5 and os.listdir(tmp_path) == ["v.mp4"]
    assert frames[0][24, 32, 2] > 200 and frames[0][24, 32, 0] < 60            # RGB in, red out (BGR read)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="fps must be > 0"):
            VideoWriter(path, bad)


# --------------------------------------------------------- 7. values that make no sense, flag named

@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "v.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 24))
    for k in range(30):                                      # 1.5 s
        writer.write(np.full((24, 32, 3), 8 * k, np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("args, named", [
    (["--start", "5", "--end", "1"], "--end 1: must be after --start 5"),
    (["--start", "1000"], "--start 1000: the video is only 1.50 s long"),
    (["--start", "-1"], "--start -1: must be >= 0"),
    (["--quality", "500"], "--quality 500"), (["--quality", "-1"], "--quality -1"),
    (["--pattern", "frame.jpg"], "--pattern 'frame.jpg': needs exactly one integer field"),
    (["--pattern", "%d_%d.jpg"], "--pattern '%d_%d.jpg'"),
    (["--pattern", "%06d"], "must end in an image extension"),
    (["--every", "0"], "--every 0"),
])
def test_extract_frames_refuses_values_that_make_no_sense(short_video, tmp_path, args, named):
    out = tmp_path / "out"
    proc = run_tool("extract_frames", short_video, out, *args)
    assert_user_error(proc, named)
    assert not out.exists() or not os.listdir(out)


def test_extract_frames_range_inside_the_video_still_works(short_video, tmp_path):
    proc = run_tool("extract_frames", short_video, tmp_path / "out", "--start", "1.2", "--end", "5")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [f"{k:06d}.jpg" for k in range(24, 30)]


@pytest.mark.parametrize("iou", ["2", "-0.5", "0"])
def test_evaluate_refuses_an_iou_outside_0_1(tmp_path, iou):
    root = make_voc(str(tmp_path / "voc"), images=False)
    dets = _write(tmp_path / "d.json", "[]", bom=False)
    assert_user_error(run_tool("evaluate", "--gt", root, "--dets", dets, "--metric", "voc", "--iou", iou),
                      f"--iou {float(iou):g}: an IoU threshold must be in (0, 1]")


@pytest.mark.parametrize("args, named", [
    (["--test-fraction", "1.5"], "--test-fraction 1.5"), (["--test-fraction", "0"], "--test-fraction 0"),
    (["--names", "a,a"], "--names 'a,a'"),
])
def test_split_refuses_values_that_make_no_sense(tmp_path, args, named):
    root = make_voc(str(tmp_path / "voc"))
    assert_user_error(run_tool("split", "--data", root, "--out", tmp_path / "s", *args), named)


def test_quantize_refuses_zero_calibration_frames_and_a_foreign_out_folder(artifact, tmp_path):
    assert_user_error(run_tool("quantize", "--model", artifact, "--calib", tmp_path, "--out", tmp_path / "q",
                               "--num-calib", "0"), "--num-calib 0")
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_user_error(run_tool("quantize", "--model", artifact, "--calib", tmp_path, "--out", mine),
                      "is not an exported artifact")
    assert (mine / "notes.txt").read_text() == "keep me"      # before: the folder was deleted first


@pytest.mark.parametrize("tool, args, named", [
    ("check_dataset", ["--data", "{voc}", "--out", "{file}"], "{file}: is a file, and a folder is needed here"),
    ("split", ["--data", "{voc}", "--out", "{file}"], "{file}: is a file, and a folder is needed here"),
    ("convert", ["--data", "{voc}", "--to", "voc", "--out", "{file}"], "a part of this path is a file, not a folder"),
    ("extract_frames", ["{video}", "/proc/frames"], "/proc/frames: No such file or directory"),
    ("pack_records", ["--data", "{voc}", "--out", "/proc/x/train"], "/proc/x: No such file or directory"),
    ("import_tf_pipeline", ["{missing}"], "{missing}: No such file or directory"),
    ("import_tf_pipeline", ["{file}"], "{file}:1: expected a field name"),
])
def test_unusable_paths_are_one_clear_error(tmp_path, short_video, tool, args, named):
    names = {"voc": make_voc(str(tmp_path / "voc")), "file": _write(tmp_path / "notes.txt", "{x", False),
             "video": short_video, "missing": str(tmp_path / "missing.config")}
    assert_user_error(run_tool(tool, *[a.format(**names) for a in args]), named.format(**names))


MORE_BAD_INPUTS = [  # (tool, arguments, what the error line names); before: 5 tracebacks, 13 exit status 1
    ("check_dataset", ["--data", "{t}/nope"], "{t}/nope: no such file or folder"),
    ("check_dataset", ["--data", "{list}"], "expected a COCO instances JSON object"),
    ("check_dataset", ["--data", "{garbage}"], "{garbage}:1: malformed JSON"),
    ("check_dataset", ["--data", "{notes}"], "cannot tell the dataset format of this file; pass --format"),
    ("check_dataset", ["--data", "{badvoc}", "--fail-on-problems"], "a.xml: malformed XML"),
    ("check_dataset", ["--data", "{voc}", "--snippets", "a,b,c"], "--snippets 'a,b,c': not numbers"),
    ("check_dataset", ["--data", "{voc}", "--set", "NOPE=1"], "unknown key(s) ['NOPE'] for FORMAT voc"),
    ("check_dataset", ["--data", "{voc}", "--set", "CHECK_IMAGES=full"], "CHECK_IMAGES must be one of"),
    ("check_dataset", ["--data", "{voc}", "--classes", "{t}/nope.txt"], "nope.txt: classes file not found"),
    ("check_dataset", ["--data", "{voc}", "--split", "nosuch"], "split 'nosuch' not found"),
    ("pack_records", ["--data", "{t}/nope", "--out", "{t}/p"], "no such file or folder"),
    ("evaluate", ["--gt", "{voc}", "--dets", "{garbage}", "--metric", "voc"], "--dets: {garbage}: not valid JSON"),
    ("evaluate", ["--gt", "{voc}", "--dets", "{t}/nope.json", "--metric", "voc"], "--dets: [Errno 2]"),
    ("evaluate", ["--gt", "{voc}", "--dets", "{list}", "--metric", "voc"], "entry 0: expected an object"),
    ("evaluate", ["--gt", "{t}/nope", "--dets", "{list}", "--metric", "voc"], "--gt {t}/nope: no such file"),
    ("evaluate", ["--gt", "{garbage}", "--dets", "{list}", "--metric", "coco"], "--gt: {garbage}:1: malformed JSON"),
    ("evaluate", ["--gt", "{voc}", "--dets", "{list}", "--metric", "voc", "--max-height", "-3"], "--max-height -3"),
    ("evaluate", ["--gt", "{voc}", "--dets", "{list}", "--metric", "coco", "--iou", "0.5"], "does not apply to"),
    ("extract_frames", ["{t}/nope.mp4", "{t}/o"], "nope.mp4: video file not found"),
    ("extract_frames", ["{notes}", "{t}/o"], "cannot open video"),
    ("extract_frames", ["{video}", "{t}/o", "--end", "0"], "--end 0: must be after --start 0"),
    ("extract_frames", ["{video}", "{t}/o", "--start", "inf"], "--start inf: not a finite number"),
    ("extract_frames", ["{video}", "{t}/o", "--pattern", "%s"], "must end in an image extension"),
    ("infer", ["--model", "{voc}", "--input", "{video}", "--output", "{t}/i"], "no meta.json"),
    ("quantize", ["--model", "{voc}", "--calib", "{video}", "--out", "{t}/q"], "no meta.json"),
]


@pytest.mark.parametrize("tool, args, named", MORE_BAD_INPUTS,
                         ids=[f"{case[0]}-{k}" for k, case in enumerate(MORE_BAD_INPUTS)])
def test_more_bad_inputs_are_one_clear_error(tmp_path, short_video, tool, args, named):
    badvoc = tmp_path / "badvoc" / "annotations"
    badvoc.mkdir(parents=True)
    (badvoc / "a.xml").write_text("<annotation><object>")
    names = {"t": str(tmp_path), "voc": make_voc(str(tmp_path / "voc")), "video": short_video,
             "badvoc": str(tmp_path / "badvoc"), "notes": _write(tmp_path / "notes.txt", "x", False),
             "garbage": _write(tmp_path / "garbage.json", "{not json", False),
             "list": _write(tmp_path / "list.json", "[1, 2, 3]", False)}
    assert_user_error(run_tool(tool, *[a.format(**names) for a in args]), named.format(**names))


# ---------------------------------------------------------------- 8. empty input is not a pass

def _empty_sets(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    csv_file = _write(tmp_path / "empty.csv", "", bom=False)
    coco = _write(tmp_path / "empty.json", json.dumps({"images": [], "annotations": [], "categories": []}), False)
    return {"voc": str(voc), "csv": csv_file, "coco": coco}


@pytest.mark.parametrize("fmt", ["voc", "csv", "coco"])
def test_check_dataset_fails_on_an_empty_set(tmp_path, fmt):
    data = _empty_sets(tmp_path)[fmt]
    proc = run_tool("check_dataset", "--data", data, "--fail-on-problems")
    assert_user_error(proc, data, f"({fmt})", "the dataset has no images")   # before: "0 problem(s)", exit 0


def test_check_dataset_calls_a_set_without_boxes_a_problem(tmp_path):
    root = make_voc(str(tmp_path / "voc"), boxes={0: [], 1: []})
    proc = run_tool("check_dataset", "--data", root, "--fail-on-problems")
    assert proc.returncode == 1 and "none of the 2 images has a box" in proc.stdout
    assert run_tool("check_dataset", "--data", root).returncode == 0     # a report, not a failure, unless asked


def test_split_fails_on_an_empty_set_and_on_an_empty_side(tmp_path):
    data = _empty_sets(tmp_path)["voc"]
    assert_user_error(run_tool("split", "--data", data, "--out", tmp_path / "s"), "the dataset has no images")
    one = make_voc(str(tmp_path / "one"), boxes={0: [(1, 1, 9, 9)]})
    assert_user_error(run_tool("split", "--data", one, "--out", tmp_path / "s1"),
                      "--test-fraction 0.2 of 1 image(s) leaves the test list empty")
    assert not (tmp_path / "s1").exists()


def _rec_count(prefix):
    reader = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "r")
    try:
        return len(reader.keys)
    finally:
        reader.close()


def _truncate(path, keep):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep] if keep > 0 else data[:len(data) * 6 // 10])


def test_convert_to_recordio_reports_and_skips_a_truncated_jpeg(tmp_path):
    root = make_voc(str(tmp_path / "voc"))
    _truncate(os.path.join(root, "images", "frame1.jpg"), 0)   # 60 % of the file: OpenCV decodes it grey
    prefix = str(tmp_path / "rec" / "train")
    proc = run_tool("convert", "--data", root, "--to", "recordio", "--out", prefix)
    assert proc.returncode == 0, proc.stderr
    assert "frame1.jpg" in proc.stderr and "truncated or corrupt JPEG" in proc.stderr   # said at load time
    assert "1 image(s) skipped" in proc.stdout and _rec_count(prefix) == 2
    # without the load-time check, the packer's own decode check catches it (and says how many)
    proc = run_tool("convert", "--data", root, "--to", "recordio", "--out", prefix + "2",
                    "--set", "CHECK_IMAGES=exists")
    assert proc.returncode == 0, proc.stderr
    assert "1 image(s) left out because they fail to decode (first: " in proc.stderr and "frame1.jpg" in proc.stderr
    assert _rec_count(prefix + "2") == 2
    back = D.load_recordio(prefix + "2")
    assert sorted(r.image_id for r in back) == ["images/frame0", "images/frame2"]
    for rec in back:                       # what was packed decodes
        assert D.read_image(rec.image).shape == (48, 64, 3)


def test_pack_records_decode_checks_a_jpeg_with_a_valid_end_but_garbage_inside(tmp_path):
    root = make_voc(str(tmp_path / "voc"))
    path = os.path.join(root, "images", "frame2.jpg")
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")  # markers right, content not
    proc = run_tool("pack_records", "--data", root, "--out", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    assert "1 image(s) not packed because they fail to decode" in proc.stderr and "frame2.jpg" in proc.stderr
    assert _rec_count(str(tmp_path / "p")) == 2


def test_convert_of_an_empty_set_is_an_error(tmp_path):
    data = _empty_sets(tmp_path)["coco"]
    assert_user_error(run_tool("convert", "--data", data, "--to", "csv", "--out", tmp_path / "o.csv"),
                      "nothing to convert, the dataset has no images")


# ------------------------------------------------------------------------------- 9. smaller ones

def test_a_coco_results_list_given_as_a_dataset_says_what_the_file_is(tmp_path):
    results = _write(tmp_path / "dets.json", json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4],
                                                           "score": 0.5}]), bom=False)
    for proc in (run_tool("check_dataset", "--data", results),
                 run_tool("evaluate", "--gt", results, "--dets", results, "--metric", "coco"),
                 run_tool("convert", "--data", results, "--to", "csv", "--out", tmp_path / "o.csv")):
        assert_user_error(proc, results, "this is a COCO results (detections) list of 1 entries, not a dataset")


def test_bad_coco_categories_name_the_entry(tmp_path):
    bad = _write(tmp_path / "bad.json", json.dumps({"images": [], "categories": [{"name": "radar"}]}), False)
    assert_user_error(run_tool("check_dataset", "--data", bad), "categories[0] needs an integer 'id'")


def _damaged_images(root):
    """frame0: 100 bytes; frame1: cut mid-scan; frame2 intact; frame3 with bytes after its end marker
    (as some phones append); frame4 a truncated PNG."""
    images = os.path.join(root, "images")
    _truncate(os.path.join(images, "frame0.jpg"), 100)
    _truncate(os.path.join(images, "frame1.jpg"), 0)
    with open(os.path.join(images, "frame3.jpg"), "ab") as f:
        f.write(os.urandom(8192))
    os.remove(os.path.join(images, "frame4.jpg"))
    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    with open(os.path.join(images, "frame4.png"), "wb") as f:
        f.write(png.tobytes()[:len(png) // 2])


def test_truncated_images_are_reported_and_skipped_at_load_not_mid_epoch(tmp_path):
    boxes = {k: [(5, 5, 20, 20)] for k in range(5)}
    root = make_voc(str(tmp_path / "voc"), boxes=boxes)
    with open(os.path.join(root, "annotations", "frame4.xml"), "w") as f:
        f.write(voc_xml("frame4.png", boxes[4]))
    _damaged_images(root)
    dataset = D.load_dataset({"FORMAT": "voc", "ROOT": root})      # the default CHECK_IMAGES: intact
    assert sorted(r.image_id for r in dataset) == ["images/frame2", "images/frame3"]
    messages = {os.path.basename(i["message"].split(":")[0]): i["message"] for i in dataset.report.issues}
    assert set(messages) == {"frame0.jpg", "frame1.jpg", "frame4.png"}
    assert "truncated or corrupt JPEG (100 bytes" in messages["frame0.jpg"]
    assert "truncated or corrupt PNG" in messages["frame4.png"]
    assert dataset.report.skipped_images == 3
    for rec in dataset:                    # everything kept decodes, as training will read it
        assert D.read_image(rec.image).shape == (48, 64, 3)
    # the cheaper 'exists' check lets them through; verify_images (a trainer calls it once) drops them
    loose = D.load_dataset({"FORMAT": "voc", "ROOT": root, "CHECK_IMAGES": "exists"})
    assert len(loose) == 5
    checked = D.verify_images(loose, progress=False)
    assert sorted(r.image_id for r in checked) == ["images/frame2", "images/frame3"]
    assert checked.report.skipped_images == 3
    proc = run_tool("check_dataset", "--data", root, "--fail-on-problems")
    assert proc.returncode == 1 and "frame0.jpg: truncated or corrupt JPEG" in proc.stdout
    with pytest.raises(DatasetError, match="CHECK_IMAGES must be one of none|exists|intact|header|decode"):
        D.load_dataset({"FORMAT": "voc", "ROOT": root, "CHECK_IMAGES": "full"})


def test_the_truncation_check_holds_after_gluoncv_made_pillow_tolerant(tmp_path):
    import gluoncv.data  # noqa: F401 - sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True for the whole process
    from PIL import ImageFile
    assert ImageFile.LOAD_TRUNCATED_IMAGES
    path = str(tmp_path / "cut.jpg")
    write_jpeg(path)
    _truncate(path, 0)
    with pytest.raises(D.ImageReadError, match="truncated or corrupt JPEG"):
        D.check_image(path, "intact")
    assert ImageFile.LOAD_TRUNCATED_IMAGES          # left as gluoncv set it


def test_verify_images_caches_what_passed(tmp_path, monkeypatch):
    root = make_voc(str(tmp_path / "voc"))
    cache = str(tmp_path / "cache" / "image_checks.json")
    dataset = D.load_dataset({"FORMAT": "voc", "ROOT": root})
    assert len(D.verify_images(dataset, cache_path=cache, progress=False)) == 3
    decoded = []
    real = D.io.read_image
    monkeypatch.setattr(D.io, "read_image", lambda path: decoded.append(path) or real(path))
    assert len(D.verify_images(dataset, cache_path=cache, progress=False)) == 3 and decoded == []
    _truncate(dataset[1].image, 0)                                   # changed file: checked again
    assert len(D.verify_images(dataset, cache_path=cache, progress=False)) == 2
    assert sorted(json.load(open(cache))) == sorted([dataset[0].image, dataset[2].image])


def test_a_neighbour_frame_that_cannot_be_read_is_replaced_by_the_key_frame_and_reported_once(tmp_path):
    key = str(tmp_path / "000010.jpg")
    write_jpeg(key, seed=3)
    neighbour = str(tmp_path / "000011.jpg")
    with open(neighbour, "wb") as f:
        f.write(b"\xff\xd8\xff" + b"\0" * 97)                     # 100 bytes: OpenCV cannot decode it
    report = D.DatasetReport("train", log=False)
    for _ in range(3):                                              # three epochs
        np.testing.assert_array_equal(D.read_image_or_fallback(neighbour, key, report), D.read_image(key))
    assert len(report.issues) == 1 and report.issues[0]["file"] == neighbour
    assert report.issues[0]["message"].endswith(f"{key} used instead")
    with pytest.raises(D.ImageReadError, match="000011.jpg"):       # a failing fallback is an error
        D.read_image_or_fallback(str(tmp_path / "missing.jpg"), neighbour)


# ------------------------------------------------------- 10. evaluation needs no image files

def _coco_case(folder, sizes=True):
    """GT of 3 images (no image files) and detections: 2 hits, 1 miss, 1 false positive."""
    os.makedirs(folder, exist_ok=True)
    images = [{"id": k, "file_name": f"img{k}.jpg", **({"width": 100, "height": 80} if sizes else {})}
              for k in (1, 2, 3)]
    anns = [{"id": k, "image_id": k, "category_id": 7, "bbox": [10 * k, 10, 30, 20], "area": 600, "iscrowd": 0}
            for k in (1, 2, 3)]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "radar"}]}
    dets = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 30, 20], "score": 0.9},
            {"image_id": 2, "category_id": 7, "bbox": [21, 11, 9, 9], "score": 0.8},
            {"image_id": 3, "category_id": 7, "bbox": [60, 50, 20, 20], "score": 0.95}]
    gt_path, det_path = os.path.join(folder, "gt.json"), os.path.join(folder, "dets.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(det_path, "w") as f:
        json.dump(dets, f)
    return gt_path, det_path


def test_evaluate_coco_ground_truth_without_image_files_equals_pycocotools(tmp_path):
    import contextlib
    import io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt_path, det_path = _coco_case(str(tmp_path))
    out = tmp_path / "r.json"
    proc = run_tool("evaluate", "--gt", gt_path, "--dets", det_path, "--metric", "coco", "--out", out)
    assert proc.returncode == 0, proc.stderr                 # before: "the dataset has no images"
    assert "warning" not in proc.stderr
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        evaluator = COCOeval(gt, gt.loadRes(det_path), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    result = json.loads(out.read_text())
    assert result["mAP"] == pytest.approx(evaluator.stats[0], abs=1e-6)
    assert result["stats"]["AP50"] == pytest.approx(evaluator.stats[1], abs=1e-6)


def test_evaluate_says_how_many_images_it_could_not_use_and_why(tmp_path):
    gt_path, det_path = _coco_case(str(tmp_path))
    gt = json.load(open(gt_path))
    del gt["images"][2]["width"]          # no size in the annotation and no file to read it from
    json.dump(gt, open(gt_path, "w"))
    out = tmp_path / "r.json"
    proc = run_tool("evaluate", "--gt", gt_path, "--dets", det_path, "--metric", "voc", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "warning: 1 ground-truth image(s) left out of the evaluation" in proc.stderr
    assert "img3.jpg: image file not found" in proc.stderr
    assert "warning: 1 detection(s) on images left out of the ground truth are not scored" in proc.stderr
    result = json.loads(out.read_text())
    # img1 and img2 remain: the hit on img1 (IoU 1) and the box on img2 (IoU 9*9 / (30*20) = 0.135: FP)
    # -> precision 1 then 1/2 at recall 1/2 -> AP 1/2
    assert result["gt"]["images"] == 2 and result["dets"]["unscored"] == 1
    assert result["mAP"] == pytest.approx(0.5)
    for image in gt["images"]:
        image.pop("width", None)
    json.dump(gt, open(gt_path, "w"))
    assert_user_error(run_tool("evaluate", "--gt", gt_path, "--dets", det_path, "--metric", "voc"),
                      "no image of the ground truth can be evaluated: 3 ground-truth image(s) left out")


def test_evaluate_voc_folder_without_images(tmp_path):
    root = make_voc(str(tmp_path / "voc"), images=False)
    dets = [{"image_id": f"frame{k}", "category": "radar", "score": 0.5,
             "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]}
            for k, b in RADAR_BOXES.items() for x1, y1, x2, y2 in b]
    out = tmp_path / "r.json"
    proc = run_tool("evaluate", "--gt", root, "--dets", _write(tmp_path / "d.json", json.dumps(dets), False),
                    "--metric", "voc07", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["mAP"] == pytest.approx(1.0)


# -------------------------------------------- 11. ImageNet VID motion breakdown as the official code

def _motion_case():
    """Three frames of one video, class 'a' (the AP is worked by hand below):
    F0: g1 [0,0,100,100] motion 0.95 (slow), g2 [200,0,300,100] motion 0.5 (fast);
        det A exactly on g1 (0.9), det C exactly on g2 (0.3)
    F1: no gt; det X [10,10,50,50] (0.99)
    F2: g3 [500,500,600,600] motion 1.0 (slow; a uint8 1 in the official file); det B exactly on g3 (0.5)"""
    from lib.dataset import Record
    f0 = Record(image="/v/0.JPEG", width=1000, height=1000, boxes=[[0, 0, 100, 100], [200, 0, 300, 100]],
                labels=[0, 0], video="v", frame=0)
    f1 = Record(image="/v/1.JPEG", width=1000, height=1000, video="v", frame=1)
    f2 = Record(image="/v/2.JPEG", width=1000, height=1000, boxes=[[500, 500, 600, 600]], labels=[0],
                video="v", frame=2)
    det = lambda boxes, scores: (np.array(boxes, float).reshape(-1, 4), np.array(scores, float),  # noqa: E731
                                 np.zeros(len(scores), np.int64))
    dets = [det([[0, 0, 100, 100], [200, 0, 300, 100]], [0.9, 0.3]), det([[10, 10, 50, 50]], [0.99]),
            det([[500, 500, 600, 600]], [0.5])]
    motion = [np.array([0.95, 0.5]), np.zeros(0), np.array([1.0])]
    return [f0, f1, f2], dets, motion


# Detections by confidence: X 0.99 (F1, no gt), A 0.9 (g1), B 0.5 (g3), C 0.3 (g2).
# Empty weight population (official): 0.95, 0.5, 1.0 and ONE pseudo 0 for the gt-less F1.
# all [0, 1]: X FP 1 (4/4 in range); A, B, C TP; npos 3. prec 0, 1/2, 2/3, 3/4 at recall 0, 1/3, 2/3, 1:
#   envelope 3/4 everywhere -> AP 3/4.
# slow [0.9, 1]: X FP 2/4 = 1/2; A TP, B TP; C on the ignored g2: nothing; npos 2.
#   prec 1/1.5 = 2/3 at recall 1/2, 2/2.5 = 4/5 at recall 1 -> AP 4/5  (1/3 pseudo-less: 3/4)
# fast [0, 0.7]: X FP 2/4 = 1/2 (0.5 and the pseudo 0); A, B on ignored gts: nothing; C TP; npos 1.
#   prec 1/1.5 = 2/3 at recall 1 -> AP 2/3   (pseudo-less: X FP 1/3 -> 3/4)
# medium [0.7, 0.9]: no gt -> None.
HAND = {"all": 0.75, "slow": 0.8, "fast": 2 / 3, "medium": None}


def test_vid_motion_breakdown_counts_gt_less_frames_like_the_official_evaluator():
    from lib.eval import vid_ap
    records, dets, motion = _motion_case()
    result = vid_ap(records, dets, ["a"], precomputed_motion_ious=motion, area=False)
    assert result["mAP"] == pytest.approx(HAND["all"])
    for name in ("slow", "fast"):
        assert result["motion"][name]["mAP"] == pytest.approx(HAND[name]), name
    assert result["motion"]["medium"]["mAP"] is None


def _write_motion_mat(path, cells):
    import scipy.io
    array = np.empty((len(cells), 1), dtype=object)
    for k, cell in enumerate(cells):
        array[k, 0] = cell
    scipy.io.savemat(path, {"motion_iou": array})


OFFICIAL_LAYOUT = [np.array([[0.95], [0.5]]), np.zeros((1, 0)), np.array([[1]], np.uint8)]


def test_read_motion_iou_mat_reads_the_official_layout_and_names_what_does_not_fit(tmp_path):
    from lib.eval.vid import read_motion_iou_mat
    records, _, motion = _motion_case()
    path = str(tmp_path / "m.mat")
    _write_motion_mat(path, OFFICIAL_LAYOUT)
    got = read_motion_iou_mat(path, records)
    assert [g.tolist() for g in got] == [m.tolist() for m in motion] and all(g.dtype == np.float64 for g in got)
    with pytest.raises(ValueError, match=r"m.mat: 3 frames, but the ground truth has 2"):
        read_motion_iou_mat(path, records[:2])
    _write_motion_mat(path, [np.array([[0.95]]), np.zeros((1, 0)), np.array([[1.0]])])
    with pytest.raises(ValueError, match=r"frame 0 \(0\) has 1 motion IoU value\(s\) for 2 gt box\(es\)"):
        read_motion_iou_mat(path, records)
    _write_motion_mat(path, [np.array([[0.95], [1.5]]), np.zeros((1, 0)), np.array([[1.0]])])
    with pytest.raises(ValueError, match="outside"):
        read_motion_iou_mat(path, records)
    import scipy.io
    scipy.io.savemat(path, {"other": np.zeros(3)})
    with pytest.raises(ValueError, match="no 'motion_iou' variable"):
        read_motion_iou_mat(path, records)
    (tmp_path / "text.mat").write_text("not a mat file")
    with pytest.raises(ValueError, match="not a readable MATLAB .mat file"):
        read_motion_iou_mat(str(tmp_path / "text.mat"), records)


def _vid_layout(root):
    """The three frames as ImageNet VID XML only (Annotations/VID/train/v/00000k.xml, no images)."""
    from lib.dataset.vid import write_vid_frame
    records, dets, _ = _motion_case()
    entries = []
    for rec, (boxes, scores, _) in zip(records, dets):
        write_vid_frame(str(root), "train", "v", rec.frame, rec, ["a"])
        for box, score in zip(boxes, scores):
            entries.append({"image_id": f"Data/VID/train/v/{rec.frame:06d}", "category": "a", "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    (root / "classes.txt").write_text("a\n")
    (root / "dets.json").write_text(json.dumps(entries))
    return str(root), str(root / "classes.txt"), str(root / "dets.json")


def test_evaluate_vid_with_the_official_motion_iou_file(tmp_path):
    root, classes, dets = _vid_layout(tmp_path)
    mat = str(tmp_path / "imagenet_vid_groundtruth_motion_iou.mat")
    _write_motion_mat(mat, OFFICIAL_LAYOUT)
    out = tmp_path / "r.json"
    proc = run_tool("evaluate", "--gt", root, "--format", "vid", "--split", "train", "--classes", classes,
                    "--dets", dets, "--metric", "vid", "--motion-iou", mat, "--out", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["mAP"] == pytest.approx(HAND["all"])
    assert result["motion"]["slow"]["mAP"] == pytest.approx(HAND["slow"])
    assert result["motion"]["fast"]["mAP"] == pytest.approx(HAND["fast"])
    assert result["motion"]["medium"]["mAP"] is None and result["motion_iou"]["precomputed"] is True
    _write_motion_mat(mat, OFFICIAL_LAYOUT[:2])
    assert_user_error(run_tool("evaluate", "--gt", root, "--format", "vid", "--split", "train", "--classes", classes,
                               "--dets", dets, "--metric", "vid", "--motion-iou", mat),
                      "--motion-iou", "2 frames, but the ground truth has 3")
    assert_user_error(run_tool("evaluate", "--gt", root, "--format", "vid", "--split", "train", "--classes", classes,
                               "--dets", dets, "--metric", "voc", "--motion-iou", mat),
                      "--motion-iou applies to the vid metric only")
    assert_user_error(run_tool("evaluate", "--gt", root, "--format", "vid", "--split", "train", "--classes", classes,
                               "--dets", dets, "--metric", "vid", "--motion-iou", tmp_path / "nope.mat"),
                      "--motion-iou", "no such file")


# --------------------------------------- synthetic data: parameters checked, generated once, atomically

def _ensure(root, seed):
    from lib.dataset.synthetic import ensure_synthetic
    ensure_synthetic(root, {"seed": seed, "num_videos": 1, "num_frames": 3, "width": 48, "height": 32,
                            "num_classes": 1, "max_objects": 1, "fast_fraction": 0.0, "degraded_fraction": 0.0,
                            "split": "train"})
    return sorted(os.listdir(os.path.dirname(root)))


def test_synthetic_data_from_two_processes_is_generated_once_and_never_seen_half_written(tmp_path):
    root = str(tmp_path / "synth")
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        listings = pool.starmap(_ensure, [(root, 4), (root, 4)])
    assert listings[0] == listings[1] == ["synth", "synth.lock"]     # no temporary folder left
    spec = {"FORMAT": "synthetic", "ROOT": root, "SEED": 4, "NUM_VIDEOS": 1, "NUM_FRAMES": 3, "WIDTH": 48,
            "HEIGHT": 32, "NUM_CLASSES": 1, "MAX_OBJECTS": 1, "FAST_FRACTION": 0.0}
    assert len(D.load_dataset(spec)) == 3
    with pytest.raises(DatasetError, match=r"synth: generated with NUM_FRAMES 3, this spec asks for 5; delete"):
        D.load_dataset(dict(spec, NUM_FRAMES=5))           # before: the 3 old frames were used silently
    assert len(D.load_dataset({"FORMAT": "synthetic", "ROOT": root})) == 3   # pointing at it only: fine
    other = tmp_path / "mine"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="holds no synthetic.json"):
        D.load_dataset({"FORMAT": "synthetic", "ROOT": str(other)})
    assert (other / "photo.jpg").exists()


# ---------------------------------------------------------------- 12. data/ in a fresh clone

def test_data_folder_is_tracked():
    if not os.path.isdir(os.path.join(PROJECT_ROOT, ".git")) and not os.path.isfile(os.path.join(PROJECT_ROOT, ".git")):
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "data"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert "data/README.md" in tracked.stdout.split()
    for generated in ("data/synthetic/tiny/classes.txt", "data/synthetic/tiny.lock", "data/mine.lock",
                      "data/cache/image_checks.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", generated], cwd=PROJECT_ROOT)
        assert ignored.returncode == 0, generated            # generated data and caches stay out of git


# ------------------------------------ 5. one convention for every command, the commands run as processes

CONSOLE_SCRIPTS = ("m2det-train", "m2det-evaluate", "m2det-convert-model", "m2det-debug")
TINY_M2DET = os.path.join(PROJECT_ROOT, "experiments", "m2det", "cfgs", "tiny.yaml")
TINY_LSTM = os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "cfgs", "tiny_test.yaml")
TINY_FGFA = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):     # as on a server or in CI: no window can open
        env.pop(name, None)
    return env


def run_script(script, *args, timeout=240, cwd=None):
    """``python <script> args`` (a path under the project root, or ``-m module``) as the user runs it."""
    head = ["-m", script[3:]] if script.startswith("-m ") else [os.path.join(PROJECT_ROOT, script)]
    return subprocess.run([sys.executable, *head, *map(str, args)], cwd=cwd or PROJECT_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def console_script(name):
    """The installed console script (``pip install -e .`` puts it beside the interpreter)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    path = path if os.path.isfile(path) else shutil.which(name)
    assert path, f"{name} is not installed: pip install -e . (setup.py console_scripts)"
    return path


def run_console(name, *args, timeout=240, cwd=None):
    return subprocess.run([console_script(name), *map(str, args)], cwd=cwd or PROJECT_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_every_m2det_console_script_is_installed_and_runs():
    for name in CONSOLE_SCRIPTS:
        proc = run_console(name, "--help", timeout=120)
        assert proc.returncode == 0 and f"usage: {name}" in proc.stdout, (name, proc.stderr)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs shared by the command tests: a text file, an empty folder, a 6-frame 10 fps clip, a folder of
    frames of mixed sizes, a CSV set whose BOM classes file lists another class, a truncated .params, a
    run folder of another detector family (with a checkpoint) and a tiny LSTM-SSD config + random model."""
    from lib.train.run import RunFolder
    folder = tmp_path_factory.mktemp("files")
    out = {"dir": str(folder), "notes": _write(folder / "notes.txt", "just text\n", False)}
    (folder / "empty").mkdir()
    out["empty"] = str(folder / "empty")
    out["clip"] = str(folder / "clip.avi")
    writer = cv2.VideoWriter(out["clip"], cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for k in range(6):
        writer.write(np.full((48, 64, 3), 30 * k + 10, np.uint8))
    writer.release()
    mixed = folder / "mixed"
    mixed.mkdir()
    for k, (w, h) in enumerate([(64, 48), (96, 48), (64, 48), (40, 40)]):
        cv2.imwrite(str(mixed / f"f{k}.png"), np.full((h, w, 3), 60 * k + 20, np.uint8))
    out["mixed"] = str(mixed)
    out["ann"], out["classes"] = _csv_set(str(folder / "csv"), bom=True)
    out["other_classes"] = _write(folder / "csv" / "other_classes.csv", "car,0\n", bom=True)
    out["yaml_bad"] = _write(folder / "bad.yaml", "TRAIN: [1, 2\n", False)
    # LSTM-SSD: the tiny test config on a synthetic set under tmp, and a randomly initialised model
    from lstm_ssd import config as lstm_config
    from lstm_ssd.detector import build_detector, save_model
    spec = (f"{{FORMAT: synthetic, ROOT: {folder / 'synthetic'}, SEED: 14, NUM_VIDEOS: 1, NUM_FRAMES: 4, "
            f"WIDTH: 128, HEIGHT: 128, NUM_CLASSES: 2, MAX_OBJECTS: 1, SPLIT: train}}")
    out["lstm_cfg"] = _write(folder / "lstm_tiny.yaml", f"_BASE_: {TINY_LSTM}\nOUTPUT_DIR: {folder / 'lstm_run'}\n"
                                                        f"PHASE: [test]\nDATASET:\n  TRAIN: {spec}\n  VAL: {spec}\n",
                             False)
    mx.random.seed(0)
    net = build_detector(lstm_config.load(out["lstm_cfg"]))
    net(mx.nd.zeros((1, 1, 3) + net.image_hw))
    out["lstm_model"] = save_model(net, str(folder / "lstm_tiny.params"))
    data = open(out["lstm_model"], "rb").read()
    out["truncated"] = str(folder / "truncated.params")
    with open(out["truncated"], "wb") as f:
        f.write(data[:len(data) // 3])
    # a run folder of another family (R-FCN) with a checkpoint of its own
    other = folder / "rfcn_run"
    RunFolder(str(other)).write("rfcn", ["radar"], {"NAME": "rfcn_run"})
    from lib.train import CheckpointManager
    block = mx.gluon.nn.Dense(3, in_units=4)
    block.initialize()
    CheckpointManager(str(other)).save(1, block)
    out["rfcn_run"] = str(other)
    return out


def _video_of(path):
    frames, rate = _video_frames(path)
    return len(frames), rate, frames


ENTRY_POINT_ERRORS = [   # (script, arguments, named in the error line); before: a traceback (19) or exit 1 (2)
    ("experiments/lstm_ssd/train_test.py", ["--cfg", "{dir}/nope.yaml"], "config file not found: {dir}/nope.yaml"),
    ("experiments/lstm_ssd/train_test.py", ["--cfg", "{yaml_bad}"], "{yaml_bad}: line 2, column 1 invalid yaml"),
    ("experiments/lstm_ssd/train_test.py", ["--cfg", "{lstm_cfg}", "--set", "TRAIN.EPOCHS=abc"],
     "'TRAIN.EPOCHS' must be int, got str 'abc'"),
    ("experiments/lstm_ssd/train_test.py", ["--cfg", "{lstm_cfg}", "--set", "PHASE=[tset]"], "got 'tset'"),
    ("experiments/lstm_ssd/train_test.py", ["--cfg", "{lstm_cfg}", "--model", "{dir}/nope.params"],
     "model file not found: {dir}/nope.params"),
    ("experiments/lstm_ssd/train_test.py", ["--cfg", "{lstm_cfg}", "--model", "{truncated}"],
     "{truncated}: cannot read parameters"),
    ("experiments/lstm_ssd/train_test.py", ["--cfg", "{lstm_cfg}", "--set", "OUTPUT_DIR={notes}"],
     "{notes}: is a file, and a folder is needed here"),
    ("experiments/m2det/train_test.py", ["--cfg", "{dir}/nope.yaml"], "{dir}/nope.yaml"),
    ("experiments/m2det/train_test.py", ["--cfg", TINY_M2DET, "--test-only", "--set", "OUTPUT_DIR={empty}",
                                         "--set", "DATASET.VAL={{FORMAT: csv, ANNOTATIONS: {ann}}}"],
     "no complete checkpoint 'ckpt-*.json' in {empty}"),
    ("-m fgfa.flow_check", ["--cfg", TINY_FGFA, "--model", "{dir}/nope.params", "--out", "{dir}/flow"],
     "{dir}/nope.params"),
    ("-m lstm_ssd.prune", ["--cfg", "{lstm_cfg}", "--model", "{lstm_model}", "--ratio", "1.5"], "--ratio 1.5"),
    ("-m lstm_ssd.prune", ["--cfg", "{lstm_cfg}", "--model", "{truncated}"], "{truncated}: cannot read parameters"),
    ("-m lstm_ssd.export", ["--cfg", "{lstm_cfg}", "--model", "{dir}/nope.params", "--output", "{dir}/e/x"],
     "{dir}/nope.params"),
    ("-m lstm_ssd.export", ["--cfg", "{dir}/nope.yaml", "--model", "{lstm_model}", "--output", "{dir}/e/x"],
     "{dir}/nope.yaml"),
    ("experiments/custom/detect_video.py", ["--model", "{dir}/nope", "--cfg", "experiments/custom/tiny_m2det.yaml",
                                            "--input", "{clip}", "--output", "{dir}/dv"], "{dir}/nope: no meta.json"),
    ("experiments/custom/detect_video.py", ["--model", "{dir}/nope", "--cfg", "experiments/custom/tiny_m2det.yaml",
                                            "--input", "{clip}", "--output", "{dir}/dv", "--thresh", "2"],
     "--thresh 2: must be in [0, 1]"),
]


@pytest.mark.parametrize("script, args, named", ENTRY_POINT_ERRORS,
                         ids=[f"{case[0].split('/')[-1]}-{k}" for k, case in enumerate(ENTRY_POINT_ERRORS)])
def test_entry_points_give_one_error_line_for_user_errors(files, script, args, named):
    assert_user_error(run_script(script, *[a.format(**files) for a in args]), named.format(**files))


# -------------------------------------------------------------- the demos check before they train

DEMOS = ("lstm_ssd/demo.py", "fgfa/demo.py")


@pytest.mark.parametrize("demo", DEMOS)
@pytest.mark.parametrize("args, named", [
    (["--input", "{dir}/nope.mp4"], "{dir}/nope.mp4: no such file or folder"),
    (["--input", "{notes}"], "{notes}: OpenCV cannot open this video"),
    (["--input", "{empty}"], "{empty}: no images"),
    (["--input", "{clip}", "--output", "{notes}"], "--output {notes}: is a file, and a folder is needed here"),
    (["--input", "{clip}", "--fps", "0"], "--fps 0"),
    (["--input", "{clip}", "--set", "TEST.NOPE=1"], "unknown key 'TEST.NOPE'"),
])
def test_demos_check_what_they_are_given_before_training_the_default_model(files, demo, args, named):
    """Run with the default model (no --cfg / --model): with model/ empty the demos used to train it for
    minutes first. Whether or not model/ holds it, a bad input is now one error line and no training."""
    args = [a.format(**files) for a in args]
    if "--output" not in args:
        args += ["--output", os.path.join(files["dir"], "demo_out")]
    proc = run_script(demo, *args, timeout=120)
    assert_user_error(proc, named.format(**files))
    assert "training it" not in proc.stdout


@pytest.mark.parametrize("demo", DEMOS)
def test_demos_check_cfg_and_model_paths(files, demo, tmp_path):
    assert_user_error(run_script(demo, "--input", files["clip"], "--model", f"{files['dir']}/none.params",
                                 "--output", tmp_path), f"--model {files['dir']}/none.params: model file not found")
    assert_user_error(run_script(demo, "--input", files["clip"], "--model", files["lstm_model"],
                                 "--cfg", f"{files['dir']}/none.yaml", "--output", tmp_path),
                      f"--cfg {files['dir']}/none.yaml")


def test_lstm_ssd_demo_streams_a_video_at_its_frame_rate_and_keeps_every_frame(files, tmp_path):
    common = ["--cfg", files["lstm_cfg"], "--model", files["lstm_model"], "--threshold", "0.0"]
    proc = run_script("lstm_ssd/demo.py", *common, "--input", files["clip"], "--output", tmp_path / "v")
    assert proc.returncode == 0, proc.stderr
    count, rate, frames = _video_of(str(tmp_path / "v" / "demo.mp4"))
    assert count == 6 and rate == 10 and frames[0].shape == (48, 64, 3)        # the clip's 6 frames at 10 fps
    assert sorted(os.listdir(tmp_path / "v" / "frames")) == [f"{k:06d}.jpg" for k in range(6)]
    assert "6 frames, policy large" in proc.stdout
    # frames of mixed sizes: every one in the MP4 (scaled into the first one's size), said once
    proc = run_script("lstm_ssd/demo.py", *common, "--input", files["mixed"], "--output", tmp_path / "m",
                      "--fps", "12.5", "--set", "TEST.SCORE_THRESH=0.2")
    assert proc.returncode == 0, proc.stderr
    count, rate, frames = _video_of(str(tmp_path / "m" / "demo.mp4"))
    assert count == 4 and rate == 12.5 and all(f.shape == (48, 64, 3) for f in frames)
    assert proc.stderr.count("note: ") == 1 and "scaled into it" in proc.stderr
    # the box-level memory (TEST.FUSE) on the same mixed frames: a frame of another size starts it afresh
    proc = run_script("lstm_ssd/demo.py", *common, "--input", files["mixed"], "--output", tmp_path / "f",
                      "--set", "TEST.FUSE.ENABLED=true")
    assert proc.returncode == 0, proc.stderr
    assert _video_of(str(tmp_path / "f" / "demo.mp4"))[0] == 4
    assert_user_error(run_script("lstm_ssd/demo.py", *common, "--input", files["clip"], "--output", tmp_path / "g",
                                 "--set", "TEST.FUSE.ENABLED=true", "--set", "TEST.FUSE.DECAY=0"),
                      "TEST.FUSE.DECAY must be in (0, 1], got 0")
    assert_user_error(run_script("lstm_ssd/demo.py", *common, "--input", files["clip"], "--policy", "fastest",
                                 "--output", tmp_path / "p"), "--policy fastest: must be one of")
    assert_user_error(run_script("lstm_ssd/demo.py", "--cfg", files["lstm_cfg"], "--input", files["clip"],
                                 "--output", tmp_path / "c"), "--model is required together with --cfg")


@pytest.fixture(scope="module")
def fgfa_model(files):
    """A randomly initialised tiny FGFA (the tests' config) with the sidecar the demo reads."""
    from fgfa.config import get_config
    from fgfa.train import build_model
    mx.random.seed(0)
    model = build_model(get_config(TINY_FGFA), 2)
    path = os.path.join(files["dir"], "fgfa_model", "tiny.params")
    os.makedirs(os.path.dirname(path))
    model.save_parameters(path)
    _write(os.path.splitext(path)[0] + ".json", json.dumps({"classes": ["disc", "square"], "config": TINY_FGFA}),
           False)
    return path


def test_fgfa_demo_passes_set_overrides_and_keeps_frames_of_mixed_sizes(files, fgfa_model, tmp_path):
    """Before: frames of another size raised ValueError in the video writer (a traceback); --set did not exist."""
    proc = run_script("fgfa/demo.py", "--input", files["mixed"], "--model", fgfa_model, "--output", tmp_path / "o",
                      "--thresh", "0", "--set", "TEST.K=2")
    assert proc.returncode == 0, proc.stderr
    assert "with FGFA K=2, FlowNet flow" in proc.stdout          # the override reached the model's config
    assert proc.stderr.count("note: ") == 1 and "frame f1 is 96x48, the first 64x48" in proc.stderr
    count, rate, frames = _video_of(str(tmp_path / "o" / "demo.mp4"))
    assert count == 4 and rate == 25 and all(f.shape == (48, 64, 3) for f in frames)
    assert sorted(n for n in os.listdir(tmp_path / "o") if n.endswith(".jpg")) == [f"f{k}.jpg" for k in range(4)]
    proc = run_script("fgfa/demo.py", "--input", files["clip"], "--model", fgfa_model, "--output", tmp_path / "v")
    assert proc.returncode == 0, proc.stderr
    assert _video_of(str(tmp_path / "v" / "demo.mp4"))[:2] == (6, 10)     # the source video's rate
    # NETWORK.FLOW=dis on the same model: OpenCV's DIS instead of the FlowNet, every frame written
    proc = run_script("fgfa/demo.py", "--input", files["clip"], "--model", fgfa_model, "--output", tmp_path / "d",
                      "--set", "NETWORK.FLOW=dis", "TEST.K=1")
    assert proc.returncode == 0, proc.stderr
    assert "with FGFA K=1, DIS flow" in proc.stdout
    assert _video_of(str(tmp_path / "d" / "demo.mp4"))[:2] == (6, 10)
    # the box-level memory around the window (TEST.FUSE), on frames of mixed sizes
    proc = run_script("fgfa/demo.py", "--input", files["mixed"], "--model", fgfa_model, "--output", tmp_path / "f",
                      "--set", "TEST.FUSE.ENABLED=true", "TEST.K=1")
    assert proc.returncode == 0, proc.stderr
    assert _video_of(str(tmp_path / "f" / "demo.mp4"))[0] == 4
    assert_user_error(run_script("fgfa/demo.py", "--input", files["clip"], "--model", fgfa_model, "--output",
                                 tmp_path / "t", "--thresh", "2"), "--thresh 2: must be in [0, 1]")
    assert_user_error(run_script("fgfa/demo.py", "--input", files["clip"], "--model", fgfa_model, "--output",
                                 tmp_path / "t", "--set", "NETWORK.NOPE=dis"), "unknown key 'NETWORK.NOPE'")


# ------------------------------------------------------------- training refuses a set without boxes

def test_m2det_train_refuses_a_csv_whose_bom_classes_file_lacks_the_class(files, tmp_path):
    """Before: every box dropped as 'unknown class', training at loss 0.0000, exit status 0."""
    run = tmp_path / "run"
    proc = run_console("m2det-train", "--cfg", TINY_M2DET, "--snapshot-path", run, "csv", files["ann"],
                       files["other_classes"])
    assert_user_error(proc, f"training set (csv {files['ann']})", "none of its 3 images has a box",
                      "unknown class 'radar'", "DATASET.ALLOW_BACKGROUND_ONLY")
    assert not run.exists() or not any(n.startswith("ckpt-") for n in os.listdir(run))


def test_the_recipe_refuses_a_set_without_boxes_unless_asked(files, tmp_path):
    csv_spec = f"{{FORMAT: csv, ANNOTATIONS: {files['ann']}, CLASSES: {files['other_classes']}}}"
    common = ["--cfg", "experiments/custom/tiny_m2det.yaml", "--set", f"DATASET.TRAIN={csv_spec}",
              "--set", f"DATASET.VAL={csv_spec}", "--set", "TRAIN.ITERATIONS=1", "--no-progress"]
    proc = run_script("experiments/custom/train.py", *common, "--set", f"OUTPUT_DIR={tmp_path / 'a'}")
    assert_user_error(proc, "tiny_m2det.yaml: DATASET.TRAIN", "unknown class 'radar'")
    assert not (tmp_path / "a").exists()
    proc = run_script("experiments/custom/train.py", *common, "--set", f"OUTPUT_DIR={tmp_path / 'b'}",
                      "--set", "DATASET.ALLOW_BACKGROUND_ONLY=true")
    assert proc.returncode == 0, proc.stderr                     # asked for: background frames only
    assert json.loads((tmp_path / "b" / "run.json").read_text())["classes"] == ["car"]
    assert any(n.startswith("ckpt-") and n.endswith(".json") for n in os.listdir(tmp_path / "b"))


# --------------------------------------------------------------------------------- m2det commands

def test_m2det_train_snapshot_of_another_family_names_the_family(files, tmp_path):
    """Before: AssertionError from MXNet's load_parameters (an R-FCN run's parameter names)."""
    proc = run_console("m2det-train", "--cfg", TINY_M2DET, "--snapshot", files["rfcn_run"], "--snapshot-path",
                       tmp_path / "run", "csv", files["ann"], files["classes"])
    assert_user_error(proc, f"--snapshot {files['rfcn_run']}", "holds a rfcn run, not m2det")
    assert not (tmp_path / "run").exists()
    proc = run_console("m2det-train", "--cfg", TINY_M2DET, "--snapshot", files["truncated"], "--snapshot-path",
                       tmp_path / "run2", "csv", files["ann"], files["classes"])
    assert_user_error(proc, f"{files['truncated']}: cannot read parameters", "truncated")


@pytest.mark.parametrize("name, args, named", [
    ("m2det-evaluate", ["--model", "{dir}/nope", "csv", "{ann}", "{classes}"], "{dir}/nope"),
    ("m2det-evaluate", ["--model", "{rfcn_run}", "csv", "{ann}", "{classes}"], "holds a rfcn run, not m2det"),
    ("m2det-convert-model", ["{dir}/nope", "{dir}/converted"], "{dir}/nope"),
    ("m2det-train", ["--cfg", "{dir}/nope.yaml", "csv", "{ann}", "{classes}"], "{dir}/nope.yaml"),
    ("m2det-debug", ["--cfg", TINY_M2DET, "--output-dir", "{notes}", "csv", "{ann}", "{classes}"],
     "{notes}: is a file, and a folder is needed here"),
])
def test_m2det_console_scripts_give_one_error_line(files, name, args, named):
    assert_user_error(run_console(name, *[a.format(**files) for a in args]), named.format(**files))


def test_m2det_debug_without_a_window(files, tmp_path):
    """--no-gui (keras-retinanet's flag, before the dataset type) writes the drawings; without a display
    and without --output-dir the drawings go to a folder too (before: Qt aborted the process)."""
    out = tmp_path / "drawings"
    proc = run_console("m2det-debug", "--cfg", TINY_M2DET, "--no-gui", "--output-dir", out, "csv", files["ann"],
                       files["classes"])
    assert proc.returncode == 0, proc.stderr
    coverage = json.loads((out / "anchor_coverage.json").read_text())
    assert coverage["images"] == 3 and coverage["boxes"] == 3            # the CSV's 3 boxes
    assert sorted(n for n in os.listdir(out) if n.endswith(".jpg")) == [f"frame{k}.jpg" for k in range(3)]
    proc = run_console("m2det-debug", "--cfg", TINY_M2DET, "csv", files["ann"], files["classes"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no display" in proc.stderr and proc.stderr.count("note: ") == 1
    default = tmp_path / "output" / "m2det" / "debug"       # relative to the current folder
    assert json.loads((default / "anchor_coverage.json").read_text())["boxes"] == 3


# ------------------------------------------------------------------ results of LSTM-SSD runs stay in the run

def test_lstm_ssd_test_writes_its_results_table_into_the_run_folder(files, tmp_path):
    tracked = {name: open(os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", name), "rb").read()
               for name in ("results.md", "results.csv")}
    out = tmp_path / "run"
    proc = run_script("experiments/lstm_ssd/train_test.py", "--cfg", files["lstm_cfg"], "--model", files["lstm_model"],
                      "--set", f"OUTPUT_DIR={out}", "--note", "hostile")
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["note"] == "hostile" and rows[0]["frames"] == "4"
    assert "| hostile |" in (out / "results.md").read_text()
    for name, data in tracked.items():      # the documentation tables in git are not written
        assert open(os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", name), "rb").read() == data, name
    shared = tmp_path / "tables" / "all.md"
    proc = run_script("experiments/lstm_ssd/train_test.py", "--cfg", files["lstm_cfg"], "--model", files["lstm_model"],
                      "--set", f"OUTPUT_DIR={tmp_path / 'run2'}", f"TEST.RESULTS_TABLE={shared}")
    assert proc.returncode == 0, proc.stderr
    assert shared.exists() and (tmp_path / "tables" / "all.csv").exists()
    assert not (tmp_path / "run2" / "results.md").exists()


# --------------------------------------------------------------------------- lib.tools beyond --help

@pytest.mark.parametrize("args, named", [
    (["--tolerance", "-1"], "--tolerance -1"), (["--tolerance", "nan"], "--tolerance nan"),
    (["--check-frames", "0"], "--check-frames 0"),
    (["--check-input", "{dir}/nope.mp4"], "{dir}/nope.mp4: no such file or folder"),
    (["--out", "{notes}"], "--out {notes}: is a file"),
])
def test_export_refuses_values_that_make_no_sense_before_loading(files, args, named):
    """Before: --tolerance -1 made every ONNX check fail (exit 4), nan passed it; --out a file: a traceback."""
    args = [a.format(**files) for a in args]
    out = [] if "--out" in args else ["--out", os.path.join(files["dir"], "export")]
    proc = run_tool("export", "--model", files["rfcn_run"], "--format", "onnx", *out, *args)
    assert_user_error(proc, named.format(**files))
    assert not os.path.exists(os.path.join(files["dir"], "export"))


@pytest.mark.parametrize("args, named", [
    (["--iou", "0"], "--iou 0: must be in (0, 1]"), (["--iou", "1.5"], "--iou 1.5: must be in (0, 1]"),
    (["--anchors", "{dir}/nope.yaml"], "{dir}/nope.yaml: No such file or directory"),
    (["--anchors", "{yaml_bad}"], "--anchors {yaml_bad}:2: invalid yaml"),
    (["--anchors", "{notes}"], "--anchors {notes}: expected a mapping with TYPE"),
    (["--anchors", "{empty}"], "{empty}: not a run folder"),
    (["--out", "{notes}"], "--out {notes}: is a file"),
])
def test_draw_gives_one_error_line(files, tmp_path, args, named):
    root = make_voc(str(tmp_path / "voc"))
    args = [a.format(**files) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "drawn")]
    assert_user_error(run_tool("draw", "--data", root, *out, *args), named.format(**files))


def test_draw_reads_an_anchor_file_with_a_bom_like_one_without(tmp_path):
    root = make_voc(str(tmp_path / "voc"))
    anchors = ("TYPE: ssd\nIMAGE_SIZE: 64\nFEATURE_SIZES: [8, 4]\nSTEPS: [8, 16]\nMIN_SIZES: [10, 30]\n"
               "MAX_SIZES: [30, 60]\nASPECT_RATIOS: [[2], [2]]\n")
    results = []
    for bom in (False, True):
        path = _write(tmp_path / f"anchors{int(bom)}.yaml", anchors, bom)
        out = tmp_path / f"drawn{int(bom)}"
        proc = run_tool("draw", "--data", root, "--out", out, "--anchors", path)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads((out / "anchor_coverage.json").read_text()))
    assert results[0] == results[1] and results[0]["boxes"] == 3


def test_degrade_does_not_replace_a_file_given_as_out(tmp_path):
    """Before: the file was moved aside (notes.txt.old<pid>) and replaced by the output folder, exit 0."""
    root = make_voc(str(tmp_path / "voc"))
    notes = _write(tmp_path / "notes.txt", "keep me", False)
    assert_user_error(run_tool("degrade", "--data", root, "--out", notes), f"--out {notes}: is a file")
    assert open(notes).read() == "keep me" and sorted(os.listdir(tmp_path)) == ["notes.txt", "voc"]


def test_detect_video_keeps_every_frame_of_mixed_sizes(artifact, files, tmp_path):
    """Before: OpenCV's writer dropped the 2 frames of another size silently (2 of 4 in the MP4)."""
    proc = run_script("experiments/custom/detect_video.py", "--model", artifact, "--cfg",
                      "experiments/custom/tiny_m2det.yaml", "--input", files["mixed"], "--output", tmp_path / "o",
                      "--tiling", "off")
    assert proc.returncode == 0, proc.stderr
    count, rate, _ = _video_of(str(tmp_path / "o" / "annotated.mp4"))
    assert count == 4 and rate == 25 and proc.stderr.count("note: ") == 1


# ------------------------------------------- 6. FGFA neighbours outside the records: reported, key frame used

def test_fgfa_neighbours_reached_through_the_file_pattern_fall_back_to_the_key_frame(tmp_path):
    from fgfa.config import get_config
    from fgfa.data import TrainSamples
    from lib.dataset.synthetic import generate_video_dataset
    full = generate_video_dataset(str(tmp_path / "synth"), seed=5, num_videos=1, num_frames=6, width=64, height=48,
                                  num_classes=2)
    video = full.records[0].video
    assert full.video_info[video]["length"] == 6
    keys = full.subset([0])                                # one record; the other frames via the pattern
    missing = [full.video_info[video]["pattern"] % k for k in range(6)]
    missing = [path for path in missing if os.path.abspath(path) != os.path.abspath(keys[0].image)]
    assert len(missing) == 5
    for path in missing:
        os.remove(path)
    keys.report = D.DatasetReport("keys", log=False)
    samples = TrainSamples(keys, get_config(TINY_FGFA, ["TRAIN.MIN_OFFSET=1", "TRAIN.MAX_OFFSET=2"]), num_neighbors=2)
    for epoch in range(3):
        frames, _, boxes, _ = samples.load(0, np.random.RandomState(epoch))
        assert frames.shape[0] == 3
        np.testing.assert_array_equal(frames[1], frames[0])             # the key frame stands in
        np.testing.assert_array_equal(frames[2], frames[0])
    reported = [issue["file"] for issue in keys.report.issues]
    assert reported and len(reported) == len(set(reported)) and set(reported) <= set(missing)   # once per file
    assert all(issue["message"].endswith(f"{keys[0].image} used instead") for issue in keys.report.issues)


def test_lstm_ssd_default_model_has_a_sidecar_and_is_retrained_for_another_network(files, tmp_path, monkeypatch):
    """The demo's first-run training through the project's command (here on the tiny config): the model, its
    channel counts and a sidecar (classes, network) land in model/; a model of another network is stale."""
    from lstm_ssd import demo
    from lstm_ssd import config as lstm_config
    from lstm_ssd.detector import load_model
    monkeypatch.setattr(demo, "DEFAULT_RUN", str(tmp_path / "run"))
    cfg_path = _write(tmp_path / "demo.yaml", f"_BASE_: {files['lstm_cfg']}\nPHASE: [train, test]\n", False)
    model = str(tmp_path / "model" / "demo.params")
    assert not demo.default_model_is_current(model, cfg_path)
    demo.train_default_model(model, cfg_path)
    meta = json.loads(open(demo.sidecar(model)).read())
    assert meta["classes"] == ["disc", "square"] and meta["network"]["MODEL"]["LSTM"]["UNITS"] == 16
    assert os.path.isfile(os.path.join(demo.default_run_dir(cfg_path), "model.params"))
    assert demo.default_model_is_current(model, cfg_path)
    load_model(lstm_config.load(cfg_path), model)               # it loads into the config's network
    wider = _write(tmp_path / "wider.yaml", f"_BASE_: {cfg_path}\nMODEL:\n  LSTM: {{UNITS: 24}}\n", False)
    assert not demo.default_model_is_current(model, wider)      # an older checkout's model: retrained
    assert demo.default_run_dir(wider) != demo.default_run_dir(cfg_path)
