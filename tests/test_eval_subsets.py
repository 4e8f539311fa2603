"""TEST.SUBSETS: frame lists and the mAP of the listed frames (lib.eval.subsets) on hand-made cases."""
import numpy as np
import pytest

from lib.dataset import Record
from lib.dataset.io import DatasetError
from lib.eval.subsets import read_frame_list, subset_scores, write_frame_list


def _frames():
    """Four frames of one video, one box each; the detector finds frames 0 and 2 and misses 1 and 3."""
    box = np.array([[10, 10, 50, 50]], np.float32)
    records = [Record(f"v/{t}.jpg", 100, 100, box, [0], video="v", frame=t, image_id=f"v/{t}") for t in range(4)]
    hit = (box.copy(), np.array([0.9], np.float32), np.array([0]))
    miss = (np.array([[60, 60, 90, 90]], np.float32), np.array([0.8], np.float32), np.array([0]))
    return records, [hit, miss, hit, miss]


def test_subset_scores_match_hand_computed_ap(tmp_path):
    records, detections = _frames()
    found = write_frame_list(str(tmp_path / "found.txt"), [records[0], records[2]])
    missed = write_frame_list(str(tmp_path / "missed.txt"), [records[1], records[3]])
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("v 0\nv 1\n")
    scores = subset_scores(records, detections, ["car"], {"found": found, "missed": missed, "mixed": str(mixed)})
    assert scores["found"] == {"mAP": 1.0, "frames": 2, "boxes": 2}
    assert scores["missed"]["mAP"] == 0.0
    # frames 0 + 1: the 0.9 detection is right (recall 1/2 at precision 1), the 0.8 one wrong: AP 0.5
    assert scores["mixed"]["mAP"] == pytest.approx(0.5)


def test_frame_list_errors_name_file_and_line(tmp_path):
    records, detections = _frames()
    bad = tmp_path / "frames.txt"
    bad.write_text("v 3\nv three\n")
    with pytest.raises(DatasetError, match=r"frames.txt:2: expected"):
        read_frame_list(str(bad))
    with pytest.raises(DatasetError, match="missing.txt: frame list not found"):
        read_frame_list(str(tmp_path / "missing.txt"))
    other = tmp_path / "other.txt"
    other.write_text("w 0\n")
    with pytest.raises(DatasetError, match="other.txt: subset 'x' names none of the 4 test frames"):
        subset_scores(records, detections, ["car"], {"x": str(other)})
