"""Video helpers: frames of a video file, numbered frame folders sorted numerically, snippet detection.

Snippet rule (``detect_snippets``), every part a parameter:
1. frames are sorted by number and cut where the number jumps by more than ``max_gap``;
2. with boxes given and ``break_iou`` set, a run is also cut between two consecutive annotated frames
   whose boxes do not overlap (best IoU < ``break_iou``): the object jumped, a new approach began.
   Box-less frames between them stay with the earlier frames;
3. with ``min_background`` set, any run of at least that many consecutive box-less frames becomes a
   background segment of its own.
"""
import os
import re
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from .io import IMAGE_EXTENSIONS, DatasetError

_TRAILING_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def frame_number(name):
    """The last integer in a file name (``frame0123.jpg`` -> 123, ``000042.JPEG`` -> 42), or None."""
    m = _TRAILING_NUMBER.search(os.path.splitext(os.path.basename(name))[0])
    return int(m.group(1)) if m else None


def list_frames(folder, extensions=IMAGE_EXTENSIONS):
    """Image files of a folder sorted by their frame number (numerically: 2 before 10), then by name.
    Files without a number come last, sorted by name."""
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder}: frame folder not found")
    exts = tuple(e.lower() for e in extensions)
    names = [n for n in os.listdir(folder) if n.lower().endswith(exts)]

    def key(n):
        num = frame_number(n)
        return (num is None, num if num is not None else 0, n)
    return [os.path.join(folder, n) for n in sorted(names, key=key)]


def _open_video(path):
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: video file not found")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise DatasetError(f"{path}: cannot open video (unreadable or unsupported codec)")
    return cap


def video_info(path):
    """{fps, frame_count, width, height} of a video file (OpenCV)."""
    cap = _open_video(path)
    try:
        return {"fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                "frame_count": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
                "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}
    finally:
        cap.release()


def video_frames(path, every=1, start=None, end=None, rgb=True):
    """Yield (frame_index, time_seconds, image) from a video file: every ``every``-th frame whose time is
    in [start, end) seconds (None = open end). Images are RGB uint8 (BGR with rgb=False).
    Frames are decoded sequentially, so indices are exact even when seeking would be approximate."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    check_time_range(start, end)
    cap = _open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    if fps <= 0 and (start is not None or end is not None):
        cap.release()
        raise DatasetError(f"{path}: video has no frame rate; cannot select a time range")
    first = int(round(start * fps)) if start else 0
    last = int(np.ceil(end * fps)) if end is not None else None
    index, kept = 0, 0
    try:
        while True:
            if last is not None and index >= last:
                break
            wanted = index >= first and (index - first) % every == 0
            if not cap.grab():  # grab without retrieve skips the colour conversion of unwanted frames
                break
            if wanted:
                ok, img = cap.retrieve()
                if not ok:
                    raise DatasetError(f"{path}: frame {index} cannot be decoded")
                kept += 1
                yield index, (index / fps if fps > 0 else float("nan")), (
                    cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img)
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise DatasetError(f"{path}: no frame could be decoded")


def check_time_range(start, end):
    """start / end seconds of a frame selection: finite, start >= 0, end > start (None = open)."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and not np.isfinite(value):
            raise DatasetError(f"--{name} {value}: not a finite number of seconds")
    if start is not None and start < 0:
        raise DatasetError(f"--start {start:g}: must be >= 0 seconds")
    if end is not None and end <= (start or 0):
        raise DatasetError(f"--end {end:g}: must be after --start {start or 0:g} (seconds)")


def check_frame_pattern(pattern):
    """A file name pattern with exactly one integer field (``%06d.jpg``) and an image extension
    (what cv2.imwrite writes and list_frames reads back). Raises DatasetError naming the pattern."""
    try:
        first, second = pattern % 1, pattern % 2
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"--pattern {pattern!r}: needs exactly one integer field such as %06d ({exc})") from None
    if first == second:
        raise DatasetError(f"--pattern {pattern!r}: needs exactly one integer field such as %06d")
    if not first.lower().endswith(tuple(e.lower() for e in IMAGE_EXTENSIONS)):
        raise DatasetError(f"--pattern {pattern!r}: the name must end in an image extension "
                           f"({', '.join(sorted({e.lower() for e in IMAGE_EXTENSIONS}))})")


def extract_frames(video, out_dir, every=1, start=None, end=None, pattern="%06d.jpg", quality=95,
                   number_by="source", progress=False):
    """Write frames of ``video`` as JPEGs into ``out_dir``; returns the written paths.
    number_by='source' names files by the frame index in the video, 'output' by 0..K-1.
    Bad arguments (pattern, quality outside 0..100, an empty or reversed time range, a range past the
    end of the video) raise DatasetError naming the option; nothing is written then."""
    check_frame_pattern(pattern)
    if not 0 <= int(quality) <= 100:
        raise DatasetError(f"--quality {quality}: JPEG quality must be in 0..100")
    if number_by not in ("source", "output"):
        raise ValueError(f"number_by must be source|output, got {number_by!r}")
    check_time_range(start, end)
    if start:
        info = video_info(video)
        if info["fps"] > 0 and info["frame_count"] > 0 and start * info["fps"] >= info["frame_count"]:
            raise DatasetError(f"--start {start:g}: the video is only {info['frame_count'] / info['fps']:.2f} s long "
                               f"({info['frame_count']} frames at {info['fps']:.2f} fps)")
    os.makedirs(out_dir, exist_ok=True)
    frames = video_frames(video, every=every, start=start, end=end, rgb=False)
    if progress:
        frames = tqdm(frames, desc=f"extract {os.path.basename(video)}", unit="frame")
    paths = []
    for k, (index, _, img) in enumerate(frames):
        path = os.path.join(out_dir, pattern % (index if number_by == "source" else k))
        if not cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
            raise DatasetError(f"{path}: cannot write frame")
        paths.append(path)
    if not paths:  # frame counts in headers can be wrong: the decoded frames decide
        raise DatasetError(f"{video}: no frame in the selected range (--start {start or 0:g}"
                           f"{'' if end is None else f', --end {end:g}'} seconds); nothing written")
    return paths


@dataclass
class Snippet:
    """One run of frames: ``indices`` point into the list given to detect_snippets, in frame order."""
    name: str
    indices: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    background: bool = False

    @property
    def first(self):
        return self.frames[0]

    @property
    def last(self):
        return self.frames[-1]


def _best_iou(a, b):
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return 0.0
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return float(np.max(inter / np.maximum(union, 1e-12)))


def detect_snippets(frame_numbers, boxes=None, max_gap=1, break_iou=None, min_background=None,
                    prefix="snippet", background_prefix="background"):
    """Group frames into snippets (see the module docstring for the rule).

    frame_numbers: sequence of int (any order); boxes: optional sequence of (N,4) arrays aligned with it.
    Returns a list of ``Snippet`` in frame order; foreground snippets are named ``{prefix}_001``...,
    background segments ``{background_prefix}_001``...
    """
    numbers = [int(n) for n in frame_numbers]
    if len(set(numbers)) != len(numbers):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})
        raise DatasetError(f"duplicate frame numbers {dup[:10]}")
    if max_gap < 1:
        raise ValueError(f"max_gap must be >= 1, got {max_gap}")
    order = sorted(range(len(numbers)), key=lambda i: numbers[i])
    has_box = [boxes is not None and len(np.asarray(boxes[i]).reshape(-1, 4)) > 0
               for i in range(len(numbers))]
    runs, current = [], []
    for i in order:
        if current and numbers[i] - numbers[current[-1]] > max_gap:
            runs.append(current)
            current = []
        current.append(i)
    if current:
        runs.append(current)

    segments = []
    for run in runs:
        pieces = [run]
        if boxes is not None and break_iou is not None:
            pieces, start, last_annotated = [], 0, None
            for pos, i in enumerate(run):
                if not has_box[i]:
                    continue
                if last_annotated is not None and _best_iou(boxes[run[last_annotated]], boxes[i]) < break_iou:
                    cut = pos  # box-less frames between the two stay with the earlier frames
                    pieces.append(run[start:cut])
                    start = cut
                last_annotated = pos
            pieces.append(run[start:])
        for piece in pieces:
            if boxes is not None and min_background:
                segments.extend(_split_background(piece, has_box, min_background))
            else:
                segments.append((piece, boxes is not None and not any(has_box[i] for i in piece)))

    out, n_fg, n_bg = [], 0, 0
    for piece, is_bg in segments:
        if not piece:
            continue
        if is_bg:
            n_bg += 1
            name = f"{background_prefix}_{n_bg:03d}"
        else:
            n_fg += 1
            name = f"{prefix}_{n_fg:03d}"
        out.append(Snippet(name, list(piece), [numbers[i] for i in piece], is_bg))
    return out


def _split_background(piece, has_box, min_background):
    """Split off runs of >= min_background consecutive box-less frames as background segments."""
    out, fg, k = [], [], 0
    while k < len(piece):
        if has_box[piece[k]]:
            fg.append(piece[k])
            k += 1
            continue
        j = k
        while j < len(piece) and not has_box[piece[j]]:
            j += 1
        if j - k >= min_background:
            if fg:
                out.append((fg, False))
                fg = []
            out.append((piece[k:j], True))
        else:
            fg.extend(piece[k:j])
        k = j
    if fg:
        out.append((fg, not any(has_box[i] for i in fg)))
    return out


def assign_snippets(records, max_gap=1, break_iou=None, min_background=None, prefix="snippet"):
    """Set ``video`` and ``frame`` (position inside the snippet) on Records whose image names end in a
    frame number, using detect_snippets on their boxes. Returns the Snippets. Records without a
    number in their name are left as still images."""
    numbered = [(k, frame_number(r.image)) for k, r in enumerate(records)]
    numbered = [(k, n) for k, n in numbered if n is not None]
    snippets = detect_snippets([n for _, n in numbered], [records[k].boxes for k, _ in numbered],
                               max_gap=max_gap, break_iou=break_iou, min_background=min_background,
                               prefix=prefix)
    for snip in snippets:
        for pos, idx in enumerate(snip.indices):
            rec = records[numbered[idx][0]]
            rec.video, rec.frame = snip.name, pos
    return snippets
