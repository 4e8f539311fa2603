"""MXNet RecordIO in im2rec's detection format, readable by gluoncv.data.RecordFileDetection.

Each record's label is ``[header_len=4, label_width=6, image_width, image_height,`` then per object
``cls, x1/W, y1/H, x2/W, y2/H, difficult]`` (coordinates normalised to [0, 1], as
RecordFileDetection(coord_normalized=True) expects; the original image size in the header restores
pixels). An image without objects gets one row of class -1 (gluoncv's padding value, since
RecordFileDetection needs at least one row); readers drop rows with class < 0. The image bytes are
stored unchanged (no re-encoding). ``<prefix>.lst`` is the im2rec list (index, label..., path) and
``<prefix>.json`` keeps the class names and image ids.

A Record read back points at ``<prefix>.rec#<index>``; ``read_image`` understands that form.
"""
import json
import os

import mxnet as mx
import numpy as np
from tqdm import tqdm

from .errors import DatasetError, DatasetReport, ImageReadError
from .io import (  # noqa: F401 - read_record_image: its old home
    check_image,
    decode_image_bytes,
    read_record_image,
)
from .record import DetectionDataset, Record

HEADER_LEN = 4
LABEL_WIDTH = 6


def detection_label(rec):
    """The flat im2rec detection label of a Record (float32)."""
    w, h = float(rec.width), float(rec.height)
    objs = np.zeros((rec.num_boxes, LABEL_WIDTH), np.float64)
    objs[:, 0] = rec.labels
    objs[:, 1:5] = rec.boxes.astype(np.float64) / np.array([w, h, w, h])
    objs[:, 5] = rec.difficult
    if not rec.num_boxes:  # RecordFileDetection needs one object row: a class -1 row is gluoncv's padding
        objs = np.array([[-1, 0, 0, 0, 0, 0]], np.float64)
    return np.concatenate([[HEADER_LEN, LABEL_WIDTH, w, h], objs.ravel()]).astype(np.float32)


def packable_image_bytes(path):
    """The encoded bytes of an image file after a full decode check (check_image 'decode': OpenCV
    decodes a truncated JPEG without an error, so the end-marker check runs first). Raises
    ImageReadError naming the file: a packed file must be one training can read."""
    check_image(path, "decode")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from None


def pack_records(dataset, prefix, progress=False):
    """Write dataset -> <prefix>.rec, .idx, .lst, .json. Returns the number of records written.
    Every image is decode-checked first (packable_image_bytes); one that fails is reported and
    skipped (in dataset.report if present)."""
    report = getattr(dataset, "report", None) or DatasetReport(dataset.name)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)) or ".", exist_ok=True)
    writer = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    items = dataset.records
    if progress:
        items = tqdm(items, desc=f"pack {os.path.basename(prefix)}", unit="img")
    meta, count = [], 0
    with open(prefix + ".lst", "w", encoding="utf-8") as lst:
        for rec in items:
            try:
                data = packable_image_bytes(rec.image)
            except ImageReadError as exc:
                report.warn(rec.image, f"{str(exc).split(': ', 1)[-1]}; not packed", skip_image=True)
                continue
            label = detection_label(rec)
            header = mx.recordio.IRHeader(0, label, count, 0)
            writer.write_idx(count, mx.recordio.pack(header, data))
            lst.write("\t".join([str(count)] + [f"{v:.8g}" for v in label] + [rec.image]) + "\n")
            meta.append({"image_id": rec.image_id, "image": rec.image, "video": rec.video, "frame": rec.frame,
                         "track_ids": rec.track_ids.tolist()})
            count += 1
    writer.close()
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"classes": dataset.classes, "name": dataset.name, "records": meta}, f)
    return count


def parse_detection_label(label, where="record"):
    """Split an im2rec detection label into (header, objects (N, label_width)). Errors name `where`."""
    label = np.asarray(label, np.float64).ravel()
    if len(label) < 2:
        raise DatasetError(f"{where}: label too short for a detection header")
    header_len, width = int(label[0]), int(label[1])
    if header_len < 2 or width < 5 or (len(label) - header_len) % width:
        raise DatasetError(f"{where}: broken detection label (header {header_len}, width {width}, "
                           f"length {len(label)})")
    return label[:header_len], label[header_len:].reshape(-1, width)


def load_recordio(prefix, classes=None, name=None, strict=False, report=None):
    """Read back a .rec/.idx pair as a DetectionDataset (images stay inside the .rec). Class names
    come from <prefix>.json when present, else ``classes``, else 'class<k>'."""
    rec_path, idx_path = prefix + ".rec", prefix + ".idx"
    for p in (rec_path, idx_path):
        if not os.path.isfile(p):
            raise DatasetError(f"{p}: record file not found")
    report = report or DatasetReport(name or os.path.basename(prefix), strict=strict)
    meta = {}
    if os.path.isfile(prefix + ".json"):
        with open(prefix + ".json", "r", encoding="utf-8-sig") as f:
            meta = json.load(f)
    reader = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
    records, max_cls = [], -1
    extra = meta.get("records", [])
    for k, idx in enumerate(sorted(reader.keys)):
        where = f"{rec_path}#{idx}"
        try:
            header, data = mx.recordio.unpack(reader.read_idx(idx))
            head, objs = parse_detection_label(header.label, where)
        except Exception as exc:  # noqa: BLE001 - a damaged record must not stop the whole file
            report.warn(where, f"unreadable record ({exc}); skipped", skip_image=True)
            continue
        if len(head) >= 4:
            width, height = int(head[2]), int(head[3])
        else:
            img = decode_image_bytes(data, where)
            height, width = img.shape[:2]
        objs = objs[objs[:, 0] >= 0]
        boxes = objs[:, 1:5] * np.array([width, height, width, height])
        labels = objs[:, 0].astype(np.int64)
        difficult = objs[:, 5] > 0.5 if objs.shape[1] > 5 else None
        max_cls = max(max_cls, int(labels.max()) if len(labels) else -1)
        m = extra[k] if k < len(extra) else {}
        records.append(Record(image=where, width=width, height=height, boxes=boxes, labels=labels,
                              difficult=difficult, track_ids=m.get("track_ids"), video=m.get("video"),
                              frame=m.get("frame", -1), image_id=m.get("image_id", f"{idx}")))
    reader.close()
    classes = meta.get("classes") or (list(classes) if classes else [f"class{k}" for k in range(max_cls + 1)])
    dataset = DetectionDataset(records, classes, name or meta.get("name") or os.path.basename(prefix))
    report.count("images", len(records))
    report.log_summary()
    dataset.report = report
    return dataset
