"""Pascal VOC XML: the standard tree (Annotations/ JPEGImages/ ImageSets/Main/) and the plain layouts
annotation tools export (a folder of XMLs next to the images, or annotations/ + images/ + split lists,
like data/speedtrap). VOC XML coordinates are 1-based inclusive: x1 = xmin - 1, x2 = xmax (DESIGN.md)."""
import os
import shutil
import xml.etree.ElementTree as ET

from .io import (
    DEFAULT_CHECK,
    DatasetError,
    DatasetReport,
    ImageReadError,
    check_image,
    find_image,
    image_size,
    resolve_classes,
    validate_boxes,
)
from .record import DetectionDataset, Record
from .video import assign_snippets


def _text(node, tag, default=None):
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text is not None else default


def parse_voc_xml(path):
    """Parse one VOC-style XML file. Returns a dict {filename, path, width, height, objects: [{name,
    xmin, ymin, xmax, ymax, difficult, trackid}]} with raw (file) coordinates. Raises DatasetError
    naming the file (and line for XML syntax errors) when the file is malformed."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        raise DatasetError(f"{path}:{line}: malformed XML ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read annotation ({exc})") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise DatasetError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    try:
        width = int(float(_text(size, "width", "0"))) if size is not None else 0
        height = int(float(_text(size, "height", "0"))) if size is not None else 0
    except ValueError:
        raise DatasetError(f"{path}: <size> is not numeric") from None
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        bnd = obj.find("bndbox")
        if name is None or bnd is None:
            objects.append({"error": f"object {k} has no <name> or <bndbox>"})
            continue
        try:
            coords = [float(_text(bnd, t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            objects.append({"error": f"object {k} ({name}) has a missing or non-numeric bndbox coordinate"})
            continue
        difficult = _text(obj, "difficult", "0")
        trackid = _text(obj, "trackid")
        objects.append({"name": name, "xmin": coords[0], "ymin": coords[1], "xmax": coords[2],
                        "ymax": coords[3], "difficult": difficult not in ("0", "", None),
                        "trackid": int(trackid) if trackid not in (None, "") else -1})
    return {"filename": _text(root, "filename"), "path": _text(root, "path"), "folder": _text(root, "folder"),
            "width": width, "height": height, "objects": objects}


def _read_id_list(path):
    ids = []
    with open(path, "r", encoding="utf-8-sig") as f:
        for line in f:
            parts = line.split()
            if parts:
                ids.append(parts[0])
    return ids


def _voc_layout(root, annotations_dir=None, images_dir=None):
    if annotations_dir is None:
        for cand in ("Annotations", "annotations"):
            if os.path.isdir(os.path.join(root, cand)):
                annotations_dir = os.path.join(root, cand)
                break
        else:
            annotations_dir = root
    if images_dir is None:
        for cand in ("JPEGImages", "images", "Images"):
            if os.path.isdir(os.path.join(root, cand)):
                images_dir = os.path.join(root, cand)
                break
        else:
            images_dir = annotations_dir
    return annotations_dir, images_dir


def _split_ids(root, split):
    if isinstance(split, (list, tuple)):
        ids = []
        for s in split:
            ids += _split_ids(root, s)
        return ids
    if os.path.isfile(split):
        return _read_id_list(split)
    for cand in (os.path.join(root, "ImageSets", "Main", split + ".txt"),
                 os.path.join(root, "splits", split + ".txt"),
                 os.path.join(root, split + ".txt")):
        if os.path.isfile(cand):
            return _read_id_list(cand)
    raise DatasetError(f"{root}: split {split!r} not found (looked in ImageSets/Main/, splits/ and the "
                       f"root for {split}.txt)")


def load_voc(root, split=None, classes=None, annotations_dir=None, images_dir=None, check_images=DEFAULT_CHECK,
             strict=False, allow_empty=True, keep_difficult=True, snippets=None, name=None, report=None):
    """Load a Pascal VOC dataset.

    root: dataset folder. Layout is found automatically: annotations in Annotations/, annotations/ or
      root itself; images in JPEGImages/, images/ or next to the XMLs (override with annotations_dir /
      images_dir). An image is found by the XML's <filename>, then by the XML stem with any image
      extension, then by the XML's <path>.
    split: None (every XML), a split name looked up in ImageSets/Main/, splits/ or root, a path to a
      list file (first token per line = image id), or a list of those.
    classes: list, or a label_map.pbtxt / classes file; None = sorted names found in the XMLs.
    check_images: none|exists|intact|header|decode (what is checked of each image at load time;
      lib.dataset.io.check_image).
    allow_empty: keep images with no object (negatives); False skips them with a warning.
    snippets: None, or a dict of detect_snippets arguments (max_gap, break_iou, min_background) to group
      numbered frames into videos (sets Record.video / Record.frame).
    Bad samples are warned about (file + what is wrong) and skipped; strict=True raises instead.
    The returned dataset has ``.report`` (a DatasetReport) and, with snippets, ``.snippet_list``.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: VOC dataset folder not found")
    report = report or DatasetReport(name or os.path.basename(root), strict=strict)
    ann_dir, img_dir = _voc_layout(root, annotations_dir, images_dir)
    if split is None:
        ids = sorted(os.path.splitext(n)[0] for n in os.listdir(ann_dir) if n.endswith(".xml"))
    else:
        ids = _split_ids(root, split)
    classes = resolve_classes(classes)
    parsed = []
    for image_key in ids:
        xml_path = os.path.join(ann_dir, image_key + ".xml")
        if not os.path.isfile(xml_path):
            report.warn(xml_path, "annotation file not found (listed in the split); image skipped",
                        skip_image=True)
            continue
        try:
            if os.path.getsize(xml_path) == 0:
                raise DatasetError(f"{xml_path}: empty annotation file")
            ann = parse_voc_xml(xml_path)
        except DatasetError as exc:
            report.warn(xml_path, str(exc).split(": ", 1)[-1] + "; image skipped", skip_image=True)
            continue
        parsed.append((image_key, xml_path, ann))
    if classes is None:
        classes = sorted({o["name"] for _, _, a in parsed for o in a["objects"] if "name" in o})
    records = [rec for rec in (_voc_record(k, x, a, classes, img_dir, root, check_images, allow_empty,
                                           keep_difficult, report) for k, x, a in parsed) if rec is not None]
    dataset = DetectionDataset(records, classes, name or os.path.basename(root))
    if snippets:
        if split is None:
            dataset.snippet_list = assign_snippets(dataset.records, **snippets)
        else:  # snippets come from ALL frames of the folder, not from the frames of one split
            full = load_voc(root, None, classes, annotations_dir, images_dir, check_images="none",
                            keep_difficult=keep_difficult, report=DatasetReport(report.name, log=False))
            dataset.snippet_list = assign_snippets(full.records, **snippets)
            where = {r.image_id: (r.video, r.frame) for r in full.records}
            for rec in records:
                rec.video, rec.frame = where.get(rec.image_id, (None, -1))
    report.count("images", len(records))
    report.count("images_without_boxes", sum(r.num_boxes == 0 for r in records))
    report.log_summary()
    dataset.report = report
    return dataset


def _voc_record(image_key, xml_path, ann, classes, img_dir, root, check_images, allow_empty,
                keep_difficult, report, zero_based=False):
    class_index = {c: i for i, c in enumerate(classes)}
    image = find_image(img_dir, ann["filename"] or image_key)
    if not os.path.isfile(image):
        image = find_image(img_dir, image_key)
    if not os.path.isfile(image) and ann.get("path") and os.path.isfile(ann["path"]):
        image = ann["path"]
    try:
        check_image(image, check_images)
        width, height = ann["width"], ann["height"]
        if width <= 0 or height <= 0:
            width, height = image_size(image)
        elif check_images in ("header", "decode"):  # "intact" stays cheap: no header parse
            real = image_size(image)
            if real != (width, height):
                report.warn(xml_path, f"<size> says {width}x{height} but {image} is {real[0]}x{real[1]}; "
                                      f"using the image size")
                width, height = real
    except ImageReadError as exc:
        report.warn(xml_path, f"{exc}; image skipped", skip_image=True)
        return None
    boxes, labels, difficult, track_ids = [], [], [], []
    offset = 0.0 if zero_based else 1.0
    end_offset = 1.0 if zero_based else 0.0
    for obj in ann["objects"]:
        if "error" in obj:
            report.warn(xml_path, obj["error"] + "; box dropped", drop_boxes=1)
            continue
        if obj["name"] not in class_index:
            report.warn(xml_path, f"unknown class {obj['name']!r}; box dropped", drop_boxes=1)
            continue
        if obj["difficult"] and not keep_difficult:
            continue
        boxes.append([obj["xmin"] - offset, obj["ymin"] - offset, obj["xmax"] + end_offset,
                      obj["ymax"] + end_offset])
        labels.append(class_index[obj["name"]])
        difficult.append(obj["difficult"])
        track_ids.append(obj["trackid"])
    boxes, labels, difficult, track_ids = validate_boxes(boxes, labels, width, height, report, xml_path,
                                                         extras=(difficult, track_ids))
    if not len(boxes) and not allow_empty:
        report.warn(xml_path, "no valid object (empty annotation); image skipped", skip_image=True)
        return None
    image_id = os.path.splitext(os.path.relpath(image, root))[0] if image.startswith(root + os.sep) \
        else os.path.splitext(os.path.relpath(xml_path, root))[0]
    return Record(image=os.path.abspath(image), width=width, height=height, boxes=boxes, labels=labels,
                  difficult=difficult, track_ids=track_ids, image_id=image_id)


def _fmt(v):
    v = float(v)
    return str(int(round(v))) if abs(v - round(v)) < 1e-6 else repr(v)


def voc_xml_string(record, classes, zero_based=False, folder="JPEGImages", filename=None, extra_object=None,
                   include_path=True):
    """One Record as VOC XML text (1-based inclusive coordinates; zero_based=True for ImageNet VID).
    include_path writes the image's absolute path in <path> (as annotation tools do)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = filename or os.path.basename(record.image)
    if include_path:
        ET.SubElement(ann, "path").text = record.image
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(record.width)
    ET.SubElement(size, "height").text = str(record.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    start, end = (0.0, 1.0) if zero_based else (1.0, 0.0)
    for k in range(record.num_boxes):
        obj = ET.SubElement(ann, "object")
        if record.track_ids[k] >= 0:
            ET.SubElement(obj, "trackid").text = str(int(record.track_ids[k]))
        ET.SubElement(obj, "name").text = classes[int(record.labels[k])]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(record.difficult[k]))
        if extra_object:
            for tag, value in extra_object(record, k).items():
                ET.SubElement(obj, tag).text = str(value)
        bnd = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = record.boxes[k]
        ET.SubElement(bnd, "xmin").text = _fmt(x1 + start)
        ET.SubElement(bnd, "ymin").text = _fmt(y1 + start)
        ET.SubElement(bnd, "xmax").text = _fmt(x2 - end)
        ET.SubElement(bnd, "ymax").text = _fmt(y2 - end)
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_voc(dataset, out_dir, split="trainval", images="copy"):
    """Write a dataset as a standard VOC tree: Annotations/<id>.xml, JPEGImages/, ImageSets/Main/<split>.txt.
    images: 'copy' copies the image files, 'link' symlinks them, 'reference' only records the absolute
    path in <path> (the reader falls back to it). File ids are the image_id's last part (the file stem), or the whole
image_id with '/' replaced by '__' when stems are not unique."""
    if images not in ("copy", "link", "reference"):
        raise ValueError(f"images must be copy|link|reference, got {images!r}")
    ann_dir = os.path.join(out_dir, "Annotations")
    img_dir = os.path.join(out_dir, "JPEGImages")
    set_dir = os.path.join(out_dir, "ImageSets", "Main")
    for d in (ann_dir, img_dir, set_dir):
        os.makedirs(d, exist_ok=True)
    ids = []
    stems = [os.path.basename(r.image_id) for r in dataset]
    flat = len(set(stems)) != len(stems)  # file stems collide (e.g. frames of several videos): keep the path
    for rec, stem in zip(dataset, stems):
        key = rec.image_id.replace("/", "__").replace("\\", "__") if flat else stem
        if key in ids:
            raise DatasetError(f"duplicate image id {rec.image_id!r} while writing VOC")
        ext = os.path.splitext(rec.image)[1] or ".jpg"
        filename = key + ext
        if images == "copy":
            shutil.copyfile(rec.image, os.path.join(img_dir, filename))
        elif images == "link":
            dst = os.path.join(img_dir, filename)
            if os.path.lexists(dst):
                os.remove(dst)
            os.symlink(os.path.abspath(rec.image), dst)
        with open(os.path.join(ann_dir, key + ".xml"), "w", encoding="utf-8") as f:
            f.write(voc_xml_string(rec, dataset.classes, filename=filename))
        ids.append(key)
    with open(os.path.join(set_dir, split + ".txt"), "w", encoding="utf-8") as f:
        f.write("".join(i + "\n" for i in ids))
    return out_dir
