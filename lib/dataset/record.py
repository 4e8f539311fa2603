"""The one in-memory record per image or video frame, and the dataset that holds them.

Every reader produces ``Record`` objects; every model, tool and metric consumes them.
Boxes follow the project convention (docs/DESIGN.md): continuous pixels, x2/y2 exclusive.
"""
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from lib.fileio import atomic_open

from .errors import DatasetReport
from .io import DatasetError


def spread_indices(length, count):
    """At most ``count`` indices of ``range(length)`` evenly spread, first and last included, ascending."""
    if count <= 0 or length <= 0:
        return []
    return [int(i) for i in np.unique(np.linspace(0, length - 1, num=min(count, length)).round().astype(int))]


def _reason(message):
    """A report message without the box / line specifics, to group reasons ('unknown class 'x'; box dropped')."""
    return message.split("; ")[0][:80]


def _as_array(value, dtype, shape_tail=()):
    arr = np.asarray(value if value is not None else [], dtype=dtype)
    if arr.size == 0:
        return np.zeros((0,) + shape_tail, dtype=dtype)
    return arr.reshape((-1,) + shape_tail)


@dataclass
class Record:
    """Annotations of one image or video frame."""
    image: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray = None
    track_ids: np.ndarray = None
    video: str = None
    frame: int = -1
    image_id: str = None

    def __post_init__(self):
        self.boxes = _as_array(self.boxes, np.float32, (4,))
        self.labels = _as_array(self.labels, np.int64)
        n = len(self.boxes)
        if len(self.labels) != n:
            raise ValueError(f"{self.image}: {n} boxes but {len(self.labels)} labels")
        self.difficult = (np.zeros(n, bool) if self.difficult is None
                          else _as_array(self.difficult, bool))
        self.track_ids = (np.full(n, -1, np.int64) if self.track_ids is None
                          else _as_array(self.track_ids, np.int64))
        if len(self.difficult) != n or len(self.track_ids) != n:
            raise ValueError(f"{self.image}: difficult/track_ids length differs from the {n} boxes")
        self.width, self.height, self.frame = int(self.width), int(self.height), int(self.frame)
        if self.image_id is None:
            self.image_id = os.path.splitext(os.path.basename(self.image))[0]

    @property
    def num_boxes(self):
        return len(self.boxes)

    def to_dict(self):
        return {"image": self.image, "width": self.width, "height": self.height,
                "boxes": self.boxes.tolist(), "labels": self.labels.tolist(),
                "difficult": self.difficult.astype(int).tolist(),
                "track_ids": self.track_ids.tolist(), "video": self.video,
                "frame": self.frame, "image_id": self.image_id}

    @classmethod
    def from_dict(cls, d):
        return cls(image=d["image"], width=d["width"], height=d["height"], boxes=d["boxes"],
                   labels=d["labels"], difficult=d.get("difficult"), track_ids=d.get("track_ids"),
                   video=d.get("video"), frame=d.get("frame", -1), image_id=d.get("image_id"))


class DetectionDataset:
    """A list of Records plus the class names (0-based, no background).

    Readers attach more: ``report`` (a DatasetReport of what was skipped and why; an empty one by
    default), and where they apply ``video_info`` (video -> {"pattern", "length"}), ``snippet_list``,
    ``category_ids`` / ``coco_image_ids`` (COCO), ``wnids`` (VID). ``subset`` keeps them."""

    def __init__(self, records, classes, name="dataset", report=None):
        self.records = list(records)
        self.classes = list(classes)
        self.name = name
        self.report = report if report is not None else DatasetReport(name, log=False)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        return self.records[idx]

    def __iter__(self):
        return iter(self.records)

    @property
    def num_classes(self):
        return len(self.classes)

    def snippets(self):
        """video id -> its Records sorted by frame index (still images are left out)."""
        groups = OrderedDict()
        for rec in self.records:
            if rec.video is not None:
                groups.setdefault(rec.video, []).append(rec)
        for recs in groups.values():
            recs.sort(key=lambda r: r.frame)
        return groups

    def spread(self, count):
        """At most ``count`` records evenly spread over the set, first and last included (int8
        calibration frames, frames to draw)."""
        return [self.records[i] for i in spread_indices(len(self.records), count)]

    def subset(self, indices, name=None):
        out = DetectionDataset([self.records[i] for i in indices], self.classes, name or self.name)
        for key, value in self.__dict__.items():  # reader metadata (report, video_info, ...) carries over
            if key not in ("records", "classes", "name"):
                setattr(out, key, value)
        return out

    def require_boxes(self, what="training data", allow_background_only=False):
        """Raise DatasetError unless at least one box survived loading (call before training).

        A set whose every box was dropped (unknown class names, a classes file that did not match,
        invalid coordinates) would otherwise train on background only at loss 0 and exit 0. The
        message names ``what`` (e.g. the config key), the dataset, its image count and what the
        reader dropped. ``allow_background_only=True`` accepts a set of only background frames
        (it must be asked for). Returns the number of boxes."""
        boxes = int(sum(rec.num_boxes for rec in self.records))
        if boxes or allow_background_only:
            return boxes
        if not self.records:
            detail = "it has no images"
        else:
            detail = f"none of its {len(self.records)} images has a box"
        report = getattr(self, "report", None)
        dropped = getattr(report, "dropped_boxes", 0) or 0
        if dropped:
            reasons = list(dict.fromkeys(_reason(issue["message"]) for issue in report.issues
                                         if "dropped" in issue["message"] or "skipped" in issue["message"]))
            detail += f" ({dropped} box(es) dropped while loading: {'; '.join(reasons[:3])})"
        raise DatasetError(f"{what}: dataset {self.name!r}: {detail}; nothing to learn from (a set of background "
                           f"frames only must be asked for: DATASET.ALLOW_BACKGROUND_ONLY true)")

    def class_counts(self):
        counts = np.zeros(len(self.classes), np.int64)
        for rec in self.records:
            np.add.at(counts, rec.labels, 1)
        return dict(zip(self.classes, counts.tolist()))

    def to_json(self, path):
        """Cache as JSON (written atomically)."""
        with atomic_open(path) as f:
            json.dump({"name": self.name, "classes": self.classes,
                       "records": [r.to_dict() for r in self.records]}, f)

    @classmethod
    def from_json(cls, path):
        with open(path, "r", encoding="utf-8-sig") as f:
            data = json.load(f)
        return cls([Record.from_dict(r) for r in data["records"]], data["classes"], data.get("name", "dataset"))
