"""Synthetic VID-format videos: determinism, layout, and that the boxes cover what was drawn."""
import filecmp
import os

import numpy as np

from lib.dataset import load_dataset, read_image_set
from lib.dataset.synthetic import SYNTHETIC_CLASSES, generate_video_dataset, render_video


def _files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


def test_generation_is_deterministic_and_in_vid_layout(tmp_path):
    ds = generate_video_dataset(str(tmp_path / "a"), seed=5, num_videos=4, num_frames=30)
    assert len(ds) == 120 and ds.classes == SYNTHETIC_CLASSES and ds.report.ok
    assert os.path.isfile(tmp_path / "a" / "Data" / "VID" / "train" / "synth_0005_0000" / "000029.JPEG")
    assert os.path.isfile(tmp_path / "a" / "Annotations" / "VID" / "train" / "synth_0005_0003" / "000000.xml")
    assert len(ds.video_info) == 4 and all(v["length"] == 30 for v in ds.video_info.values())
    # same seed -> byte-identical files; other seed -> different pictures
    generate_video_dataset(str(tmp_path / "b"), seed=5, num_videos=4, num_frames=30, load=False)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b")
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors
    generate_video_dataset(str(tmp_path / "c"), seed=6, num_videos=1, num_frames=2, load=False)
    assert not filecmp.cmp(tmp_path / "a" / "Data/VID/train/synth_0005_0000/000000.JPEG",
                           tmp_path / "c" / "Data/VID/train/synth_0006_0000/000000.JPEG", shallow=False)
    # image sets in the reference formats
    sets = read_image_set(str(tmp_path / "a" / "ImageSets" / "VID_train_15frames.txt"))
    assert len(sets) == 4 * 15 and set(sets[0]) == {"video", "frame_id", "frame", "length"}
    assert [e["frame"] for e in sets[:15]] == [int(30 * (k + 0.5) / 15) for k in range(15)]
    keyed = load_dataset({"FORMAT": "vid", "ROOT": str(tmp_path / "a"), "IMAGE_SET": "VID_train_15frames",
                          "CLASSES": str(tmp_path / "a" / "classes.txt")})
    assert len(keyed) == 60 and all(r.video is not None for r in keyed)
    # track ids survive the XML round trip
    assert any((r.track_ids >= 1).any() for r in ds)


def test_boxes_cover_the_drawn_objects():
    """Oracle: the same scene rendered without objects; pixels that differ must lie inside the boxes,
    and each (unoccluded, slow) box must be tight around its pixels."""
    checked = 0
    for video in range(6):
        frames, anns = render_video(11, video, num_frames=8, width=160, height=120, max_objects=1,
                                    fast_fraction=0.0, occluder=False)
        empty, _ = render_video(11, video, num_frames=8, width=160, height=120, max_objects=1,
                                fast_fraction=0.0, occluder=False, draw_objects=False)
        for img, bg, (boxes, labels, tracks, _) in zip(frames, empty, anns):
            diff = np.abs(img.astype(int) - bg.astype(int)).max(axis=2) > 40
            if not len(boxes):
                if diff.any():  # at most a sliver (< min_visible of the object) at the image border
                    ys, xs = np.nonzero(diff)
                    assert diff.sum() < 0.15 * 72 * 72
                    assert xs.min() == 0 or ys.min() == 0 or xs.max() == 159 or ys.max() == 119
                continue
            ys, xs = np.nonzero(diff)
            x1, y1, x2, y2 = boxes[0]
            inside = (xs >= x1 - 1) & (xs < x2 + 1) & (ys >= y1 - 1) & (ys < y2 + 1)
            assert inside.mean() > 0.99
            # tight: the drawn pixels reach within a few pixels of each side
            assert xs.min() - x1 <= 4 and x2 - xs.max() <= 5 and ys.min() - y1 <= 4 and y2 - ys.max() <= 5
            checked += 1
    assert checked > 20


def test_scene_has_fast_blurred_occluded_entering_and_leaving_objects(tmp_path):
    fast = entering_or_leaving = 0
    occluded_boxes = 0
    classes_seen = set()
    for video in range(8):
        frames, anns = render_video(3, video, num_frames=20, width=320, height=240)
        present = {}
        for t, (boxes, labels, tracks, visible) in enumerate(anns):
            classes_seen.update(labels.tolist())
            occluded_boxes += int((visible < 0.7).sum())
            for b, tr in zip(boxes, tracks):
                present.setdefault(int(tr), []).append((t, b))
        for tr, seq in present.items():
            ts = [t for t, _ in seq]
            if len(seq) > 1:
                step = np.abs(seq[1][1][:2] - seq[0][1][:2]).max() / max(1, seq[1][0] - seq[0][0])
                fast += step >= 5
            if ts[0] > 0 or ts[-1] < 19:
                entering_or_leaving += 1
    assert classes_seen == set(range(len(SYNTHETIC_CLASSES)))
    assert fast >= 2 and occluded_boxes >= 5 and entering_or_leaving >= 3
    # fast objects are blurred: a fast object's edge is soft (many intermediate values along its motion)
    frames, anns = render_video(3, 0, num_frames=2, fast_fraction=1.0, occluder=False, max_objects=1)
    sharp, _ = render_video(3, 0, num_frames=2, fast_fraction=0.0, occluder=False, max_objects=1)
    assert not np.array_equal(frames[0], sharp[0])
    # the <occluded> flag reaches the XML
    generate_video_dataset(str(tmp_path), seed=3, num_videos=2, num_frames=10, load=False)
    texts = [open(os.path.join(d, n)).read() for d, _, ns in os.walk(tmp_path / "Annotations") for n in ns]
    assert any("<occluded>1</occluded>" in t for t in texts) and any("<trackid>" in t for t in texts)


def test_every_class_appears_in_a_small_default_set(tmp_path):
    ds = generate_video_dataset(str(tmp_path), seed=1, num_videos=4, num_frames=10, width=160, height=120)
    assert all(count > 0 for count in ds.class_counts().values()), ds.class_counts()


def test_degraded_frames_keep_their_boxes_and_leave_the_other_frames_alone(tmp_path):
    """DEGRADED_FRACTION: the listed frames lose most of their contrast (noise added), their boxes stay;
    every other frame is byte-identical to the same video rendered without degradation."""
    from lib.dataset.synthetic import DEGRADED_CONTRAST, DEGRADED_LIST, INTACT_LIST, degraded_frame_indices
    clean_frames, clean_ann = render_video(4, 1, num_frames=20, width=160, height=120)
    frames, ann = render_video(4, 1, num_frames=20, width=160, height=120, degraded_fraction=0.3)
    degraded = degraded_frame_indices(4, 1, 20, 0.3)
    assert 0 not in degraded and 2 <= len(degraded) <= 12, degraded
    for t, (clean, frame) in enumerate(zip(clean_frames, frames)):
        for a, b in zip(clean_ann[t], ann[t]):
            np.testing.assert_array_equal(a, b)
        if t not in degraded:
            np.testing.assert_array_equal(clean, frame)
            continue
        c, d = clean.astype(np.float64), frame.astype(np.float64)
        # d = mean + (c - mean) * contrast + noise: regressing d on c recovers the contrast
        slope = np.cov(c.ravel(), d.ravel())[0, 1] / c.var()
        assert abs(slope - DEGRADED_CONTRAST) < 0.05, (t, slope)
    generate_video_dataset(str(tmp_path), seed=4, num_videos=2, num_frames=20, width=160, height=120,
                           degraded_fraction=0.3, load=False)
    lines = open(tmp_path / DEGRADED_LIST).read().split("\n")[:-1]
    expected = [f"train/synth_0004_{v:04d} {t}" for v in range(2) for t in degraded_frame_indices(4, v, 20, 0.3)]
    assert lines == expected
    intact = open(tmp_path / INTACT_LIST).read().split("\n")[:-1]
    assert len(intact) + len(lines) == 40 and not set(intact) & set(lines)
    ds = load_dataset({"FORMAT": "synthetic", "ROOT": str(tmp_path)})
    assert {(r.video, r.frame) for r in ds} >= {(ln.split()[0], int(ln.split()[1])) for ln in lines}
