"""ImageNet VID AP: hand-computed cases for the per-gt threshold, greedy matching, motion IoU and the
slow/medium/fast and small/medium/large breakdowns; gluoncv's VOC metric as oracle where they agree."""
import numpy as np
import pytest
from gluoncv.utils.metrics.voc_detection import VOCMApMetric

from lib.dataset import Record
from lib.eval import vid_ap, voc_ap
from lib.eval.vid import motion_ious


def _rec(boxes, labels, name="f", video=None, frame=-1, tracks=None):
    return Record(image=f"/v/{name}.jpg", width=1000, height=1000, boxes=boxes, labels=labels,
                  track_ids=tracks, video=video, frame=frame)


def _det(boxes, scores, labels):
    return (np.array(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float64), np.array(labels))


def test_per_gt_threshold_for_small_objects():
    small = _rec([[0, 0, 10, 10]], [0])          # threshold min(0.5, 100 / (20 * 20)) = 0.25
    large = _rec([[0, 0, 100, 100]], [0])        # threshold 0.5
    iou_030 = _det([[0, 0, 10, 3]], [1.0], [0])   # IoU 0.30 with the small gt
    iou_020 = _det([[0, 0, 10, 2]], [1.0], [0])   # IoU 0.20
    iou_045 = _det([[0, 0, 100, 45]], [1.0], [0])  # IoU 0.45 with the large gt
    assert vid_ap([small], [iou_030], ["a"], motion=False, area=False)["mAP"] == pytest.approx(1.0)
    assert vid_ap([small], [iou_020], ["a"], motion=False, area=False)["mAP"] == pytest.approx(0.0)
    assert vid_ap([large], [iou_045], ["a"], motion=False, area=False)["mAP"] == pytest.approx(0.0)
    # VOC at 0.5 does not have the tolerance
    assert voc_ap([small], [iou_030], ["a"])["mAP"] == pytest.approx(0.0)


def test_greedy_takes_best_unmatched_gt():
    rec = _rec([[0, 0, 100, 100], [20, 0, 120, 100]], [0, 0])
    dets = _det([[10, 0, 110, 100],   # 0.9: IoU 0.818 with both -> first gt
                 [0, 0, 100, 100]],   # 0.8: gt 0 taken, IoU 0.667 with gt 1 -> TP in VID
                [0.9, 0.8], [0, 0])
    assert vid_ap([rec], [dets], ["a"], motion=False, area=False)["mAP"] == pytest.approx(1.0)
    # the VOC devkit takes the argmax gt (already taken) -> FP: AP = 0.5
    assert voc_ap([rec], [dets], ["a"])["mAP"] == pytest.approx(0.5)


def test_motion_iou_from_tracks():
    # track 0 moves 1 px per frame to the right (20x20 box): IoU at offset d is (20-|d|)/(20+|d|)
    # track 1 is static but annotated only on even frames; track 2 exists on one frame only
    records = []
    for t in range(30):
        boxes, labels, tracks = [[t, 0, t + 20, 20]], [0], [0]
        if t % 2 == 0:
            boxes.append([100, 100, 150, 150]); labels.append(1); tracks.append(1)
        if t == 7:
            boxes.append([300, 300, 320, 320]); labels.append(0); tracks.append(2)
        records.append(_rec(boxes, labels, name=f"{t:06d}", video="snip", frame=t, tracks=tracks))
    records.append(_rec([[0, 0, 20, 20]], [0], name="still"))  # still image: no track
    records = records[::-1]  # order must not matter
    by_frame = {r.frame: m for r, m in zip(records, motion_ious(records)) if r.video}
    ends = {r.frame: m for r, m in zip(records, motion_ious(records, endpoints_only=True)) if r.video}

    def moving(d):
        return (20 - abs(d)) / (20 + abs(d))

    assert by_frame[15][0] == pytest.approx(np.mean([moving(d) for d in range(-10, 11) if d]))
    assert by_frame[0][0] == pytest.approx(np.mean([moving(d) for d in range(1, 11)]))
    assert by_frame[25][0] == pytest.approx(np.mean([moving(d) for d in range(-10, 5) if d]))
    assert ends[15][0] == pytest.approx(moving(10))
    assert ends[25][0] == pytest.approx(moving(-10))
    assert by_frame[4][1] == pytest.approx(1.0)    # static, neighbours only on even frames
    assert by_frame[7][1] == 0.0                   # track 2 has no neighbour: 0 as in the reference loader
    still = [m for r, m in zip(records, motion_ious(records)) if r.video is None][0]
    assert still.tolist() == [0.0]


def _breakdown_case():
    # one frame, class 0: slow S (motion 0.95), fast F (0.5), medium M (0.8)
    rec = _rec([[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], [0, 0, 0])
    motion = [np.array([0.95, 0.5, 0.8])]
    dets = _det([[600, 0, 700, 100],   # C 0.95: overlaps nothing
                 [0, 0, 100, 100],     # A 0.90: matches S
                 [200, 0, 300, 100],   # B 0.80: matches F
                 [0, 0, 100, 60],      # D 0.70: IoU 0.6 with S, S taken -> unmatched
                 [400, 0, 500, 100]],  # E 0.60: on M but class 1 (which has no gt)
                [0.95, 0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0, 1])
    return [rec], [dets], motion


def test_motion_breakdown_hand_computed():
    records, dets, motion = _breakdown_case()
    res = vid_ap(records, dets, ["a", "b"], precomputed_motion_ious=motion, area=False)
    # all: C FP, A TP, B TP, D FP; npos 3 -> AP 4/9
    assert res["per_class"]["a"]["ap"] == pytest.approx(4 / 9)
    assert res["per_class"]["b"]["ap"] is None and res["mAP"] == pytest.approx(4 / 9)
    # slow: C tie -> FP 2/3 (2 of 3 gts ignored), A TP, B on ignored gt -> nothing, D FP (overlaps S)
    # prec at A = 1 / (1 + 2/3) = 0.6, recall 1 -> AP 0.6
    assert res["motion"]["slow"]["per_class"]["a"] == pytest.approx(0.6)
    # fast: C FP 2/3, A nothing, B TP, D overlaps only the ignored S -> FP 0 -> AP 0.6
    assert res["motion"]["fast"]["per_class"]["a"] == pytest.approx(0.6)
    # medium: the only medium gt is never matched
    assert res["motion"]["medium"]["per_class"]["a"] == pytest.approx(0.0)
    assert [res["motion"][k]["num_gt"] for k in ("slow", "medium", "fast")] == [1, 1, 1]
    assert res["motion"]["slow"]["mAP"] == pytest.approx(0.6)


def test_frame_without_gt_counts_as_one_pseudo_motion_iou_of_zero():
    gt_frame = _rec([[0, 0, 100, 100], [200, 0, 300, 100]], [0, 0], name="a")
    empty_frame = _rec([], [], name="b")
    motion = [np.array([0.95, 0.5]), np.zeros(0)]
    dets = [_det([[0, 0, 100, 100]], [0.9], [0]), _det([[10, 10, 50, 50]], [0.99], [0])]
    res = vid_ap([gt_frame, empty_frame], dets, ["a"], precomputed_motion_ious=motion, area=False)
    # all: X (on the empty frame) FP 1 then A TP (npos 2) -> prec .5 at recall .5 -> AP .25
    assert res["mAP"] == pytest.approx(0.25)
    # the empty weight's population, as the official loader reads the .mat: 0.95, 0.5 and the empty
    # frame's pseudo 0. slow [0.9, 1]: 1 of 3 -> X FP 1/3; A TP (npos 1) -> prec 1 / (1 + 1/3) = 3/4 at recall 1
    assert res["motion"]["slow"]["mAP"] == pytest.approx(3 / 4)
    # fast [0, 0.7]: X FP 2/3; A matched the slow gt (ignored); the fast gt is never found -> AP 0
    assert res["motion"]["fast"]["mAP"] == pytest.approx(0.0)
    assert res["motion"]["medium"]["mAP"] is None  # no medium gt at all


def test_area_breakdown_hand_computed():
    rec = _rec([[0, 0, 30, 30], [300, 300, 500, 500]], [0, 0])  # small (900) and large (40000)
    dets = _det([[600, 600, 800, 800],   # Ls 0.96 unmatched, large
                 [600, 0, 620, 20],      # Us 0.95 unmatched, small
                 [0, 0, 30, 30],         # Ms 0.90 on the small gt
                 [300, 300, 500, 500]],  # Ml 0.80 on the large gt
                [0.96, 0.95, 0.9, 0.8], [0, 0, 0, 0])
    res = vid_ap([rec], [dets], ["a"], motion=False)
    assert "motion" not in res
    assert res["mAP"] == pytest.approx(0.5)
    # small: Ls out of area -> ignored, Us FP, Ms TP, Ml on ignored gt -> AP 0.5
    assert res["area"]["small"]["mAP"] == pytest.approx(0.5)
    # large: Ls FP, Us ignored, Ms on ignored gt, Ml TP -> AP 0.5
    assert res["area"]["large"]["mAP"] == pytest.approx(0.5)
    assert res["area"]["medium"]["mAP"] is None
    assert res["area"]["small"]["num_gt"] == 1 and res["area"]["large"]["num_gt"] == 1


def test_motion_categories_from_tracks_end_to_end():
    # 21 frames: track 0 static (slow), track 1 jumps 60 px per frame on a 100 px box (fast)
    records, dets = [], []
    for t in range(21):
        boxes = [[0, 0, 100, 100], [200 + 60 * t, 500, 300 + 60 * t, 600]]
        records.append(_rec(boxes, [0, 0], name=str(t), video="v", frame=t, tracks=[0, 1]))
        dets.append(_det([boxes[0]], [0.5 + t / 100], [0]))  # only the static object is detected
    res = vid_ap(records, dets, ["a"])
    assert res["motion"]["slow"]["num_gt"] == 21 and res["motion"]["fast"]["num_gt"] == 21
    assert res["motion"]["slow"]["mAP"] == pytest.approx(1.0)
    assert res["motion"]["fast"]["mAP"] == pytest.approx(0.0)
    assert res["mAP"] == pytest.approx(0.5)


def _separated_case(seed):
    """Large, mutually disjoint gts (threshold 0.5 for all): VID 'all' AP equals VOC all-point AP."""
    rng = np.random.RandomState(seed)
    records, dets = [], []
    for i in range(25):
        boxes, labels = [], []
        for cell in range(int(rng.randint(0, 5))):
            x0 = 200 * cell + rng.randint(0, 40)
            y0 = rng.randint(0, 40)
            boxes.append([x0, y0, x0 + rng.randint(60, 150), y0 + rng.randint(60, 150)])
            labels.append(rng.randint(0, 3))
        rec = _rec(boxes, labels, name=str(i))
        records.append(rec)
        d_boxes, d_labels = [], []
        for b, l in zip(rec.boxes, rec.labels):
            for _ in range(rng.randint(0, 3)):
                size = np.tile(b[2:] - b[:2], 2)
                d_boxes.append(b + rng.uniform(-0.15, 0.15, 4) * size)
                d_labels.append(l if rng.rand() < 0.9 else rng.randint(0, 3))
        for _ in range(rng.randint(0, 3)):
            x, y = rng.uniform(0, 800, 2)
            d_boxes.append([x, y, x + rng.uniform(20, 100), y + rng.uniform(20, 100)])
            d_labels.append(rng.randint(0, 3))
        dets.append(_det(d_boxes, rng.rand(len(d_boxes)), d_labels))
    return records, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vid_all_equals_gluoncv_voc_when_gts_are_large_and_disjoint(seed):
    records, dets = _separated_case(seed)
    res = vid_ap(records, dets, ["a", "b", "c"], motion=False, area=False)
    metric = VOCMApMetric(iou_thresh=0.5, class_names=["a", "b", "c"])
    for rec, (boxes, scores, labels) in zip(records, dets):
        pred, gt = boxes.copy(), rec.boxes.astype(np.float64).copy()
        pred[:, 2:] -= 1  # gluoncv adds +1 internally
        gt[:, 2:] -= 1
        metric.update(pred[None], labels[None].astype(float), scores[None], gt[None],
                      rec.labels[None].astype(float))
    names, values = metric.get()
    ref = dict(zip(names, values))
    for name in ["a", "b", "c"]:
        assert res["per_class"][name]["ap"] == pytest.approx(ref[name], abs=1e-6)
    assert 0.05 < res["mAP"] < 0.95
    assert res["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)


def test_duplicate_frame_in_video_is_an_error():
    a = _rec([[0, 0, 10, 10]], [0], name="x", video="v", frame=3, tracks=[0])
    b = _rec([[0, 0, 10, 10]], [0], name="y", video="v", frame=3, tracks=[0])
    with pytest.raises(ValueError, match="frame 3 twice"):
        motion_ious([a, b])


def test_track_twice_in_one_frame_is_an_error():
    a = _rec([[0, 0, 10, 10], [5, 5, 20, 20]], [0, 0], name="x", video="v", frame=3, tracks=[4, 4])
    with pytest.raises(ValueError, match="track 4 of video 'v' appears twice in frame 3"):
        motion_ious([a])


# ---- random cases against a literal, loop-by-loop transcription of the reference evaluation ----

def _loop_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _loop_reference(records, dets, motion, motion_range, area_range, num_classes):
    """Per frame: detections by confidence, each compared with every gt in annotation order. A frame
    without gts holds one motion IoU of 0 in the empty weight's population (the official loader
    reads its empty .mat cell that way)."""
    all_motion = [m for ms in motion for m in (ms if len(ms) else [0.0])]
    empty_weight = sum(motion_range[0] <= m <= motion_range[1] for m in all_motion) / len(all_motion)
    npos = [0] * num_classes
    flat = []  # (score, label, tp, fp) in frame order
    for rec, (boxes, scores, labels), mi in zip(records, dets, motion):
        gts = rec.boxes.astype(float).tolist()
        thr = [min(0.5, (g[2] - g[0]) * (g[3] - g[1]) / ((g[2] - g[0] + 10) * (g[3] - g[1] + 10))) for g in gts]
        ig_motion = [not (motion_range[0] <= m <= motion_range[1]) for m in mi]
        ig_area = [not (area_range[0] <= (g[2] - g[0]) * (g[3] - g[1]) <= area_range[1]) for g in gts]
        detected = [False] * len(gts)
        order = sorted(range(len(scores)), key=lambda j: -scores[j])
        for j in order:
            b = boxes[j].tolist()
            ovmax, kmax, ov_ig, ov_nig = -1.0, -1, -1.0, -1.0
            for k, g in enumerate(gts):
                ov = _loop_iou(b, g)
                if ov >= thr[k] and ov > ovmax and not detected[k] and labels[j] == rec.labels[k]:
                    ovmax, kmax = ov, k
                if ig_motion[k] and ov > ov_ig:
                    ov_ig = ov
                if not ig_motion[k] and ov > ov_nig:
                    ov_nig = ov
            tp = fp = 0.0
            if kmax >= 0:
                detected[kmax] = True
                tp = float(not ig_motion[kmax] and not ig_area[kmax])
            else:
                area = (b[2] - b[0]) * (b[3] - b[1])
                if area_range[0] <= area <= area_range[1]:
                    if ov_nig > ov_ig:
                        fp = 1.0
                    elif ov_ig > ov_nig:
                        fp = 0.0
                    elif not gts:
                        fp = empty_weight
                    else:
                        fp = sum(ig_motion) / len(gts)
            flat.append((scores[j], labels[j], tp, fp))
        for k in range(len(gts)):
            if not (ig_motion[k] or ig_area[k]):
                npos[rec.labels[k]] += 1
    flat.sort(key=lambda x: -x[0])
    aps = []
    for c in range(num_classes):
        if npos[c] == 0:
            aps.append(None)
            continue
        tp_sum = fp_sum = 0.0
        rec_pts, prec_pts = [0.0], [0.0]
        for _, label, tp, fp in flat:
            if label != c:
                continue
            tp_sum += tp
            fp_sum += fp
            rec_pts.append(tp_sum / npos[c])
            prec_pts.append(tp_sum / max(tp_sum + fp_sum, np.finfo(float).eps))
        rec_pts.append(1.0)
        prec_pts.append(0.0)
        for i in range(len(prec_pts) - 2, -1, -1):
            prec_pts[i] = max(prec_pts[i], prec_pts[i + 1])
        aps.append(sum((rec_pts[i + 1] - rec_pts[i]) * prec_pts[i + 1] for i in range(len(rec_pts) - 1)
                       if rec_pts[i + 1] != rec_pts[i]))
    return aps


def _random_video_case(seed):
    rng = np.random.RandomState(seed)
    records, dets, motion = [], [], []
    for i in range(40):
        n = 0 if i % 9 == 0 else rng.randint(1, 6)
        xy = rng.randint(0, 250, size=(n, 2))
        wh = rng.randint(6, 200, size=(n, 2))  # below 50, between and above 150: every area range
        boxes = np.concatenate([xy, xy + wh], 1).astype(float)
        labels = rng.randint(0, 3, n)
        records.append(_rec(boxes, labels, name=str(i)))
        # motion IoUs spread over every range, with values exactly on the bounds
        motion.append(rng.choice([0.1, 0.5, 0.7, 0.75, 0.85, 0.9, 0.95, 1.0], size=n))
        d_boxes, d_labels = [], []
        for b, l in zip(boxes, labels):
            for _ in range(rng.randint(0, 3)):
                d_boxes.append(b + rng.uniform(-0.3, 0.3, 4) * np.tile(b[2:] - b[:2], 2))
                d_labels.append(l if rng.rand() < 0.8 else rng.randint(0, 3))
        for _ in range(rng.randint(0, 3)):
            x, y = rng.uniform(0, 300, 2)
            d_boxes.append([x, y, x + rng.uniform(5, 180), y + rng.uniform(5, 180)])
            d_labels.append(rng.randint(0, 3))
        d_boxes = np.array(d_boxes, float).reshape(-1, 4)
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        dets.append(_det(d_boxes, rng.rand(len(d_boxes)), d_labels))
    return records, dets, motion


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_cases_match_loop_reference(seed):
    from lib.eval.vid import AREA_RANGES, FULL_RANGE, MOTION_ALL, MOTION_RANGES
    records, dets, motion = _random_video_case(seed)
    res = vid_ap(records, dets, ["a", "b", "c"], precomputed_motion_ious=motion)

    def check(ours_per_class, motion_range, area_range):
        ref = _loop_reference(records, dets, motion, motion_range, area_range, 3)
        for name, r in zip(["a", "b", "c"], ref):
            if r is None:
                assert ours_per_class[name] is None
            else:
                assert ours_per_class[name] == pytest.approx(r, abs=1e-9)
        return ref

    ref_all = check({k: v["ap"] for k, v in res["per_class"].items()}, MOTION_ALL, FULL_RANGE)
    assert 0.05 < np.mean(ref_all) < 0.95
    fractional = 0
    for name, rng in MOTION_RANGES.items():
        check(res["motion"][name]["per_class"], rng, FULL_RANGE)
        fractional += res["motion"][name]["mAP"] != pytest.approx(res["mAP"])
    for name, rng in AREA_RANGES.items():
        check(res["area"][name]["per_class"], MOTION_ALL, rng)
    assert fractional == 3  # the breakdowns really differ from the overall number


def test_motion_breakdown_skipped_without_tracks():
    records = [_rec([[0, 0, 100, 100]], [0], name=str(t), video="v", frame=t) for t in range(3)]
    dets = [_det([[0, 0, 100, 100]], [0.9], [0]) for _ in records]
    res = vid_ap(records, dets, ["a"])
    assert "motion" not in res and "no track ids" in res["motion_skipped"]
    assert res["mAP"] == pytest.approx(1.0) and res["area"]["medium"]["mAP"] == pytest.approx(1.0)
