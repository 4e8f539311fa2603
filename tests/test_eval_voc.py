"""VOC AP against gluoncv's VOC07MApMetric / VOCMApMetric, plus hand-computed cases."""
import numpy as np
import pytest
from gluoncv.utils.metrics.voc_detection import VOC07MApMetric, VOCMApMetric

from lib.dataset import Record
from lib.eval import voc_ap

CLASSES = ["car", "person", "dog", "cat", "bird"]  # 'bird': no gt and no detection at all


def _random_case(seed, num_images=30):
    rng = np.random.RandomState(seed)
    records, detections = [], []
    for i in range(num_images):
        # integer pixel boxes as VOC readers produce (x1 = xmin - 1, x2 = xmax)
        n_gt = 0 if i % 7 == 0 else rng.randint(1, 6)  # some images without gt
        xy = rng.randint(0, 300, size=(n_gt, 2))
        wh = rng.randint(4, 120, size=(n_gt, 2))
        gt = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        labels = rng.randint(0, 4, size=n_gt)
        difficult = rng.rand(n_gt) < 0.2
        records.append(Record(image=f"/img/{i}.jpg", width=500, height=500, boxes=gt, labels=labels,
                              difficult=difficult))
        # detections: jittered copies of gts (some duplicates) plus random clutter
        dets, det_labels = [], []
        for b, l in zip(gt, labels):
            for _ in range(rng.randint(0, 3)):
                size = np.tile(b[2:] - b[:2], 2)
                dets.append(b + rng.uniform(-0.2, 0.2, size=4) * size)
                det_labels.append(l if rng.rand() < 0.85 else rng.randint(0, 4))
        for _ in range(rng.randint(0, 4)):
            x, y = rng.uniform(0, 300, size=2)
            w, h = rng.uniform(5, 100, size=2)
            dets.append(np.array([x, y, x + w, y + h]))
            det_labels.append(rng.choice([0, 1, 3]))  # class 2 ('dog') never gets clutter
        boxes = np.array(dets, np.float64).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = rng.rand(len(boxes))
        detections.append((boxes, scores, np.array(det_labels, np.int64)))
    return records, detections


def _gluoncv_map(metric_cls, records, detections, iou):
    metric = metric_cls(iou_thresh=iou, class_names=CLASSES)
    for rec, (boxes, scores, labels) in zip(records, detections):
        # gluoncv adds +1 to x2/y2 internally (inclusive pixel boxes): give it x2 - 1, y2 - 1
        pred = boxes.copy()
        pred[:, 2:] -= 1
        gt = rec.boxes.astype(np.float64).copy()
        gt[:, 2:] -= 1
        metric.update(pred[None], labels[None].astype(np.float64), scores[None],
                      gt[None], rec.labels[None].astype(np.float64), rec.difficult[None].astype(np.float64))
    names, values = metric.get()
    return dict(zip(names, values))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_07", [True, False])
@pytest.mark.parametrize("iou", [0.5, 0.7])
def test_voc_ap_matches_gluoncv(seed, use_07, iou):
    records, detections = _random_case(seed)
    ours = voc_ap(records, detections, CLASSES, iou=iou, use_07=use_07)
    ref = _gluoncv_map(VOC07MApMetric if use_07 else VOCMApMetric, records, detections, iou)
    for name in CLASSES:
        if np.isnan(ref[name]):
            assert ours["per_class"][name]["ap"] is None, name
        else:
            assert ours["per_class"][name]["ap"] == pytest.approx(ref[name], abs=1e-6), name
    assert ours["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    assert ours["per_class"]["bird"]["ap"] is None
    assert ours["per_class"]["bird"]["num_det"] == 0


def test_class_with_gt_but_no_detection_is_zero():
    records, detections = _random_case(5)
    detections = [(b[l != 2], s[l != 2], l[l != 2]) for b, s, l in detections]
    ours = voc_ap(records, detections, CLASSES)
    assert ours["per_class"]["dog"]["num_det"] == 0
    assert ours["per_class"]["dog"]["num_gt"] > 0
    assert ours["per_class"]["dog"]["ap"] == 0.0


def test_hand_computed_with_difficult_and_duplicates():
    # image 0: two gts of class 0, the second one difficult; image 1: one gt of class 0
    r0 = Record(image="/a.jpg", width=100, height=100, boxes=[[0, 0, 10, 10], [50, 50, 60, 60]],
                labels=[0, 0], difficult=[False, True])
    r1 = Record(image="/b.jpg", width=100, height=100, boxes=[[20, 20, 40, 40]], labels=[0])
    d0 = (np.array([[0, 0, 10, 10],      # 0.9 TP
                    [50, 50, 60, 60],    # 0.8 on difficult: ignored
                    [0, 0, 10, 10],      # 0.7 duplicate: FP
                    [80, 80, 90, 90]]),  # 0.4 nothing: FP
          np.array([0.9, 0.8, 0.7, 0.4]), np.array([0, 0, 0, 0]))
    d1 = (np.array([[20, 20, 40, 40.0]]), np.array([0.5]), np.array([0]))  # TP
    res = voc_ap([r0, r1], [d0, d1], ["x"], use_07=False)
    # order: TP(0.9) ign(0.8) FP(0.7) TP(0.5) FP(0.4); npos = 2
    # points: (r=.5,p=1) (r=.5,p=.5) (r=1,p=2/3) (r=1,p=.5) -> AP = .5*1 + .5*(2/3)
    assert res["per_class"]["x"]["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert res["per_class"]["x"]["num_gt"] == 2
    assert res["per_class"]["x"]["tp"] == 2 and res["per_class"]["x"]["fp"] == 2
    res07 = voc_ap([r0, r1], [d0, d1], ["x"], use_07=True)
    # t in 0..0.5 (6 points): 1; t in 0.6..1 (5 points): 2/3
    assert res07["mAP"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_iou_threshold_is_inclusive_and_half_pixel_boxes():
    gt = Record(image="/a.jpg", width=100, height=100, boxes=[[0, 0, 10, 10]], labels=[0])
    # IoU exactly 0.5: 10x10 gt vs a 10x5 detection inside it
    det = (np.array([[0, 0, 10, 5.0]]), np.array([1.0]), np.array([0]))
    assert voc_ap([gt], [det], ["x"], iou=0.5)["mAP"] == pytest.approx(1.0)
    assert voc_ap([gt], [det], ["x"], iou=0.51)["mAP"] == pytest.approx(0.0)


def test_bad_detections_name_the_entry():
    records, detections = _random_case(0, num_images=3)
    with pytest.raises(ValueError, match="3 ground-truth"):
        voc_ap(records, detections[:2], CLASSES)
    bad = list(detections)
    bad[1] = (np.zeros((2, 4)), np.zeros(2), np.array([0, 9]))
    with pytest.raises(ValueError, match=r"detections\[1\].*label 9"):
        voc_ap(records, bad, CLASSES)
    bad[1] = (np.zeros((2, 3)), np.zeros(2), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"detections\[1\].*shape"):
        voc_ap(records, bad, CLASSES)


def test_detector_padding_and_mxnet_arrays_are_accepted():
    import mxnet as mx
    records, detections = _random_case(4, num_images=6)
    padded = []
    for boxes, scores, labels in detections:
        k = len(boxes) + 3  # gluoncv layout: ids (K,1), scores (K,1), boxes (K,4), -1 padding at the end
        ids = -np.ones((k, 1))
        ids[:len(labels), 0] = labels
        sc = -np.ones((k, 1))
        sc[:len(scores), 0] = scores
        bx = -np.ones((k, 4))
        bx[:len(boxes)] = boxes
        padded.append((mx.nd.array(bx, dtype="float64"), mx.nd.array(sc, dtype="float64"), mx.nd.array(ids)))
    assert voc_ap(records, padded, CLASSES)["mAP"] == pytest.approx(voc_ap(records, detections, CLASSES)["mAP"])


def test_inverted_box_is_an_error():
    records, detections = _random_case(0, num_images=2)
    bad = [detections[0], (np.array([[10, 10, 5, 20.0]]), np.array([0.5]), np.array([1]))]
    with pytest.raises(ValueError, match=r"detections\[1\].*x2 < x1"):
        voc_ap(records, bad, CLASSES)
