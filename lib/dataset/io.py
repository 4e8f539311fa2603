"""Image reading, bad-input reporting and box validation shared by every reader.

A reader never crashes on one bad sample: it calls ``DatasetReport.warn`` (which logs a warning
naming the file, the line when there is one, and what is wrong) and skips the sample or the box.
With ``strict=True`` the same call raises ``DatasetError`` instead.
"""
import atexit
import os

import cv2
import numpy as np

from .errors import DatasetError, DatasetReport, ImageReadError
from .labelmap import load_classes_file

__all__ = ["DatasetError", "DatasetReport", "ImageReadError", "read_image", "decode_image_bytes", "image_size",
           "check_image", "find_image", "validate_boxes", "resolve_classes", "read_record_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPEG", ".JPG", ".PNG", ".tif", ".tiff", ".webp")


def read_image(path):
    """Read an image as RGB uint8 HxWx3 (OpenCV decode). Raises ImageReadError naming the file.
    ``<file>.rec#<index>`` reads the image stored in a RecordIO file (see lib.dataset.recordio)."""
    if ".rec#" in path and not os.path.isfile(path):
        return decode_image_bytes(read_record_image(path), path)
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    return decode_image_bytes(data, path)


def decode_image_bytes(data, where="<bytes>"):
    """Decode encoded image bytes (JPEG, PNG, ...) to RGB uint8; errors name ``where``."""
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise ImageReadError(f"{where}: image data is empty")
    # EXIF orientation is ignored: pixels stay as stored, matching the header size and the sizes
    # annotation files record (a rotated decode would silently misplace every box)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageReadError(f"{where}: cannot decode image (corrupt or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path):
    """(width, height) from the image header (Pillow reads only the header; no full decode)."""
    from PIL import Image, UnidentifiedImageError
    if ".rec#" in path and not os.path.isfile(path):
        img = read_image(path)
        return img.shape[1], img.shape[0]
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(f"{path}: cannot read image header ({exc})") from None


def check_image(path, mode="exists"):
    """Check an image file: 'none' (no check), 'exists', 'header' (size readable) or 'decode' (full read)."""
    if mode == "none":
        return
    if mode == "exists":
        if ".rec#" in path:
            return
        if not os.path.isfile(path):
            raise ImageReadError(f"{path}: image file not found")
        if os.path.getsize(path) == 0:
            raise ImageReadError(f"{path}: image file is empty")
    elif mode == "header":
        image_size(path)
    elif mode == "decode":
        read_image(path)
    else:
        raise ValueError(f"check_images must be one of none|exists|header|decode, got {mode!r}")


def find_image(directory, stem_or_name):
    """Path of an image in `directory` given its file name, or its stem with any image extension."""
    path = os.path.join(directory, stem_or_name)
    if os.path.isfile(path):
        return path
    stem = os.path.splitext(stem_or_name)[0] if os.path.splitext(stem_or_name)[1] else stem_or_name
    for ext in IMAGE_EXTENSIONS:
        candidate = os.path.join(directory, stem + ext)
        if os.path.isfile(candidate):
            return candidate
    return path


def validate_boxes(boxes, labels, width, height, report, file, lines=None, extras=()):
    """Drop invalid boxes (x2 <= x1, y2 <= y1, non-finite, entirely outside the image) and clip boxes
    that stick out of the image, warning for each with the file (and line). Returns (boxes, labels,
    *extras) filtered alike. `lines` optionally gives the source line of each box."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = np.ones(len(boxes), bool)
    boxes = boxes.copy()
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        line = lines[i] if lines is not None else None
        desc = f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        if not np.all(np.isfinite(boxes[i])):
            report.warn(file, f"{desc} has a non-finite coordinate; box dropped", line, drop_boxes=1)
            keep[i] = False
        elif x2 <= x1 or y2 <= y1:
            report.warn(file, f"{desc} has x2 <= x1 or y2 <= y1; box dropped", line, drop_boxes=1)
            keep[i] = False
        elif width > 0 and height > 0 and (x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height):
            report.warn(file, f"{desc} lies outside the {width}x{height} image; box dropped", line,
                        drop_boxes=1)
            keep[i] = False
        elif width > 0 and height > 0 and (x1 < 0 or y1 < 0 or x2 > width or y2 > height):
            boxes[i] = [max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)]
            report.warn(file, f"{desc} extends outside the {width}x{height} image; clipped", line,
                        clipped=1)
    out = [boxes[keep], np.asarray(labels)[keep]]
    out += [np.asarray(e)[keep] for e in extras]
    return tuple(out)


def resolve_classes(classes):
    """A class list from a list, a label_map.pbtxt, a classes CSV (name,id) or a text file (one per line)."""
    if classes is None:
        return None
    if isinstance(classes, str):
        return load_classes_file(classes)
    return list(classes)


_READERS = {}


def _close_readers():
    """Close cached readers before interpreter shutdown (MXNet's __del__ fails once modules are gone)."""
    for key in [k for k in _READERS if k[0] == os.getpid()]:
        _READERS.pop(key).close()
    _READERS.clear()


atexit.register(_close_readers)


def read_record_image(path):
    """Bytes of the image stored at '<file>.rec#<index>' (one open reader per process and file)."""
    import mxnet as mx     # only here: reading images needs no MXNet otherwise
    rec_path, idx = path.rsplit("#", 1)
    key = (os.getpid(), rec_path)
    if key not in _READERS:
        idx_path = rec_path[:-4] + ".idx"
        if not os.path.isfile(rec_path) or not os.path.isfile(idx_path):
            raise ImageReadError(f"{path}: record file or its .idx not found")
        _READERS[key] = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
    try:
        _, data = mx.recordio.unpack(_READERS[key].read_idx(int(idx)))
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{path}: cannot read record ({exc})") from None
    return data

