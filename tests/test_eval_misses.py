"""lib.eval.misses on hand-built cases: which small boxes are localised, loose or missed, and how
their scores compare with the detections on background."""
import numpy as np

from lib.dataset import Record
from lib.eval.misses import format_misses, miss_analysis


def _rec(boxes, labels, difficult=None):
    return Record(image="/x/a.jpg", width=200, height=200, boxes=boxes, labels=labels, difficult=difficult)


def _dets(rows):
    rows = np.asarray(rows, np.float64).reshape(-1, 6)
    return rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64)


def test_localised_loose_missed_and_background_scores():
    small_a, small_b, small_c = [10, 10, 20, 30], [50, 10, 60, 30], [100, 10, 110, 30]   # 20 px high
    tall = [10, 100, 60, 190]                                                            # 90 px high
    records = [_rec([small_a, small_b, small_c, tall], [0, 0, 0, 0]), _rec([], [])]
    detections = [
        _dets([[10, 10, 20, 30, 0.30, 0],      # small_a exactly (IoU 1): localised at 0.30
               [10, 12, 20, 30, 0.60, 0],      # small_a again, IoU 0.9, higher score -> best 0.60
               [50, 10, 60, 16, 0.90, 0],      # small_b: IoU 6/20 = 0.3 -> loose
               [100, 10, 110, 30, 0.99, 1],    # small_c in the wrong class: not a match -> missed
               [10, 100, 60, 190, 0.95, 0],    # the tall box: near an object, not background
               [150, 150, 160, 160, 0.70, 0]]),  # background, above 0.60
        _dets([[0, 0, 10, 10, 0.50, 0], [20, 20, 30, 30, 0.80, 0]]),   # background image: 2 background boxes
    ]
    result = miss_analysis(records, detections, ["a", "b"], max_height=32)
    assert (result["boxes"], result["localised"], result["loose"], result["missed"]) == (3, 1, 1, 1)
    assert result["median_best_score"] == 0.60
    # background detections of class a: 0.70, 0.50, 0.80 (the class-b box on small_c is background
    # too: no class-b object there) -> above 0.60: 0.70, 0.80, 0.99 -> 3 over 2 images
    assert result["background_detections"] == 4
    assert result["median_background_above_per_image"] == 1.5
    everything = miss_analysis(records, detections, ["a", "b"])
    assert (everything["boxes"], everything["localised"]) == (4, 2)
    assert everything["median_best_score"] == np.median([0.60, 0.95])
    line = format_misses(result, "small boxes")
    assert line.startswith("3 small boxes: 1 localised") and "1 missed" in line and "0.600" in line


def test_difficult_boxes_and_empty_inputs():
    records = [_rec([[0, 0, 10, 10]], [0], difficult=[True])]
    result = miss_analysis(records, [_dets([])], ["a"], max_height=32)
    assert result["boxes"] == 0 and result["median_best_score"] is None
    assert format_misses(result, "small boxes") == "no small boxes"
    # a selected box with no detection of its class at all is missed
    result = miss_analysis([_rec([[0, 0, 10, 10]], [0])], [_dets([])], ["a"])
    assert (result["localised"], result["missed"], result["median_background_above_per_image"]) == (0, 1, None)
