"""ImageNet VID (ILSVRC2015) layout, readers and writers.

    root/Data/VID/<split>/<snippet>/%06d.JPEG      frames
    root/Annotations/VID/<split>/<snippet>/%06d.xml per-frame XML with <trackid>, class = wnid
    root/Data/DET/..., root/Annotations/DET/...    still images (200 DET classes; mapped to the 30)
    root/ImageSets/*.txt                           image sets in the reference (FGFA) formats:
      4 fields ``<split>/<snippet> <frame id> <frame index> <length>`` (VID_train_15frames.txt,
      VID_val_videos.txt), or 2 fields ``<path without extension> <id>`` (VID_val_frames.txt with
      paths to frames, DET_train_30classes.txt with paths to DET images).

VID XML coordinates are 0-based inclusive pixel indices (the devkit's width is xmax - xmin + 1):
x1 = xmin, x2 = xmax + 1, so widths equal the devkit's. Writers invert.
"""
import os
from collections import OrderedDict

from .io import DEFAULT_CHECK, DatasetError, DatasetReport, resolve_classes
from .record import DetectionDataset
from .voc import _voc_record, parse_voc_xml, voc_xml_string

VID_WNIDS = ["n02691156", "n02419796", "n02131653", "n02834778", "n01503061", "n02924116", "n02958343",
             "n02402425", "n02084071", "n02121808", "n02503517", "n02118333", "n02510455", "n02342885",
             "n02374451", "n02129165", "n01674464", "n02484322", "n03790512", "n02324045", "n02509815",
             "n02411705", "n01726692", "n02355227", "n02129604", "n04468005", "n01662784", "n04530566",
             "n02062744", "n02391049"]
VID_CLASSES = ["airplane", "antelope", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog",
               "domestic_cat", "elephant", "fox", "giant_panda", "hamster", "horse", "lion", "lizard",
               "monkey", "motorcycle", "rabbit", "red_panda", "sheep", "snake", "squirrel", "tiger",
               "train", "turtle", "watercraft", "whale", "zebra"]


def read_image_set(path):
    """Parse an image-set file. Returns a list of dicts: 4-field lines give {video, frame_id, frame,
    length}; 2-field lines give {path, frame_id}. Errors name the file and line."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image set file not found")
    out, width = [], None
    with open(path, "r", encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if width is None:
                width = len(parts)
            if len(parts) != width or width not in (1, 2, 4):
                raise DatasetError(f"{path}:{line_no}: expected {width if width in (1, 2, 4) else '2 or 4'} "
                                   f"fields, got {len(parts)}: {line.strip()!r}")
            try:
                if width == 4:
                    out.append({"video": parts[0], "frame_id": int(parts[1]), "frame": int(parts[2]),
                                "length": int(parts[3])})
                else:
                    out.append({"path": parts[0], "frame_id": int(parts[1]) if width == 2 else len(out) + 1})
            except ValueError:
                raise DatasetError(f"{path}:{line_no}: non-integer field in {line.strip()!r}") from None
    return out


def write_image_set_4(path, entries):
    """entries: (video, frame_id, frame, length) tuples, written in the 4-field format."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{v} {fid} {fr} {n}\n" for v, fid, fr, n in entries))


def write_image_set_2(path, entries):
    """entries: (path_without_extension, id) tuples, written in the 2-field format."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{p} {i}\n" for p, i in entries))


def _video_length(ann_dir, video, cache):
    if video not in cache:
        folder = os.path.join(ann_dir, video)
        cache[video] = len([n for n in os.listdir(folder) if n.endswith(".xml")]) if os.path.isdir(folder) else 0
    return cache[video]


def load_vid(root, image_set=None, split="train", classes=None, wnids=None, kind="auto", check_images=DEFAULT_CHECK,
             strict=False, allow_empty=True, name=None, report=None):
    """Load ImageNet VID (or DET mapped to the VID classes).

    image_set: name (looked up in root/ImageSets/) or path of an image-set file; None = every frame of
      every snippet under Annotations/VID/<split>/.
    classes / wnids: class names and the XML <name> of each (default: the 30 VID classes). XML names
      may be either. DET objects of other classes are left out silently (DET has 200 classes).
    kind: 'vid', 'det' or 'auto' (DET when the image-set name starts with DET).
    Records of VID frames get video = '<split>/<snippet>' and frame = the frame index; the dataset gets
    ``video_info`` = {video: {"pattern": absolute image path with %06d, "length": frames}} so samplers
    can reach frames that are not in the image set."""
    root = os.path.abspath(root)
    report = report or DatasetReport(name or os.path.basename(root), strict=strict)
    classes = resolve_classes(classes)
    if classes is None:
        classes, wnids = list(VID_CLASSES), list(VID_WNIDS)
    wnids = list(wnids) if wnids is not None else list(classes)
    xml_name_to_class = {w: c for w, c in zip(wnids, classes)}
    xml_name_to_class.update({c: c for c in classes})
    if image_set is not None and not os.path.isfile(image_set):
        cand = os.path.join(root, "ImageSets", image_set if image_set.endswith(".txt") else image_set + ".txt")
        if not os.path.isfile(cand):
            raise DatasetError(f"{root}: image set {image_set!r} not found in ImageSets/")
        image_set = cand
    if kind == "auto":
        kind = "det" if image_set and os.path.basename(image_set).upper().startswith("DET") else "vid"
    sub = "DET" if kind == "det" else "VID"
    ann_dir, data_dir = os.path.join(root, "Annotations", sub), os.path.join(root, "Data", sub)
    entries = []  # (relative path without extension, video or None, frame)
    length_cache = {}
    if image_set is None:
        split_dir = os.path.join(ann_dir, split)
        if not os.path.isdir(split_dir):
            raise DatasetError(f"{split_dir}: annotation folder not found")
        for dirpath, _, files in sorted(os.walk(split_dir)):
            xmls = sorted(f for f in files if f.endswith(".xml"))
            if not xmls:
                continue
            rel = os.path.relpath(dirpath, ann_dir).replace(os.sep, "/")
            length_cache[rel] = len(xmls)
            for f in xmls:
                stem = os.path.splitext(f)[0]
                entries.append((f"{rel}/{stem}", rel if kind == "vid" else None,
                                int(stem) if kind == "vid" and stem.isdigit() else -1))
    else:
        for e in read_image_set(image_set):
            if "video" in e:
                entries.append((f"{e['video']}/{e['frame']:06d}", e["video"], e["frame"]))
                length_cache[e["video"]] = e["length"]
            elif kind == "vid":
                video, stem = e["path"].rsplit("/", 1)
                entries.append((e["path"], video, int(stem)))
            else:
                entries.append((e["path"], None, -1))
    records = []
    mapped_classes = list(classes)
    for rel, video, frame in entries:
        xml_path = os.path.join(ann_dir, rel + ".xml")
        if not os.path.isfile(xml_path):
            report.warn(xml_path, "annotation file not found; image skipped", skip_image=True)
            continue
        try:
            ann = parse_voc_xml(xml_path)
        except DatasetError as exc:
            report.warn(xml_path, str(exc).split(": ", 1)[-1] + "; image skipped", skip_image=True)
            continue
        objects = []
        for obj in ann["objects"]:
            if "name" in obj and obj["name"] not in xml_name_to_class:
                if kind == "det":
                    continue  # DET class outside the VID classes
                report.warn(xml_path, f"unknown class {obj['name']!r}; box dropped", drop_boxes=1)
                continue
            if "name" in obj:
                obj = dict(obj, name=xml_name_to_class[obj["name"]])
            objects.append(obj)
        ann = dict(ann, objects=objects, filename=os.path.basename(rel))
        img_dir = os.path.join(data_dir, os.path.dirname(rel))
        rec = _voc_record(os.path.basename(rel), xml_path, ann, mapped_classes, img_dir, root, check_images,
                          allow_empty, True, report, zero_based=True)
        if rec is None:
            continue
        rec.video, rec.frame = video, frame
        if video is None:
            rec.track_ids[:] = -1
        records.append(rec)
    dataset = DetectionDataset(records, classes, name or f"vid_{split}")
    dataset.wnids = wnids
    info = OrderedDict()
    for rec in records:
        if rec.video is not None and rec.video not in info:
            ext = os.path.splitext(rec.image)[1]
            info[rec.video] = {"pattern": os.path.join(data_dir, rec.video, "%06d" + ext),
                               "length": length_cache.get(rec.video) or _video_length(ann_dir, rec.video,
                                                                                     length_cache)}
    dataset.video_info = info
    report.count("images", len(records))
    report.count("videos", len(info))
    report.log_summary()
    dataset.report = report
    return dataset


def write_vid_frame(root, split, snippet, frame, record, classes, wnids=None, occluded=None):
    """Write one frame's XML into root/Annotations/VID/<split>/<snippet>/<frame>.xml (0-based coords);
    occluded: optional bool per box for the <occluded> flag."""
    ann_dir = os.path.join(root, "Annotations", "VID", split, snippet)
    os.makedirs(ann_dir, exist_ok=True)
    names = list(wnids) if wnids is not None else list(classes)
    text = voc_xml_string(record, names, zero_based=True, folder=f"{split}/{snippet}",
                          filename=f"{frame:06d}",
                          extra_object=lambda r, k: {"occluded": int(occluded[k]) if occluded is not None else 0,
                                                     "generated": 0}, include_path=False)
    with open(os.path.join(ann_dir, f"{frame:06d}.xml"), "w", encoding="utf-8") as f:
        f.write(text)


def vid_frame_path(root, split, snippet, frame, ext=".JPEG"):
    return os.path.join(root, "Data", "VID", split, snippet, f"{frame:06d}{ext}")

