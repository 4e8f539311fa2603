"""Open Images (OID v4+) boxes as keras-retinanet reads them: a class-descriptions CSV
(``LabelName,DisplayName``, no header) and a box annotations CSV with header
``ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,...``
in normalised [0,1] coordinates; images are ``<images_dir>/<ImageID>.jpg``.
Group-of boxes are kept with difficult=True. ``labels_filter`` keeps only the named classes."""
import csv
import os

from .io import DEFAULT_CHECK, DatasetError, DatasetReport, ImageReadError, check_image, find_image, image_size, \
    validate_boxes
from .record import DetectionDataset, Record


def read_oid_descriptions(path):
    out = {}
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) < 2:
                raise DatasetError(f"{path}:{line_no}: expected 'LabelName,DisplayName'")
            out[row[0].strip()] = row[1].strip()
    return out


def load_oid(annotations, descriptions, images_dir, labels_filter=None, check_images=DEFAULT_CHECK,
             strict=False, name=None, report=None):
    """Load Open Images boxes (see module docstring). Classes are display names, sorted, or
    ``labels_filter`` in its order."""
    report = report or DatasetReport(name or os.path.basename(annotations), strict=strict)
    desc = read_oid_descriptions(descriptions)
    if labels_filter:
        unknown = [n for n in labels_filter if n not in desc.values()]
        if unknown:
            raise DatasetError(f"{descriptions}: labels_filter names not in the descriptions: {unknown}")
        classes = list(labels_filter)
    else:
        classes = sorted(set(desc.values()))
    class_index = {c: i for i, c in enumerate(classes)}
    per_image = {}
    with open(annotations, "r", encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        need = {"ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DatasetError(f"{annotations}:1: header must contain {sorted(need)}")
        for line_no, row in enumerate(reader, 2):
            name_ = desc.get(row["LabelName"])
            if name_ is None:
                report.warn(annotations, f"unknown LabelName {row['LabelName']!r}; box dropped", line=line_no,
                            drop_boxes=1)
                continue
            entry = per_image.setdefault(row["ImageID"], [])
            if name_ not in class_index:
                continue
            try:
                box = [float(row[k]) for k in ("XMin", "YMin", "XMax", "YMax")]
            except (TypeError, ValueError):
                report.warn(annotations, "non-numeric coordinates; box dropped", line=line_no, drop_boxes=1)
                continue
            entry.append((box, class_index[name_], row.get("IsGroupOf", "0") == "1", line_no))
    records = []
    for image_key, entries in per_image.items():
        if labels_filter and not entries:
            continue
        image = find_image(images_dir, image_key)
        try:
            check_image(image, check_images)
            width, height = image_size(image)
        except ImageReadError as exc:
            report.warn(annotations, f"{exc}; image skipped", skip_image=True, drop_boxes=len(entries))
            continue
        boxes = [[b[0] * width, b[1] * height, b[2] * width, b[3] * height] for b, _, _, _ in entries]
        boxes, labels, difficult = validate_boxes(boxes, [e[1] for e in entries], width, height, report,
                                                  annotations, lines=[e[3] for e in entries],
                                                  extras=([e[2] for e in entries],))
        records.append(Record(image=os.path.abspath(image), width=width, height=height, boxes=boxes,
                              labels=labels, difficult=difficult, image_id=image_key))
    dataset = DetectionDataset(records, classes, name or "openimages")
    report.count("images", len(records))
    report.log_summary()
    dataset.report = report
    return dataset
