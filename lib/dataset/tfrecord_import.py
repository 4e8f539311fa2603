"""Import TFRecords of the TensorFlow Object Detection API without TensorFlow (``tfrecord`` package).

Fields read from each tf.train.Example: image/encoded (required), image/format, image/filename,
image/source_id, image/width, image/height, image/object/bbox/{xmin,ymin,xmax,ymax} (normalised),
image/object/class/label (label-map ids, from 1), image/object/class/text, image/object/difficult.
Images are written out to ``<out_dir>/images/`` (Records point at files); class names come from the
label map when given, else from class/text.
"""
import os
import re

import numpy as np
from tqdm import tqdm

from .io import DatasetError, DatasetReport, ImageReadError, decode_image_bytes, validate_boxes
from .labelmap import read_label_map
from .record import DetectionDataset, Record
from .recordio import packable_image_bytes


def _scalar(example, key, default=None):
    v = example.get(key)
    if v is None:
        return default
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    v = np.asarray(v).ravel()
    if not len(v):
        return default
    return v[0]


def _list(example, key, dtype=None):
    v = example.get(key)
    if v is None:
        return np.zeros(0, dtype or np.float32)
    if isinstance(v, (bytes, bytearray)):
        return np.array([bytes(v)], object)
    v = np.asarray(v).ravel()
    return v.astype(dtype) if dtype is not None else v


def _safe_name(s):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._") or "image"


def _texts(example):
    return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in _list(example, "image/object/class/text")]


def _examples(path, report, progress=False):
    """Yield (index, example dict) of one TFRecord file, streaming; a damaged file is read up to the
    damage and reported (when a report is given)."""
    from tfrecord.reader import tfrecord_loader
    it = tfrecord_loader(path, None)
    if progress:
        it = tqdm(it, desc=f"read {os.path.basename(path)}", unit="ex")
    k = 0
    try:
        for example in it:
            yield k, example
            k += 1
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt file: keep what was read
        if report is not None:
            report.warn(path, f"record #{k}: cannot parse ({exc}); rest of the file skipped", skip_image=True)


def import_tfrecord(paths, out_dir, label_map=None, strict=False, name=None, report=None, progress=False):
    """Read one or more TFRecord files into a DetectionDataset, writing the images to out_dir/images/.
    label_map: TF OD label_map.pbtxt giving id -> name (ids map to 0-based classes by ascending id)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    report = report or DatasetReport(name or os.path.basename(paths[0]), strict=strict)
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    id_to_index, classes = None, None
    if label_map:
        items = read_label_map(label_map)
        classes = [it["name"] for it in items]
        id_to_index = {it["id"]: k for k, it in enumerate(items)}
    for path in paths:
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: TFRecord file not found")
    if classes is None:  # first pass (labels only; images dropped at once): the id -> name table
        text_of_id, all_ids = {}, set()
        for path in paths:
            for _, ex in _examples(path, None):
                ids = _list(ex, "image/object/class/label", np.int64)
                all_ids.update(int(i) for i in ids)
                for t, i in zip(_texts(ex), ids):
                    text_of_id.setdefault(int(i), t)
        known = sorted(text_of_id) if text_of_id else sorted(all_ids)
        classes = [text_of_id[i] for i in known] if text_of_id else [f"class{i}" for i in known]
        id_to_index = {i: k for k, i in enumerate(known)}
    raw = ((path, k, ex) for path in paths for k, ex in _examples(path, report, progress))
    records, used = [], set()
    for path, k, ex in raw:
        where = f"{path} (record #{k})"
        data = ex.get("image/encoded")
        if data is None or not len(data):
            report.warn(where, "no image/encoded; skipped", skip_image=True)
            continue
        data = bytes(data) if isinstance(data, (bytes, bytearray)) else bytes(np.asarray(data).ravel()[0])
        try:
            img = decode_image_bytes(data, where)
        except ImageReadError as exc:
            report.warn(where, f"{str(exc).split(': ', 1)[-1]}; skipped", skip_image=True)
            continue
        height, width = img.shape[:2]
        hdr_w, hdr_h = _scalar(ex, "image/width"), _scalar(ex, "image/height")
        if hdr_w is not None and hdr_h is not None and (int(hdr_w), int(hdr_h)) != (width, height):
            report.warn(where, f"image/width,height say {int(hdr_w)}x{int(hdr_h)} but the image is "
                               f"{width}x{height}; using the image size")
        fname = _scalar(ex, "image/filename") or _scalar(ex, "image/source_id") or f"{k:06d}".encode()
        fname = fname.decode("utf-8") if isinstance(fname, bytes) else str(fname)
        fmt = _scalar(ex, "image/format")
        fmt = (fmt.decode() if isinstance(fmt, bytes) else str(fmt or "")).lower().lstrip(".")
        stem = _safe_name(os.path.splitext(os.path.basename(fname))[0])
        ext = "." + ({"jpeg": "jpg"}.get(fmt, fmt) or "jpg") if fmt else (os.path.splitext(fname)[1] or ".jpg")
        if stem in used:
            stem = f"{stem}_{os.path.basename(path)}_{k}"
        used.add(stem)
        out_path = os.path.abspath(os.path.join(img_dir, _safe_name(stem) + ext))
        with open(out_path, "wb") as f:
            f.write(data)  # the original bytes, not re-encoded
        xmin, ymin = _list(ex, "image/object/bbox/xmin", np.float64), _list(ex, "image/object/bbox/ymin", np.float64)
        xmax, ymax = _list(ex, "image/object/bbox/xmax", np.float64), _list(ex, "image/object/bbox/ymax", np.float64)
        ids = _list(ex, "image/object/class/label", np.int64)
        texts = _texts(ex)
        n = len(xmin)
        if not (len(ymin) == len(xmax) == len(ymax) == n) or (len(ids) != n and len(texts) != n):
            report.warn(where, f"object fields have different lengths (bbox {len(xmin)}/{len(ymin)}/{len(xmax)}/"
                               f"{len(ymax)}, label {len(ids)}, text {len(texts)}); skipped", skip_image=True)
            continue
        difficult = _list(ex, "image/object/difficult", np.int64)
        difficult = difficult.astype(bool) if len(difficult) == n else np.zeros(n, bool)
        boxes, labels, diff = [], [], []
        for j in range(n):
            if len(ids) == n:
                cls = id_to_index.get(int(ids[j]))
                what = f"label id {int(ids[j])}"
            else:
                cls = classes.index(texts[j]) if texts[j] in classes else None
                what = f"class {texts[j]!r}"
            if cls is None:
                report.warn(where, f"unknown {what}; box dropped", drop_boxes=1)
                continue
            boxes.append([xmin[j] * width, ymin[j] * height, xmax[j] * width, ymax[j] * height])
            labels.append(cls)
            diff.append(difficult[j])
        boxes, labels, diff = validate_boxes(boxes, labels, width, height, report, where, extras=(diff,))
        records.append(Record(image=out_path, width=width, height=height, boxes=boxes, labels=labels,
                              difficult=diff, image_id=os.path.splitext(os.path.basename(out_path))[0]))
    dataset = DetectionDataset(records, classes, name or "tfrecord")
    report.count("images", len(records))
    report.log_summary()
    dataset.report = report
    return dataset


def export_tfrecord(dataset, path, label_ids=None):
    """Write a dataset as TF OD API TFRecord (ids from 1 unless label_ids gives each class its id).
    Every image is decode-checked first; one that fails is reported (dataset.report) and skipped.
    Returns the number of records written."""
    from tfrecord.writer import TFRecordWriter
    report = getattr(dataset, "report", None) or DatasetReport(dataset.name)
    label_ids = label_ids or list(range(1, dataset.num_classes + 1))
    count = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = TFRecordWriter(path)
    try:
        for rec in dataset:
            try:
                data = packable_image_bytes(rec.image)
            except ImageReadError as exc:
                report.warn(rec.image, f"{str(exc).split(': ', 1)[-1]}; not written", skip_image=True)
                continue
            w, h = float(rec.width), float(rec.height)
            ext = os.path.splitext(rec.image)[1].lower().lstrip(".") or "jpeg"
            writer.write({
                "image/encoded": (data, "byte"),
                "image/format": ({"jpg": "jpeg"}.get(ext, ext).encode(), "byte"),
                "image/filename": (os.path.basename(rec.image).encode(), "byte"),
                "image/source_id": (rec.image_id.encode(), "byte"),
                "image/width": (rec.width, "int"), "image/height": (rec.height, "int"),
                "image/object/bbox/xmin": ((rec.boxes[:, 0] / w).tolist(), "float"),
                "image/object/bbox/ymin": ((rec.boxes[:, 1] / h).tolist(), "float"),
                "image/object/bbox/xmax": ((rec.boxes[:, 2] / w).tolist(), "float"),
                "image/object/bbox/ymax": ((rec.boxes[:, 3] / h).tolist(), "float"),
                "image/object/class/label": ([int(label_ids[int(l)]) for l in rec.labels], "int"),
                "image/object/class/text": ([dataset.classes[int(l)].encode() for l in rec.labels], "byte"),
                "image/object/difficult": (rec.difficult.astype(int).tolist(), "int"),
            })
            count += 1
    finally:
        writer.close()
    return count
