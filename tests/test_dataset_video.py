"""Video frames, numeric frame folders, snippet detection and the FGFA / LSTM-SSD samplers.

Oracles: a video written by OpenCV whose frames encode their index in their brightness; hand-computed
snippet cases; exhaustive checks of the sampling rules."""
import os

import cv2
import numpy as np
import pytest

from lib.dataset import (ClipSampler, DatasetError, DetectionDataset, NeighborSampler, Record, detect_snippets,
                         extract_frames, list_frames, load_clip, sample_neighbors, video_frames, video_info)
from lib.dataset.sampling import crop_and_shift_windows
from lib.dataset.synthetic import generate_video_dataset, load_synthetic


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """40 frames at 10 fps, 64x48, frame k filled with grey level 5*k (MJPG keeps it within a few levels)."""
    path = str(tmp_path_factory.mktemp("video") / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for k in range(40):
        writer.write(np.full((48, 64, 3), 5 * k, np.uint8))
    writer.release()
    return path


def _level(img):
    return int(round(float(img.mean()) / 5.0))


def test_video_frames_every_nth_and_time_range(video_file):
    info = video_info(video_file)
    assert info["frame_count"] == 40 and info["width"] == 64 and abs(info["fps"] - 10) < 1e-6
    got = [(i, _level(img)) for i, _, img in video_frames(video_file, every=3)]
    assert got == [(i, i) for i in range(0, 40, 3)]
    ranged = [(i, round(t, 3)) for i, t, img in video_frames(video_file, every=2, start=1.0, end=2.0)]
    assert ranged == [(10, 1.0), (12, 1.2), (14, 1.4), (16, 1.6), (18, 1.8)]
    assert all(_level(img) == i for i, _, img in video_frames(video_file, every=2, start=1.0, end=2.0))


def test_extract_frames_and_numeric_listing(video_file, tmp_path):
    paths = extract_frames(video_file, str(tmp_path / "f"), every=5, pattern="frame%d.jpg")
    assert [os.path.basename(p) for p in paths] == [f"frame{k}.jpg" for k in range(0, 40, 5)]
    listed = list_frames(str(tmp_path / "f"))
    # numeric order: frame5 before frame10 (a plain sort would put frame10 first)
    assert [os.path.basename(p) for p in listed] == [f"frame{k}.jpg" for k in range(0, 40, 5)]
    assert [_level(cv2.imread(p)) for p in listed] == list(range(0, 40, 5))
    (tmp_path / "f" / "notes.txt").write_text("x")
    assert len(list_frames(str(tmp_path / "f"))) == 8


def test_unreadable_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DatasetError, match="bad.mp4"):
        list(video_frames(str(bad)))
    with pytest.raises(DatasetError, match="not found"):
        list(video_frames(str(tmp_path / "missing.mp4")))


def test_detect_snippets_hand_cases():
    # gaps only
    snips = detect_snippets([5, 1, 2, 3, 7, 8, 20])
    assert [s.frames for s in snips] == [[1, 2, 3], [5], [7, 8], [20]]
    assert [s.frames for s in detect_snippets([1, 2, 3, 5, 7, 8, 20], max_gap=2)] == [[1, 2, 3, 5, 7, 8], [20]]
    # indices point into the input order
    assert detect_snippets([5, 1, 2])[0].indices == [1, 2]
    # box jump (no overlap) cuts the run; box-less frames in between stay with the earlier frames
    near, far = [[0, 0, 10, 10]], [[50, 50, 60, 60]]
    boxes = [near, near, [], far, far]
    snips = detect_snippets([1, 2, 3, 4, 5], boxes, break_iou=0.1)
    assert [s.frames for s in snips] == [[1, 2, 3], [4, 5]]
    assert [s.frames for s in detect_snippets([1, 2, 3, 4, 5], boxes)] == [[1, 2, 3, 4, 5]]
    # long box-less runs become background; short ones stay
    boxes = [near, [], near, [], [], [], near]
    snips = detect_snippets(range(7), boxes, min_background=3)
    assert [(s.frames, s.background) for s in snips] == [([0, 1, 2], False), ([3, 4, 5], True), ([6], False)]
    assert [s.name for s in snips] == ["snippet_001", "background_001", "snippet_002"]
    with pytest.raises(DatasetError, match="duplicate frame numbers"):
        detect_snippets([1, 1, 2])


def test_sample_neighbors_rules():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(500):
        frames = sample_neighbors(50, 200, num=2, max_offset=9, rng=rng)
        offsets = [f - 50 for f in frames]
        assert len(set(offsets)) == 2 and all(-9 <= o <= 9 for o in offsets)  # distinct, in range
        seen.update(offsets)
    assert seen == set(range(-9, 10))  # every offset reachable
    for _ in range(200):  # clamped to the video near its ends
        assert all(0 <= f <= 4 for f in sample_neighbors(1, 5, num=2, max_offset=9, rng=rng))
    assert sample_neighbors(-1, 1, num=3) == [-1, -1, -1]  # still image -> copies
    assert sample_neighbors(0, 1, num=2) == [0, 0]
    with pytest.raises(ValueError):
        sample_neighbors(5, 10, num=4, max_offset=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vid"))
    generate_video_dataset(root, seed=2, num_videos=3, num_frames=20, width=96, height=64, load=False)
    return root


def test_neighbor_sampler_reaches_frames_outside_the_image_set(synth):
    keys = load_synthetic(synth, image_set="VID_train_15frames")
    sampler = NeighborSampler(keys, num_neighbors=2, max_offset=9, seed=1)
    for k in range(len(keys)):
        item = sampler[k]
        key = item["key"]
        assert len(item["neighbors"]) == 2
        for f, path in zip(item["neighbor_frames"], item["neighbors"]):
            assert 0 <= f < 20 and abs(f - key.frame) <= 9
            assert path == os.path.join(synth, "Data", "VID", key.video, f"{f:06d}.JPEG") and os.path.isfile(path)
    assert [sampler[3]["neighbor_frames"] for _ in range(2)][0] == sampler[3]["neighbor_frames"]
    sampler.set_epoch(1)
    draws = {tuple(sampler[k]["neighbor_frames"]) for k in range(len(keys))}
    assert len(draws) > 1
    still = DetectionDataset([Record("/x/a.jpg", 10, 10)], ["a"])
    assert NeighborSampler(still)[0]["neighbors"] == ["/x/a.jpg", "/x/a.jpg"]


def test_clip_sampler_random_and_sequential(synth):
    ds = load_synthetic(synth)
    rand = ClipSampler(ds, clip_length=4, frame_stride=2, mode="random", seed=0)
    clips = rand.epoch(0)
    assert len(clips) == 3 * (20 // 7)
    for c in clips:
        frames = [r.frame for r in c.records]
        assert len(frames) == 4 and all(b - a == 2 for a, b in zip(frames, frames[1:]))
        assert len({r.video for r in c.records}) == 1
    assert [c.start for c in rand.epoch(0)] == [c.start for c in clips]  # deterministic per epoch
    seq = ClipSampler(ds, clip_length=4, mode="sequential", seed=0)
    clips = seq.epoch(0)
    by_video = {}
    for c in clips:
        by_video.setdefault(c.video, []).append(c)
    for video, cs in by_video.items():
        assert not cs[0].continues and all(c.continues for c in cs[1:])
        frames = [r.frame for c in cs for r in c.records]
        assert frames == list(range(frames[0], frames[0] + len(frames)))  # consecutive, no gaps or overlap
        assert len(frames) >= 20 - 2 * 4 + 1
    strided = ClipSampler(ds, clip_length=3, frame_stride=2, mode="sequential", seed=1).epoch(0)
    for video in {c.video for c in strided}:
        frames = [r.frame for c in strided if c.video == video for r in c.records]
        assert all(b - a == 2 for a, b in zip(frames, frames[1:]))  # stride kept across clip boundaries
    steps = list(seq.streams(batch_size=2))
    lanes = [[s[b] for s in steps if s[b] is not None] for b in range(2)]
    assert sum(len(lane) for lane in lanes) == len(clips)
    for lane in lanes:  # a lane continues its video until it changes, and then resets
        for prev, cur in zip(lane, lane[1:]):
            if cur.continues:
                assert cur.video == prev.video and cur.start == prev.start + 4
            elif cur.video == prev.video:            # a long video cut into pieces: the next piece
                assert cur.start > prev.start        # starts from a fresh state
    # one long video and two short ones over 3 lanes: the long one is cut so the lanes finish together
    long_ds = DetectionDataset([Record(image=f"{v}{i}.jpg", width=8, height=8, video=v, frame=i)
                                for v, n in (("long", 36), ("a", 4), ("b", 8)) for i in range(n)], ["x"])
    sampler = ClipSampler(long_ds, clip_length=4, mode="sequential")
    steps = list(sampler.streams(batch_size=3))
    assert len(steps) == 4                                          # ceil(12 clips / 3 lanes)
    got = sorted((c.video, c.start) for s in steps for c in s if c is not None)
    assert got == sorted((c.video, c.start) for c in sampler.epoch(0))   # every clip exactly once
    fresh = [c.start for s in steps for c in s if c is not None and c.video == "long" and not c.continues]
    assert sorted(fresh) == [0, 16, 32]                             # pieces of 4 clips, each from a zero state


def test_pseudo_video_crop_and_shift(tmp_path):
    img = np.zeros((60, 80, 3), np.uint8)
    img[20:30, 30:50] = 255  # a white object at [30, 20, 50, 30]
    path = str(tmp_path / "still.png")
    cv2.imwrite(path, img)
    ds = DetectionDataset([Record(path, 80, 60, [[30, 20, 50, 30]], [0])], ["obj"])
    clips = ClipSampler(ds, clip_length=5, seed=3, pseudo_kwargs={"scale_range": (0.8, 0.95)}).epoch(0)
    assert len(clips) == 1 and clips[0].crops is not None
    windows = clips[0].crops
    assert all(0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 60 for x1, y1, x2, y2 in windows)
    centres = np.array([[(w[0] + w[2]) / 2, (w[1] + w[3]) / 2] for w in windows])
    steps = np.diff(centres, axis=0)
    np.testing.assert_allclose(steps, np.repeat(steps[:1], len(steps), 0), atol=1e-6)  # linear motion
    frames, boxes, labels, tracks = load_clip(clips[0])
    assert len({f.shape for f in frames}) == 1
    for f, b in zip(frames, boxes):
        ys, xs = np.nonzero(f[..., 0] > 128)  # where the white object landed
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], b[0], atol=1.5)
    assert all(t.tolist() == [0] for t in tracks)
    rng = np.random.default_rng(0)
    ws = crop_and_shift_windows(100, 50, 3, rng, max_shift=0.0, max_zoom=0.0)
    assert ws[0] == ws[1] == ws[2]


def _vid_xml(path, objects, width=100, height=80, folder="x", filename="000000"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    objs = "".join(f"<object><trackid>{t}</trackid><name>{n}</name><bndbox><xmax>{b[2]}</xmax><xmin>{b[0]}</xmin>"
                   f"<ymax>{b[3]}</ymax><ymin>{b[1]}</ymin></bndbox><occluded>0</occluded><generated>0</generated>"
                   f"</object>" for t, n, b in objects)
    with open(path, "w") as f:
        f.write(f"<annotation><folder>{folder}</folder><filename>{filename}</filename><size><width>{width}</width>"
                f"<height>{height}</height></size>{objs}</annotation>")


def test_imagenet_vid_layout_image_sets_and_det_mapping(tmp_path):
    from lib.dataset import VID_CLASSES, load_vid
    root = str(tmp_path)
    video = "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
    frame_dir = os.path.join(root, "Data", "VID", *video.split("/"))
    os.makedirs(frame_dir)
    for k in range(12):
        cv2.imwrite(os.path.join(frame_dir, f"{k:06d}.JPEG"), np.zeros((80, 100, 3), np.uint8))
        _vid_xml(os.path.join(root, "Annotations", "VID", *video.split("/"), f"{k:06d}.xml"),
                 [(0, "n02691156", (k, 0, k + 9, 19)), (3, "n02391049", (50, 40, 99, 79))])
    det = "train/ILSVRC2014_train_0000/ILSVRC2014_train_00000663"
    os.makedirs(os.path.join(root, "Data", "DET", os.path.dirname(det)))
    cv2.imwrite(os.path.join(root, "Data", "DET", det + ".JPEG"), np.zeros((80, 100, 3), np.uint8))
    # a DET image: one VID class (zebra), one of the other 170 DET classes (n00007846, person) -> left out
    _vid_xml(os.path.join(root, "Annotations", "DET", det + ".xml"),
             [(-1, "n02391049", (1, 2, 30, 40)), (-1, "n00007846", (5, 5, 20, 20))])
    sets = os.path.join(root, "ImageSets")
    os.makedirs(sets)
    with open(os.path.join(sets, "VID_train_15frames.txt"), "w") as f:
        f.write(f"{video} 1 2 12\n{video} 2 9 12\n")
    with open(os.path.join(sets, "VID_val_frames.txt"), "w") as f:
        f.write(f"{video}/000004 1\n{video}/000005 2\n")
    with open(os.path.join(sets, "DET_train_30classes.txt"), "w") as f:
        f.write(f"{det} 1\n")
    keys = load_vid(root, image_set="VID_train_15frames")
    assert keys.classes == VID_CLASSES and [r.frame for r in keys] == [2, 9]
    rec = keys[1]
    assert rec.video == video and rec.track_ids.tolist() == [0, 3]
    # VID XML is 0-based inclusive: xmin 9 .. xmax 18 -> [9, 18 + 1); width = xmax - xmin + 1 as in the devkit
    np.testing.assert_array_equal(rec.boxes, [[9, 0, 19, 20], [50, 40, 100, 80]])
    assert [VID_CLASSES[i] for i in rec.labels] == ["airplane", "zebra"]
    assert keys.video_info[video]["length"] == 12
    sampler = NeighborSampler(keys, num_neighbors=2, max_offset=9, seed=0)
    for _ in range(3):
        for path in sampler[0]["neighbors"]:
            assert os.path.isfile(path)
    frames = load_vid(root, image_set="VID_val_frames")
    assert [(r.video, r.frame) for r in frames] == [(video, 4), (video, 5)]
    everything = load_vid(root, split="train")
    assert len(everything) == 12 and sorted(r.frame for r in everything) == list(range(12))
    det_ds = load_vid(root, image_set="DET_train_30classes")
    assert len(det_ds) == 1 and det_ds[0].video is None and det_ds[0].frame == -1
    assert [VID_CLASSES[i] for i in det_ds[0].labels] == ["zebra"] and det_ds.report.ok
    bad = os.path.join(sets, "broken.txt")
    with open(bad, "w") as f:
        f.write(f"{video} 1 2 12\n{video} 2 9\n")
    with pytest.raises(DatasetError, match=r"broken.txt:2: expected 4 fields"):
        load_vid(root, image_set=bad)
