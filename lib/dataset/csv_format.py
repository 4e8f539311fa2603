"""keras-retinanet CSV: ``path,x1,y1,x2,y2,class_name`` one box per row, ``path,,,,,`` for an image
without objects, paths relative to the CSV file; classes file ``class_name,id`` (ids from 0).
Coordinates are taken as they are (floats accepted)."""
import csv
import os
from collections import OrderedDict

from .io import (
    DEFAULT_CHECK,
    DatasetError,
    DatasetReport,
    ImageReadError,
    check_image,
    image_size,
    validate_boxes,
)
from .labelmap import load_classes_file, read_classes_csv, write_classes_csv
from .record import DetectionDataset, Record


def load_csv(annotations, classes=None, base_dir=None, check_images=DEFAULT_CHECK, strict=False,
             allow_empty=True, name=None, report=None):
    """Load a keras-retinanet CSV.

    annotations: the CSV path. classes: classes CSV (name,id), a list, or None (sorted names found).
    base_dir: folder relative image paths start from (default: the CSV's folder).
    Malformed lines, x2 <= x1, out-of-image boxes and unknown classes are warned about with the line
    number and skipped (strict=True raises). Image sizes come from the image headers."""
    report = report or DatasetReport(name or os.path.basename(annotations), strict=strict)
    if not os.path.isfile(annotations):
        raise DatasetError(f"{annotations}: CSV file not found")
    if isinstance(classes, str):
        classes = read_classes_csv(classes) if classes.endswith(".csv") else _classes_any(classes)
    base_dir = os.path.abspath(base_dir or os.path.dirname(os.path.abspath(annotations)))
    rows = OrderedDict()
    with open(annotations, "r", encoding="utf-8-sig", newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 6:
                report.warn(annotations, f"expected 6 fields 'path,x1,y1,x2,y2,class_name', got {len(row)}: "
                                         f"{','.join(row)!r}; line skipped", line=line_no, drop_boxes=1)
                continue
            path, *coords, cname = (c.strip() for c in row)
            if not path:
                report.warn(annotations, "empty image path; line skipped", line=line_no, drop_boxes=1)
                continue
            entry = rows.setdefault(path, [])
            if all(c == "" for c in coords) and cname == "":
                continue  # image without objects
            try:
                box = [float(c) for c in coords]
            except ValueError:
                report.warn(annotations, f"non-numeric coordinates {coords}; box dropped", line=line_no,
                            drop_boxes=1)
                continue
            if not cname:
                report.warn(annotations, "missing class name; box dropped", line=line_no, drop_boxes=1)
                continue
            if box[2] <= box[0] or box[3] <= box[1]:  # checked here so reports follow line order
                report.warn(annotations, f"box {coords} has x2 <= x1 or y2 <= y1; box dropped",
                            line=line_no, drop_boxes=1)
                continue
            if classes is not None and cname not in classes:
                report.warn(annotations, f"unknown class {cname!r}; box dropped", line=line_no, drop_boxes=1)
                continue
            entry.append((box, cname, line_no))
    if classes is None:
        classes = sorted({c for boxes in rows.values() for _, c, _ in boxes})
    class_index = {c: i for i, c in enumerate(classes)}
    records = []
    for path, entries in rows.items():
        full = path if os.path.isabs(path) else os.path.join(base_dir, path)
        first_line = entries[0][2] if entries else None
        try:
            check_image(full, check_images)
            width, height = image_size(full)
        except ImageReadError as exc:
            report.warn(annotations, f"{exc}; image skipped", line=first_line, skip_image=True,
                        drop_boxes=len(entries))
            continue
        boxes, labels, lines = [], [], []
        for box, cname, line_no in entries:
            boxes.append(box)
            labels.append(class_index[cname])
            lines.append(line_no)
        boxes, labels = validate_boxes(boxes, labels, width, height, report, annotations, lines=lines)
        if not len(boxes) and not allow_empty:
            report.warn(annotations, f"{path}: no valid object; image skipped", line=first_line,
                        skip_image=True)
            continue
        image_id = os.path.splitext(os.path.relpath(full, base_dir))[0].replace(os.sep, "/")
        records.append(Record(image=os.path.abspath(full), width=width, height=height, boxes=boxes,
                              labels=labels, image_id=image_id))
    dataset = DetectionDataset(records, classes, name or os.path.splitext(os.path.basename(annotations))[0])
    report.count("images", len(records))
    report.log_summary()
    dataset.report = report
    return dataset


def _classes_any(path):
    return load_classes_file(path)


def _num(v):
    v = float(v)
    return str(int(round(v))) if abs(v - round(v)) < 1e-6 else repr(v)


def write_csv(dataset, path, classes_path=None, relative=True):
    """Write the dataset as keras-retinanet CSV (+ classes CSV when classes_path is given).
    Paths are relative to the CSV's folder when relative=True."""
    base = os.path.dirname(os.path.abspath(path))
    os.makedirs(base, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for rec in dataset:
            p = os.path.relpath(rec.image, base).replace(os.sep, "/") if relative else rec.image
            if rec.num_boxes == 0:
                writer.writerow([p, "", "", "", "", ""])
            for box, label in zip(rec.boxes, rec.labels):
                writer.writerow([p] + [_num(v) for v in box] + [dataset.classes[int(label)]])
    if classes_path:
        write_classes_csv(classes_path, dataset.classes)
    return path
