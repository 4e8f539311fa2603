"""lib.dataset.degrade (kernels against hand-computed cases and geometry) and lib.tools.degrade on speedtrap
and on every format that has a writer (oracles: the source dataset as lib.dataset loads it, the source files'
bytes, the README's snippet table)."""
import argparse
import filecmp
import json
import math
import os

import cv2
import numpy as np
import pytest

import lib.dataset as D
from lib.config import PROJECT_ROOT
from lib.dataset.cli import dataset_spec
from lib.dataset.degrade import (KINDS, RANGES, apply_degradation, convolve, defocus_kernel, draw_degradation,
                                 motion_blur_kernel, occlude, occlusion_rect_on_box)
from lib.dataset.synthetic import generate_video_dataset
from lib.eval.subsets import read_frame_list, subset_indices
from lib.tools import convert, degrade

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")
SNIPPETS = "3,0.05,5"
SNIPPET_SPEC = {"max_gap": 3, "break_iou": 0.05, "min_background": 5}


# ---------------------------------------------------------------- kernels

def impulse_response(kernel, size=41):
    image = np.zeros((size, size), np.float32)
    image[size // 2, size // 2] = 1.0
    out = convolve(image, kernel)
    half = kernel.shape[0] // 2
    return out[size // 2 - half:size // 2 + half + 1, size // 2 - half:size // 2 + half + 1]


def test_motion_blur_kernel_hand_cases():
    k = motion_blur_kernel(5, 0)
    expected = np.zeros_like(k)
    expected[k.shape[0] // 2, k.shape[1] // 2 - 2:k.shape[1] // 2 + 3] = 0.2
    np.testing.assert_allclose(k, expected, atol=1e-6)
    np.testing.assert_allclose(motion_blur_kernel(5, 90), expected.T, atol=1e-6)
    # a 5.5 px segment: five whole pixels and a quarter pixel at each end
    row = motion_blur_kernel(5.5, 0)[4]
    np.testing.assert_allclose(row * 5.5, [0, 0.25, 1, 1, 1, 1, 1, 0.25, 0], atol=1e-6)


@pytest.mark.parametrize("length,angle", [(5, 0), (9, 90), (21, 30), (17.5, 135), (12, 200)])
def test_motion_blur_on_an_impulse_gives_the_kernel(length, angle):
    k = motion_blur_kernel(length, angle)
    assert abs(k.sum() - 1) < 1e-5 and k.min() >= 0
    np.testing.assert_allclose(impulse_response(k), k, atol=1e-6)


@pytest.mark.parametrize("length,angle", [(21, 30), (31, 120), (25, 75)])
def test_motion_blur_kernel_is_a_line_of_that_length_and_direction(length, angle):
    k = motion_blur_kernel(length, angle).astype(np.float64)
    c = (k.shape[0] - 1) / 2
    ys, xs = np.mgrid[0:k.shape[0], 0:k.shape[1]] - c
    # centred (OpenCV's fixed-point bilinear weights move the centroid by ~0.001 px)
    assert abs((k * xs).sum()) < 0.01 and abs((k * ys).sum()) < 0.01
    cov = np.array([[(k * xs * xs).sum(), (k * xs * ys).sum()], [(k * xs * ys).sum(), (k * ys * ys).sum()]])
    values, vectors = np.linalg.eigh(cov)
    direction = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1])) % 180     # x right, y down
    assert min(abs(direction - angle % 180), 180 - abs(direction - angle % 180)) < 1.0
    # a uniform segment of length L has variance L^2 / 12 along it; across it, only interpolation blur
    assert abs(math.sqrt(12 * values[1]) - length) < 0.05 * length
    assert math.sqrt(values[0]) < 0.6


def test_defocus_kernel_hand_case_radius_one():
    # the unit disk's area in the centre pixel (1), an edge pixel ([.5,1.5]x[-.5,.5]) and a corner
    # pixel ([.5,1.5]^2), by integrating sqrt(1 - y^2): pi in total
    edge = (0.5 * math.sqrt(0.75) + math.asin(0.5)) - 0.5
    root3 = math.sqrt(0.75)
    corner = (root3 * 0.5 + math.pi / 3) / 2 - (0.5 * root3 + math.pi / 6) / 2 - 0.5 * (root3 - 0.5)
    expected = np.array([[corner, edge, corner], [edge, 1.0, edge], [corner, edge, corner]]) / math.pi
    np.testing.assert_allclose(defocus_kernel(1.0, supersample=128), expected, atol=2e-3)


@pytest.mark.parametrize("radius", [2.0, 4.5, 9.3])
def test_defocus_kernel_is_a_disk_summing_to_one(radius):
    k = defocus_kernel(radius).astype(np.float64)
    assert abs(k.sum() - 1) < 1e-5
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    np.testing.assert_allclose(k, k[::-1], atol=1e-7)
    np.testing.assert_allclose(k, k[:, ::-1], atol=1e-7)
    c = (k.shape[0] - 1) / 2
    ys, xs = np.mgrid[0:k.shape[0], 0:k.shape[1]] - c
    dist = np.hypot(xs, ys)
    inner, outer = dist <= radius - math.sqrt(0.5), dist >= radius + math.sqrt(0.5)
    assert np.allclose(k[inner], k.max()) and np.all(k[outer] == 0)
    # each whole pixel inside weighs 1 / (pi r^2)
    assert abs(k.max() * math.pi * radius ** 2 - 1) < 0.01
    np.testing.assert_allclose(impulse_response(k), k, atol=1e-6)


def test_occlusion_covers_the_stated_area():
    image = np.random.default_rng(0).integers(0, 250, size=(60, 80, 3)).astype(np.uint8)
    rect = occlusion_rect_on_box([10, 20, 50, 40], 0.5, "left", 80, 60)
    assert rect == (10, 20, 30, 40)                                   # half of a 40x20 box: 400 px
    assert occlusion_rect_on_box([10, 20, 50, 40], 0.25, "bottom", 80, 60) == (10, 35, 50, 40)
    assert occlusion_rect_on_box([70.4, 5, 95, 30], 0.4, "right", 80, 60) == (76, 5, 80, 30)   # clipped box: 10 px wide
    out = occlude(image, rect, (255, 251, 252))
    changed = np.any(out != image, axis=2)
    assert changed.sum() == 400 and changed[20:40, 10:30].all()
    assert np.all(out[20:40, 10:30] == (255, 251, 252))


def test_drawn_parameters_stay_in_their_ranges_and_replay():
    boxes = np.array([[100, 50, 140, 130]], np.float32)
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(60):
        p = draw_degradation(rng, 640, 360, boxes)
        seen.add(p["kind"])
        if p["kind"] == "motion_blur":
            assert 0.01 * 640 - 1e-3 <= p["length"] <= 0.03 * 640 + 1e-3 and 0 <= p["angle"] < 180
        elif p["kind"] == "defocus":
            assert 0.004 * 640 - 1e-3 <= p["radius"] <= 0.012 * 640 + 1e-3
        else:
            x1, y1, x2, y2 = p["rect"]
            area = (x2 - x1) * (y2 - y1)
            assert p["target"] == 0 and 100 <= x1 < x2 <= 140 and 50 <= y1 < y2 <= 130
            assert abs(area - p["cover"] * 40 * 80) <= 80 and 0.3 <= p["cover"] <= 0.6
    assert seen == set(KINDS)
    for _ in range(20):   # no box: a patch of 4-12 % of the frame
        p = draw_degradation(rng, 640, 360, (), kind="occlusion")
        x1, y1, x2, y2 = p["rect"]
        assert p["target"] == -1 and 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
        assert 0.035 <= (x2 - x1) * (y2 - y1) / (640 * 360) <= 0.125
    image = np.random.default_rng(1).integers(0, 255, size=(36, 64, 3)).astype(np.uint8)
    p = {"kind": "defocus", "radius": 3.0}
    np.testing.assert_array_equal(apply_degradation(image, p), apply_degradation(image, dict(p)))
    assert set(RANGES) == set(KINDS)


# ---------------------------------------------------------------- the tool on speedtrap

FEW = [f"frame{n}" for n in range(150, 158)]          # 8 frames inside snippet 4 (frames 144-186)


def run_tool(tmp_path, out, seed, fraction=0.25, extra=()):
    split = tmp_path / "few.txt"
    split.write_text("".join(f + "\n" for f in FEW))
    return degrade.main(["--data", SPEEDTRAP, "--format", "voc", "--split", str(split), "--fraction", str(fraction),
                         "--seed", str(seed), "--out", str(out), "--snippets", SNIPPETS, *extra])


def source_records():
    whole = D.load_dataset({"FORMAT": "voc", "ROOT": SPEEDTRAP, "SNIPPETS": SNIPPET_SPEC})
    by_name = {os.path.basename(r.image): r for r in whole}
    snippet = by_name["frame150.jpg"].video
    return whole, by_name, [r for r in whole if r.video == snippet]


def output_dataset(out, split=None):
    spec = {"FORMAT": "voc", "ROOT": str(out), "SNIPPETS": SNIPPET_SPEC, "CLASSES": str(out / "classes.txt")}
    if split:
        spec["SPLIT"] = split
    return D.load_dataset(spec)


def tree_bytes(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_speedtrap_subset_keeps_annotations_videos_and_lists(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_tool(tmp_path, out, seed=3) == 0
    whole, by_name, snippet = source_records()
    assert len(snippet) == 43                       # README: snippet 4 is frames 144-186
    ds = output_dataset(out)
    # the split's whole snippet is written (neighbours for the video methods), same boxes and classes
    assert sorted(os.path.basename(r.image) for r in ds) == sorted(os.path.basename(r.image) for r in snippet)
    assert ds.classes == whole.classes
    for rec in ds:
        src = by_name[os.path.basename(rec.image)]
        np.testing.assert_allclose(rec.boxes, src.boxes, atol=1e-4)
        np.testing.assert_array_equal(rec.labels, src.labels)
        assert (rec.width, rec.height) == (src.width, src.height)
    # one video, frames in the same order at the same positions as in the source snippet
    assert len({r.video for r in ds}) == 1
    assert {os.path.basename(r.image): r.frame for r in ds} == {os.path.basename(r.image): r.frame for r in snippet}
    # round(0.25 * 8) = 2 frames degraded; the lists are disjoint and cover the split exactly
    degraded, intact = read_frame_list(out / "degraded_frames.txt"), read_frame_list(out / "intact_frames.txt")
    assert len(degraded) == 2 and len(intact) == 6 and not degraded & intact
    listed = {os.path.splitext(os.path.basename(ds[i].image))[0] for i in subset_indices(ds.records, degraded | intact)}
    assert listed == set(FEW)
    split_ds = output_dataset(out, split="few")
    assert sorted(os.path.splitext(os.path.basename(r.image))[0] for r in split_ds) == sorted(FEW)
    assert sorted(r.image for r in output_dataset(out, split="degraded")) == \
        sorted(ds[i].image for i in subset_indices(ds.records, degraded))
    # degraded files differ from the source; every other file is a byte copy
    degraded_files = {os.path.basename(ds[i].image) for i in subset_indices(ds.records, degraded)}
    for rec in ds:
        name = os.path.basename(rec.image)
        same = filecmp.cmp(rec.image, by_name[name].image, shallow=False)
        assert same == (name not in degraded_files), name
    record = json.loads((out / "degrade.json").read_text())
    assert record["seed"] == 3 and record["fraction"] == 0.25 and record["degraded"] == 2
    assert record["split_frames"] == 8 and record["context_frames"] == 35
    assert {f["file"] for f in record["frames"]} == degraded_files
    assert all(f["kind"] in KINDS for f in record["frames"])
    # each degraded file is its source with the recorded degradation applied (then JPEG-encoded)
    for f in record["frames"]:
        source = D.read_image(by_name[f["file"]].image)
        expected = apply_degradation(source, f).astype(np.float32)
        got = D.read_image(str(out / "JPEGImages" / f["file"])).astype(np.float32)
        assert np.abs(got - expected).mean() < 2.0 and np.abs(got - source).mean() > np.abs(got - expected).mean()
    assert "2 of 8 frames degraded" in capsys.readouterr().out


def test_same_seed_same_output_other_seed_other_choice(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        assert run_tool(tmp_path, out, seed=seed) == 0
    bytes_a, bytes_b = tree_bytes(a), tree_bytes(b)
    # identical, apart from the absolute image paths VOC XML records in <path>
    assert set(bytes_a) == set(bytes_b)
    for name in bytes_a:
        if name.startswith("Annotations"):
            assert bytes_a[name].replace(str(a).encode(), b"") == bytes_b[name].replace(str(b).encode(), b""), name
        else:
            assert bytes_a[name] == bytes_b[name], name
    assert (a / "degraded_frames.txt").read_text() != (c / "degraded_frames.txt").read_text()
    # rerunning into an earlier output replaces it
    assert run_tool(tmp_path, a, seed=4) == 0
    assert (a / "degraded_frames.txt").read_text() == (c / "degraded_frames.txt").read_text()
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n or ".old" in n]


def test_fraction_zero_and_one(tmp_path):
    assert run_tool(tmp_path, tmp_path / "none", seed=1, fraction=0.0) == 0
    assert (tmp_path / "none" / "degraded_frames.txt").read_text() == ""
    assert len(read_frame_list(tmp_path / "none" / "intact_frames.txt")) == 8
    assert run_tool(tmp_path, tmp_path / "all", seed=1, fraction=1.0) == 0
    assert len(read_frame_list(tmp_path / "all" / "degraded_frames.txt")) == 8


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert run_tool(tmp_path, tmp_path / "o1", seed=0, fraction=1.5) == 2
    err = capsys.readouterr().err.strip()
    assert "--fraction" in err and "\n" not in err
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert run_tool(tmp_path, keep, seed=0) == 2
    assert "not an output of lib.tools.degrade" in capsys.readouterr().err
    assert (keep / "notes.txt").read_text() == "mine"
    synth = tmp_path / "synth"
    generate_video_dataset(str(synth), num_videos=1, num_frames=3, width=64, height=48, load=False)
    assert degrade.main(["--data", str(synth), "--format", "synthetic", "--out", str(tmp_path / "o2")]) == 2
    assert "no writer" in capsys.readouterr().err
    assert degrade.main(["--data", str(tmp_path / "nothing"), "--format", "voc", "--out", str(tmp_path / "o3")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


# ---------------------------------------------------------------- every format with a writer

def tiny_voc(root, frames=8):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for k in range(frames):
        image = rng.integers(0, 255, size=(48, 64, 3)).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"frame{k}.png"), image)
        objects = "" if k == 5 else (
            f"<object><name>{'car' if k % 2 else 'bus'}</name><bndbox><xmin>{5 + k}</xmin><ymin>6</ymin>"
            f"<xmax>{30 + k}</xmax><ymax>40</ymax></bndbox></object>")
        (root / "annotations" / f"frame{k}.xml").write_text(
            f"<annotation><filename>frame{k}.png</filename><size><width>64</width><height>48</height></size>"
            f"{objects}</annotation>")
    return root


OUTPUT = {"voc": "voc_dir", "coco": "data.json", "csv": "data.csv", "kitti": "kitti_dir", "recordio": "data",
          "tfrecord": "data.tfrecord"}


@pytest.mark.parametrize("fmt", ["voc", "coco", "csv", "kitti", "recordio", "tfrecord"])
def test_every_writable_format_round_trips(tmp_path, fmt):
    source = tiny_voc(tmp_path / "src")
    target = tmp_path / OUTPUT[fmt]
    if fmt == "voc":
        data = source
    else:
        assert convert.main(["--data", str(source), "--format", "voc", "--to", fmt, "--out", str(target)]) == 0
        data = {"recordio": str(target), "kitti": str(target)}.get(fmt, str(target))
    spec_args = ["--data", str(data), "--format", fmt]
    if fmt == "kitti":
        (target / "image_2").mkdir()
        for name in os.listdir(source / "images"):
            os.link(source / "images" / name, target / "image_2" / name)
        spec_args += ["--classes", str(tmp_path / "classes.txt")]
        (tmp_path / "classes.txt").write_text("bus\ncar\n")
    out = tmp_path / f"degraded_{fmt}"
    assert degrade.main(spec_args + ["--fraction", "0.5", "--seed", "2", "--out", str(out)]) == 0
    parser_args = argparse.Namespace(data=str(data), format=fmt, split=None, strict=False, set=[],
                                             classes=str(tmp_path / "classes.txt") if fmt == "kitti" else None,
                                             snippets=None)
    before = D.load_dataset(dataset_spec(parser_args))
    after = D.load_dataset(degrade.output_spec(fmt, str(out), {}, str(tmp_path / "extracted")))
    assert len(after) == len(before) == 8 and after.classes == before.classes
    atol = 0.01 if fmt == "kitti" else 1e-3            # KITTI stores two decimals
    key = (lambda r: r.image_id) if fmt == "recordio" else (lambda r: os.path.splitext(os.path.basename(r.image))[0])
    before_by = {key(r): r for r in before}
    for rec in after:
        src = before_by[key(rec)]
        np.testing.assert_allclose(rec.boxes, src.boxes, atol=atol)
        np.testing.assert_array_equal(rec.labels, src.labels)
    degraded = read_frame_list(out / "degraded_frames.txt")
    intact = read_frame_list(out / "intact_frames.txt")
    assert len(degraded) == 4 and len(intact) == 4 and not degraded & intact
    assert len(subset_indices(after.records, degraded | intact)) == 8
    # pixels: intact frames equal the source's, degraded ones differ
    for k in subset_indices(after.records, degraded | intact):
        rec = after[k]
        same = np.array_equal(D.read_image(rec.image), D.read_image(before_by[key(rec)].image))
        assert same == (k not in subset_indices(after.records, degraded))


def test_help_shows_the_interface():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "lib.tools.degrade", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": PROJECT_ROOT})
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m lib.tools.degrade")
    for option in ("--data", "--format", "--split", "--fraction", "--seed", "--out"):
        assert option in out.stdout
