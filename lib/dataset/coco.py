"""COCO JSON (instances) reader and writer. bbox [x, y, w, h] <-> our [x1, y1, x2, y2].
iscrowd boxes are kept with difficult=True (VOC-style evaluation ignores them); the writer maps
difficult back to iscrowd, and keeps track ids / video / frame as extra keys pycocotools ignores."""
import json
import os

from lib.fileio import atomic_open

from .io import (
    DEFAULT_CHECK,
    DatasetError,
    DatasetReport,
    ImageReadError,
    check_image,
    image_size,
    resolve_classes,
    validate_boxes,
)
from .record import DetectionDataset, Record


def _load_json(path):
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: annotation file not found")
    with open(path, "r", encoding="utf-8-sig") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None


def _check_is_instances(data, path):
    """A COCO instances file is a JSON object; say what the file is when it is something else (a
    detections / results list is the usual mix-up)."""
    if isinstance(data, dict):
        return
    if isinstance(data, list) and data and all(isinstance(e, dict) for e in data[:20]) and \
            any("bbox" in e and "score" in e for e in data[:20]):
        raise DatasetError(f"{path}: this is a COCO results (detections) list of {len(data)} entries, not a "
                           f"dataset: give it as the detections (e.g. evaluate --dets), and the ground truth "
                           f"(an instances JSON with 'images', 'annotations' and 'categories') as the dataset")
    raise DatasetError(f"{path}: expected a COCO instances JSON object with 'images', 'annotations' and "
                       f"'categories', got a JSON {type(data).__name__}")


def load_coco(annotations, images_dir=None, classes=None, check_images=DEFAULT_CHECK, strict=False,
              allow_empty=True, name=None, report=None):
    """Load a COCO instances JSON.

    annotations: path of the JSON; images_dir: folder that file_name is relative to (default: the
    JSON's folder, then its ../images and ../<split name>). classes: restrict/order by names (a
    list or classes file); default = categories sorted by id. The dataset gets ``category_ids`` (COCO
    id of each class) and ``coco_image_ids`` (image_id -> COCO image id) and ``report``."""
    report = report or DatasetReport(name or os.path.basename(annotations), strict=strict)
    data = _load_json(annotations)
    _check_is_instances(data, annotations)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{annotations}: missing or invalid {key!r} list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DatasetError(f"{annotations}: 'annotations' is not a list")
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool) \
                or not isinstance(cat.get("name"), str):
            raise DatasetError(f"{annotations}: categories[{k}] needs an integer 'id' and a string 'name', "
                               f"got {cat!r}")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_name = {c["id"]: c["name"] for c in cats}
    wanted = resolve_classes(classes)
    class_names = wanted if wanted is not None else [c["name"] for c in cats]
    class_index = {n: i for i, n in enumerate(class_names)}
    name_to_cat = {c["name"]: c["id"] for c in cats}
    if images_dir is None:
        base = os.path.dirname(os.path.abspath(annotations))
        images_dir = base
        if data["images"]:
            first = str(data["images"][0].get("file_name", "")) if isinstance(data["images"][0], dict) else ""
            for cand in (base, os.path.join(base, "images"), os.path.join(os.path.dirname(base), "images")):
                if os.path.isfile(os.path.join(cand, first)):
                    images_dir = cand
                    break
    images_dir = os.path.abspath(images_dir)
    by_image = {}
    for k, ann in enumerate(anns):
        try:
            by_image.setdefault(ann["image_id"], []).append(ann)
        except (KeyError, TypeError):
            report.warn(annotations, f"annotation #{k} has no image_id; skipped", drop_boxes=1)
    image_ids = {img.get("id") for img in data["images"] if isinstance(img, dict)}
    for iid in set(by_image) - image_ids:
        report.warn(annotations, f"{len(by_image[iid])} annotation(s) refer to unknown image id {iid}; "
                                 f"dropped", drop_boxes=len(by_image[iid]))
    records, coco_ids = [], {}
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
            report.warn(annotations, f"images[{k}] has no file_name or id; skipped", skip_image=True)
            continue
        path = os.path.join(images_dir, img["file_name"])
        where = f"{annotations} (image {img['file_name']})"
        try:
            check_image(path, check_images)
            width, height = int(img.get("width") or 0), int(img.get("height") or 0)
            if width <= 0 or height <= 0:
                width, height = image_size(path)
        except ImageReadError as exc:
            report.warn(where, f"{exc}; image skipped", skip_image=True)
            continue
        boxes, labels, difficult, tracks = [], [], [], []
        for ann in by_image.get(img["id"], []):
            cname = cat_name.get(ann.get("category_id"))
            if cname is None:
                report.warn(where, f"annotation {ann.get('id')} has unknown category_id "
                                   f"{ann.get('category_id')}; box dropped", drop_boxes=1)
                continue
            if cname not in class_index:
                if wanted is None:
                    report.warn(where, f"unknown class {cname!r}; box dropped", drop_boxes=1)
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                report.warn(where, f"annotation {ann.get('id')} has no valid bbox [x, y, w, h]; box dropped",
                            drop_boxes=1)
                continue
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                report.warn(where, f"annotation {ann.get('id')} has a non-numeric bbox {bbox!r}; box dropped",
                            drop_boxes=1)
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(class_index[cname])
            difficult.append(bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)))
            tracks.append(int(ann.get("track_id", ann.get("instance_id", -1))))
        boxes, labels, difficult, tracks = validate_boxes(boxes, labels, width, height, report, where,
                                                          extras=(difficult, tracks))
        if not len(boxes) and not allow_empty:
            report.warn(where, "no valid object (empty annotation); image skipped", skip_image=True)
            continue
        image_id = os.path.splitext(img["file_name"])[0]
        coco_ids[image_id] = img["id"]
        records.append(Record(image=path, width=width, height=height, boxes=boxes, labels=labels,
                              difficult=difficult, track_ids=tracks, video=img.get("video"),
                              frame=img.get("frame_id", -1), image_id=image_id))
    dataset = DetectionDataset(records, class_names, name or os.path.splitext(os.path.basename(annotations))[0])
    dataset.category_ids = [name_to_cat.get(n, k + 1) for k, n in enumerate(class_names)]
    dataset.coco_image_ids = coco_ids
    report.count("images", len(records))
    report.log_summary()
    dataset.report = report
    return dataset


def coco_dict(dataset, images_root=None, category_ids=None):
    """The dataset as a COCO instances dict. file_name is relative to images_root (default: the common
    folder of all images). Image ids are 1..N in dataset order unless the dataset has coco_image_ids."""
    paths = [r.image for r in dataset]
    if images_root is None:
        images_root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else "."
    category_ids = category_ids or getattr(dataset, "category_ids", None) or \
        list(range(1, dataset.num_classes + 1))
    known = getattr(dataset, "coco_image_ids", {}) or {}
    images, anns = [], []
    used = set()
    for k, rec in enumerate(dataset):
        iid = known.get(rec.image_id, k + 1)
        if iid in used:
            raise DatasetError(f"duplicate COCO image id {iid} ({rec.image_id})")
        used.add(iid)
        img = {"id": iid, "file_name": os.path.relpath(rec.image, images_root).replace(os.sep, "/"),
               "width": rec.width, "height": rec.height}
        if rec.video is not None:
            img["video"], img["frame_id"] = rec.video, rec.frame
        images.append(img)
        for j in range(rec.num_boxes):
            x1, y1, x2, y2 = (float(v) for v in rec.boxes[j])
            ann = {"id": len(anns) + 1, "image_id": iid, "category_id": int(category_ids[int(rec.labels[j])]),
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                   "iscrowd": int(rec.difficult[j])}
            if rec.track_ids[j] >= 0:
                ann["track_id"] = int(rec.track_ids[j])
            anns.append(ann)
    cats = [{"id": int(category_ids[k]), "name": n, "supercategory": "none"}
            for k, n in enumerate(dataset.classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def write_coco(dataset, path, images_root=None):
    """Write the dataset as COCO JSON. file_name is relative to images_root, by default the JSON's own
    folder (what load_coco assumes), so the file loads back without an IMAGES_DIR."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = coco_dict(dataset, images_root or os.path.dirname(os.path.abspath(path)))
    with atomic_open(path) as f:
        json.dump(data, f)
    return path
