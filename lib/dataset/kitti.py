"""KITTI object labels: one ``<image>.txt`` per image, 15 space-separated fields per object
(type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y, optionally a 16th score).
Boxes are 0-based pixel corners taken as they are. 'DontCare' regions are skipped."""
import os

from .io import DEFAULT_CHECK, DatasetError, DatasetReport, ImageReadError, check_image, find_image, image_size, \
    resolve_classes, validate_boxes
from .record import DetectionDataset, Record

KITTI_CLASSES = ["Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc"]


def _kitti_layout(root, labels_dir, images_dir):
    for sub in ("training", ""):
        base = os.path.join(root, sub) if sub else root
        if labels_dir is None and os.path.isdir(os.path.join(base, "label_2")):
            labels_dir = os.path.join(base, "label_2")
        if images_dir is None and os.path.isdir(os.path.join(base, "image_2")):
            images_dir = os.path.join(base, "image_2")
    if labels_dir is None:
        raise DatasetError(f"{root}: KITTI labels not found (expected label_2/ or training/label_2/)")
    return labels_dir, images_dir or labels_dir


def load_kitti(root, classes=None, labels_dir=None, images_dir=None, split=None, check_images=DEFAULT_CHECK,
               strict=False, allow_empty=True, name=None, report=None):
    """Load KITTI labels. root holds label_2/ and image_2/ (or training/...). classes default to the 8
    KITTI classes; other types (except DontCare) are warned about and dropped. split: optional list
    file of image ids."""
    root = os.path.abspath(root)
    report = report or DatasetReport(name or os.path.basename(root), strict=strict)
    labels_dir, images_dir = _kitti_layout(root, labels_dir, images_dir)
    classes = resolve_classes(classes) or list(KITTI_CLASSES)
    class_index = {c: i for i, c in enumerate(classes)}
    if split:
        with open(split, "r", encoding="utf-8-sig") as f:
            ids = [ln.split()[0] for ln in f if ln.strip()]
    else:
        ids = sorted(os.path.splitext(n)[0] for n in os.listdir(labels_dir) if n.endswith(".txt"))
    records = []
    for image_key in ids:
        label_path = os.path.join(labels_dir, image_key + ".txt")
        image = find_image(images_dir, image_key)
        if not os.path.isfile(label_path):
            report.warn(label_path, "label file not found; image skipped", skip_image=True)
            continue
        try:
            check_image(image, check_images)
            width, height = image_size(image)
        except ImageReadError as exc:
            report.warn(label_path, f"{exc}; image skipped", skip_image=True)
            continue
        boxes, labels, lines = [], [], []
        with open(label_path, "r", encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) not in (15, 16):
                    report.warn(label_path, f"expected 15 fields, got {len(fields)}; line skipped",
                                line=line_no, drop_boxes=1)
                    continue
                if fields[0] == "DontCare":
                    continue
                if fields[0] not in class_index:
                    report.warn(label_path, f"unknown class {fields[0]!r}; box dropped", line=line_no,
                                drop_boxes=1)
                    continue
                try:
                    box = [float(v) for v in fields[4:8]]
                except ValueError:
                    report.warn(label_path, "non-numeric box fields; line skipped", line=line_no, drop_boxes=1)
                    continue
                boxes.append(box)
                labels.append(class_index[fields[0]])
                lines.append(line_no)
        boxes, labels = validate_boxes(boxes, labels, width, height, report, label_path, lines=lines)
        if not len(boxes) and not allow_empty:
            report.warn(label_path, "no valid object (empty annotation); image skipped", skip_image=True)
            continue
        records.append(Record(image=os.path.abspath(image), width=width, height=height, boxes=boxes,
                              labels=labels, image_id=os.path.splitext(os.path.relpath(image, root))[0]))
    dataset = DetectionDataset(records, classes, name or os.path.basename(root))
    report.count("images", len(records))
    report.log_summary()
    dataset.report = report
    return dataset


def write_kitti(dataset, labels_dir):
    """Write KITTI label files (the 3D fields are written as the KITTI 'unknown' values)."""
    os.makedirs(labels_dir, exist_ok=True)
    for rec in dataset:
        lines = [f"{dataset.classes[int(l)]} 0.00 0 -10 {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f} "
                 f"-1 -1 -1 -1000 -1000 -1000 -10" for b, l in zip(rec.boxes, rec.labels)]
        with open(os.path.join(labels_dir, os.path.basename(rec.image_id) + ".txt"), "w") as f:
            f.write("".join(ln + "\n" for ln in lines))
