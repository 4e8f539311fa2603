"""The errors and the problem report of dataset readers (the bottom of lib.dataset: imports nothing of it).

A reader never crashes on one bad sample: it calls ``DatasetReport.warn`` (which logs a warning
naming the file, the line when there is one, and what is wrong) and skips the sample or the box.
With ``strict=True`` the same call raises ``DatasetError`` instead.
"""
import logging
from collections import Counter

from lib.errors import UserError

logger = logging.getLogger("lib.dataset")


class DatasetError(UserError, ValueError):
    """Bad dataset input (raised directly, or by a strict DatasetReport)."""


class ImageReadError(DatasetError):
    """An image file is missing, empty or cannot be decoded."""


class DatasetReport:
    """Collects what was wrong while loading a dataset, and what was skipped.

    ``issues`` holds dicts {file, line, message}; ``skipped_images`` and ``dropped_boxes`` count what
    was left out; ``stats`` holds free counters (e.g. images without boxes).
    """

    def __init__(self, name="dataset", strict=False, log=True):
        self.name = name
        self.strict = strict
        self.log = log
        self.issues = []
        self.skipped_images = 0
        self.dropped_boxes = 0
        self.clipped_boxes = 0
        self.stats = Counter()

    def warn(self, file, message, line=None, skip_image=False, drop_boxes=0, clipped=0):
        where = f"{file}:{line}" if line is not None else f"{file}"
        text = f"{where}: {message}"
        if self.strict:
            raise DatasetError(text)
        self.issues.append({"file": str(file), "line": line, "message": message})
        self.skipped_images += int(bool(skip_image))
        self.dropped_boxes += int(drop_boxes)
        self.clipped_boxes += int(clipped)
        if self.log:
            logger.warning("%s", text)

    def count(self, key, n=1):
        self.stats[key] += n

    @property
    def ok(self):
        return not self.issues

    def summary(self):
        parts = [f"{self.name}: {len(self.issues)} problem(s)",
                 f"{self.skipped_images} image(s) skipped",
                 f"{self.dropped_boxes} box(es) dropped",
                 f"{self.clipped_boxes} box(es) clipped"]
        parts += [f"{k}: {v}" for k, v in sorted(self.stats.items())]
        return ", ".join(parts)

    def to_dict(self):
        return {"name": self.name, "issues": list(self.issues), "skipped_images": self.skipped_images,
                "dropped_boxes": self.dropped_boxes, "clipped_boxes": self.clipped_boxes,
                "stats": dict(self.stats)}

    def log_summary(self):
        if self.log:
            (logger.warning if self.issues else logger.info)("%s", self.summary())
