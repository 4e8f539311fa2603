"""Image reading, bad-input reporting and box validation shared by every reader.

A reader never crashes on one bad sample: it calls ``DatasetReport.warn`` (which logs a warning
naming the file, the line when there is one, and what is wrong) and skips the sample or the box.
With ``strict=True`` the same call raises ``DatasetError`` instead.
"""
import atexit
import json
import os

import cv2
import mxnet as mx
import numpy as np
from tqdm import tqdm

from lib.fileio import atomic_open

from .errors import DatasetError, DatasetReport, ImageReadError, logger
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


_REPORTED_UNREADABLE = set()


def read_image_or_fallback(path, fallback, report=None):
    """read_image(path), or read_image(fallback) when ``path`` cannot be read: for frames a training
    loop reaches outside the dataset's records (FGFA's neighbours through a video's file pattern),
    which no load-time check has seen. The first failure of each file is reported (a warning naming
    it, and ``report.warn`` when a DatasetReport is given); the epoch goes on with the fallback (e.g.
    the key frame, as a still image's neighbours are). A failing fallback raises ImageReadError."""
    try:
        return read_image(path)
    except ImageReadError as exc:
        if path not in _REPORTED_UNREADABLE:
            _REPORTED_UNREADABLE.add(path)
            message = f"{str(exc).split(': ', 1)[-1]}; {fallback} used instead"
            if report is not None:
                report.warn(path, message)
            else:
                logger.warning("%s: %s", path, message)
        return read_image(fallback)


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


CHECK_MODES = ("none", "exists", "intact", "header", "decode")
DEFAULT_CHECK = "intact"
_TAIL_BYTES = 4096  # where an image's end marker is looked for (JPEG EOI, PNG IEND), padding allowed


def image_is_complete(path):
    """Cheap truncation check: a JPEG must end with its end-of-image marker, a PNG with its IEND chunk
    (looked for in the last few KB, so padding is allowed). When the marker is missing (a truncated
    file, or data appended after the image as some phones do) the image is fully decoded by Pillow,
    which stops at the end marker and raises on a truncated file. Raises ImageReadError naming the
    file; other formats are left to the header check."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    if head[:3] == b"\xff\xd8\xff":
        marker, kind = b"\xff\xd9", "JPEG"
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        marker, kind = b"IEND", "PNG"
    else:
        return
    if marker in tail:
        return
    from PIL import Image, ImageFile

    # gluoncv.data sets Pillow's process-wide LOAD_TRUNCATED_IMAGES on import, which would make a cut-off
    # file load without an error: this check needs it off
    tolerant, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... on bad data
        raise ImageReadError(f"{path}: truncated or corrupt {kind} ({size} bytes, no end marker; {exc})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


def check_image(path, mode=DEFAULT_CHECK):
    """Check an image file, from cheapest to most thorough:
    'none' (no check), 'exists' (a non-empty file), 'intact' (exists and not truncated:
    image_is_complete, the default), 'header' (intact and its size readable), 'decode' (a full read
    with OpenCV, as training reads it)."""
    if mode not in CHECK_MODES:
        raise DatasetError(f"CHECK_IMAGES must be one of {'|'.join(CHECK_MODES)}, got {mode!r}")
    if mode == "none":
        return
    if ".rec#" in path and not os.path.isfile(path):
        if mode == "decode":
            read_image(path)
        return  # inside a RecordIO file: checked when it was packed
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}: image file is empty")
    if mode == "exists":
        return
    image_is_complete(path)
    if mode == "header":
        image_size(path)
    elif mode == "decode":
        read_image(path)


def verify_images(dataset, mode="decode", cache_path=None, progress=True):
    """Check every record's image (``check_image(path, mode)``) and return the dataset without the
    records whose image failed, each reported in ``dataset.report`` (warning naming the file, counted
    as a skipped image). For a trainer to call once before its first epoch: a bad file is then
    reported and skipped instead of stopping training mid-epoch.

    cache_path: optional JSON file remembering files that passed (keyed by path, size and
    modification time, so an edited file is checked again); written atomically."""
    report = getattr(dataset, "report", None) or DatasetReport(dataset.name)
    cache, key_of = {}, lambda st: [st.st_size, st.st_mtime_ns, mode]
    if cache_path and os.path.isfile(cache_path):
        try:
            with open(cache_path, "r", encoding="utf-8-sig") as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}  # a broken cache is rebuilt, not trusted
        if not isinstance(cache, dict):
            cache = {}
    checked = {}
    keep = []
    items = dataset.records
    if progress:
        items = tqdm(items, desc=f"check images ({mode})", unit="img", leave=False)
    for k, rec in enumerate(items):
        path = rec.image
        if path not in checked:
            try:
                stamp = key_of(os.stat(path)) if os.path.isfile(path) else None
                if stamp is None or cache.get(path) != stamp:
                    check_image(path, mode)
                    if stamp is not None:
                        cache[path] = stamp
                checked[path] = None
            except ImageReadError as exc:
                checked[path] = str(exc)
                cache.pop(path, None)
        if checked[path] is None:
            keep.append(k)
        else:
            report.warn(path, checked[path].split(": ", 1)[-1] + "; image skipped", skip_image=True)
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        with atomic_open(cache_path) as f:
            json.dump(cache, f)
    if len(keep) == len(dataset.records):
        return dataset
    out = dataset.subset(keep)
    out.report = report
    return out


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

