"""Detections on disk as COCO results JSON, mapped onto a dataset's records.

Format (docs/DESIGN.md): a JSON list of ``{"image_id" or "file_name", "category_id" or "category",
"bbox": [x, y, w, h], "score"}``.

Images are found by ``image_id`` (the record's ``image_id`` string, or its last path part / the image's
file stem when unique, e.g. '000005' for 'JPEGImages/000005'; an integer is also looked up in the
dataset's ``coco_image_ids`` when it came from a COCO file, and against purely numeric image ids such
as COCO's zero-padded file stems) or by ``file_name`` (absolute path, path suffix, or base name when that
is unique). Categories are found by name (``category``, also ``category_name``) first, since names are
unambiguous, else by ``category_id`` through ``category_ids`` (default: the dataset's ``category_ids``
when it has them, else class index + 1 as written by ``write_detections``). Every error names the
entry index and what was wrong.
"""
import json
import os
from collections import defaultdict

import numpy as np

from lib.fileio import atomic_open


class DetectionsFormatError(ValueError):
    """A detections file entry is malformed or refers to an unknown image or category."""


def _norm_path(p):
    return os.path.normpath(str(p)).replace("\\", "/")


class _ImageIndex:
    def __init__(self, records, coco_image_ids=None):
        self.records = records
        self.by_id = defaultdict(list)
        self.by_number = defaultdict(list)
        self.by_path = {}
        self.by_base = defaultdict(list)
        self.by_stem = defaultdict(set)
        for i, rec in enumerate(records):
            rid = str(rec.image_id)
            self.by_id[rid].append(i)
            stem = rid.replace("\\", "/").rsplit("/", 1)[-1]
            if stem.isdigit():
                self.by_number[int(stem)].append(i)
            # ids relative to the dataset root (e.g. 'JPEGImages/000005') are also found by their last part
            self.by_stem[stem].add(i)
            self.by_stem[os.path.splitext(os.path.basename(rec.image))[0]].add(i)
            self.by_path[_norm_path(rec.image)] = i
            self.by_base[os.path.basename(rec.image)].append(i)
        self.coco_ids = {}
        for image_id, coco_id in (coco_image_ids or {}).items():
            for i in self.by_id.get(str(image_id), []):
                self.coco_ids.setdefault(int(coco_id), []).append(i)

    def find(self, entry, where):
        if "image_id" in entry:
            value = entry["image_id"]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DetectionsFormatError(f"{where}: image_id must be a string or an integer, got {value!r}")
            hits = self.by_id.get(str(value), [])
            if not hits:
                hits = list(self.by_stem.get(str(value), []))
            if not hits and isinstance(value, int):
                hits = self.coco_ids.get(value, []) or self.by_number.get(value, [])
            return self._one(hits, f"image_id {value!r}", where)
        if "file_name" in entry:
            name = _norm_path(entry["file_name"])
            if name in self.by_path:
                return self.by_path[name]
            hits = [i for p, i in self.by_path.items() if p.endswith("/" + name)]
            if not hits:
                hits = self.by_base.get(os.path.basename(name), [])
            return self._one(hits, f"file_name {entry['file_name']!r}", where)
        raise DetectionsFormatError(f"{where}: needs an 'image_id' or a 'file_name' key, has {sorted(entry)}")

    def _one(self, hits, what, where):
        hits = sorted(set(hits))
        if not hits:
            examples = ", ".join(repr(r.image_id) for r in self.records[:3])
            raise DetectionsFormatError(f"{where}: {what} is not in the dataset ({len(self.records)} images, "
                                        f"image ids like {examples})")
        if len(hits) > 1:
            names = ", ".join(self.records[i].image for i in hits[:3])
            raise DetectionsFormatError(f"{where}: {what} is ambiguous, it matches {names}")
        return hits[0]


def _category_map(classes, category_ids):
    ids = list(category_ids) if category_ids is not None else list(range(1, len(classes) + 1))
    if len(ids) != len(classes):
        raise ValueError(f"category_ids has {len(ids)} entries for {len(classes)} classes")
    return {int(cid): c for c, cid in enumerate(ids)}, ids


def detections_from_json(entries, records, classes, category_ids=None, coco_image_ids=None, source="detections",
                         unknown_images=None):
    """Map a list of COCO-results entries onto records -> one (boxes, scores, labels) per record.

    An entry whose image is not among the records is an error, unless ``unknown_images`` is a list:
    then the entry's message is appended to it and the entry left out (for ground truth that had to
    skip images: their detections cannot be scored, and the caller says how many were left out)."""
    if not isinstance(entries, list):
        raise DetectionsFormatError(f"{source}: expected a JSON list of detections, got {type(entries).__name__}")
    records = list(records)
    classes = list(classes)
    index = _ImageIndex(records, coco_image_ids)
    by_category_id, ids = _category_map(classes, category_ids)
    by_name = {name: c for c, name in enumerate(classes)}
    per_image = defaultdict(list)
    for n, entry in enumerate(entries):
        where = f"{source}: entry {n}"
        if not isinstance(entry, dict):
            raise DetectionsFormatError(f"{where}: expected an object, got {entry!r}")
        try:
            img = index.find(entry, where)
        except DetectionsFormatError as err:
            if unknown_images is None or "is not in the dataset" not in str(err):
                raise
            unknown_images.append(str(err))
            continue
        name = entry.get("category", entry.get("category_name"))
        if name is not None:
            if name not in by_name:
                raise DetectionsFormatError(f"{where}: category {name!r} is not one of the dataset's classes "
                                            f"{classes[:10]}")
            label = by_name[name]
        elif "category_id" in entry:
            cid = entry["category_id"]
            if isinstance(cid, bool) or not isinstance(cid, (int, float)) or int(cid) != cid \
                    or int(cid) not in by_category_id:
                raise DetectionsFormatError(f"{where}: category_id {cid!r} is unknown; this dataset's category ids "
                                            f"are {ids[:10]}{'...' if len(ids) > 10 else ''} for {classes[:10]}")
            label = by_category_id[int(cid)]
        else:
            raise DetectionsFormatError(f"{where}: needs a 'category' name or a 'category_id'")
        bbox = entry.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in bbox):
            raise DetectionsFormatError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DetectionsFormatError(f"{where}: bbox width/height must not be negative, got {bbox!r}")
        score = entry.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not np.isfinite(score):
            raise DetectionsFormatError(f"{where}: score must be a finite number, got {score!r}")
        x, y, w, h = (float(v) for v in bbox)
        per_image[img].append((x, y, x + w, y + h, float(score), label))
    out = []
    for i in range(len(records)):
        rows = per_image.get(i, [])
        arr = np.array(rows, np.float64).reshape(-1, 6)
        out.append((arr[:, :4], arr[:, 4], arr[:, 5].astype(np.int64)))
    return out


def read_detections(path, dataset, category_ids=None, unknown_images=None):
    """Read a COCO results JSON file onto ``dataset`` (a DetectionDataset) -> aligned detections
    (``unknown_images``: see detections_from_json)."""
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            entries = json.load(f)
    except json.JSONDecodeError as err:
        raise DetectionsFormatError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}")
    if category_ids is None:
        category_ids = getattr(dataset, "category_ids", None)
    return detections_from_json(entries, dataset.records, dataset.classes, category_ids,
                                getattr(dataset, "coco_image_ids", None), source=str(path),
                                unknown_images=unknown_images)


def detections_to_json(records, detections, classes, category_ids=None):
    """Aligned detections -> COCO results entries with the record's image_id, class name and category_id."""
    _, ids = _category_map(classes, category_ids)
    entries = []
    for rec, (boxes, scores, labels) in zip(records, detections):
        for box, score, label in zip(np.asarray(boxes, np.float64).reshape(-1, 4), scores, labels):
            entries.append({"image_id": str(rec.image_id), "category_id": int(ids[int(label)]),
                            "category": classes[int(label)],
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                            "score": float(score)})
    return entries


def write_detections(path, dataset, detections, category_ids=None):
    """Write aligned detections of ``dataset`` as a COCO results JSON file (atomically)."""
    records = list(dataset.records)
    if len(detections) != len(records):
        raise ValueError(f"{len(detections)} detections entries for {len(records)} records")
    if category_ids is None:
        category_ids = getattr(dataset, "category_ids", None)
    entries = detections_to_json(records, detections, dataset.classes, category_ids)
    with atomic_open(str(path)) as f:
        json.dump(entries, f)
    return len(entries)
