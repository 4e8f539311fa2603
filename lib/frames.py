"""Frames of a video file, one image, or a folder of numbered images, in order: the one frame reader of
the demos, the tools and the exported-model runner (which needs nothing but OpenCV and numpy, so this
module imports nothing else of the project but lib.errors, which imports nothing).

    for name, frame in read_frames("clip.mp4"):          # name: 000000, 000001, ... (a file: its stem)
        ...
    fps = source_fps("clip.mp4")                         # None for images and folders

Frames are HxWx3 uint8, RGB by default (``color="bgr"`` for OpenCV's order). A folder's images are read
in the order of the numbers in their names (frame2 before frame10); an unreadable image of a folder is
reported on stderr and skipped. What cannot be read at all is a ``FrameSourceError`` naming the source.
"""
import os
import re
import sys

import cv2
import numpy as np

from lib.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FPS = 25.0   # the rate given to a folder of frames or an image (they have none of their own)


class FrameSourceError(UserError, ValueError):
    """The input cannot be read as frames (the message names it and says why)."""


def _numeric_key(path):
    # frame10 after frame9: sort by the numbers in the name
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def frame_files(folder):
    """The image files of ``folder`` in frame-number order."""
    files = sorted((os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)),
                   key=_numeric_key)
    if not files:
        raise FrameSourceError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def source_fps(source):
    """The frame rate of a video file (OpenCV), or None for a folder, an image, or a video whose rate
    is unknown or implausible (0, NaN, above 1000)."""
    if os.path.isdir(source) or source.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(source):
        return None
    capture = cv2.VideoCapture(source)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return fps if np.isfinite(fps) and 0 < fps <= 1000 else None


def _convert(frame, color):
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if color == "rgb" else frame


def read_frames(source, color="rgb"):
    """Yield (name, frame) of ``source`` in order (module docstring)."""
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if os.path.isdir(source):
        for path in frame_files(source):
            frame = cv2.imread(path, cv2.IMREAD_COLOR)
            if frame is None:
                print(f"warning: {path}: unreadable image, skipped", file=sys.stderr)
                continue
            yield os.path.splitext(os.path.basename(path))[0], _convert(frame, color)
        return
    if not os.path.exists(source):
        raise FrameSourceError(f"{source}: no such file or folder")
    if source.lower().endswith(IMAGE_EXTENSIONS):
        frame = cv2.imread(source, cv2.IMREAD_COLOR)
        if frame is None:
            raise FrameSourceError(f"{source}: unreadable image")
        yield os.path.splitext(os.path.basename(source))[0], _convert(frame, color)
        return
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise FrameSourceError(f"{source}: OpenCV cannot open this video")
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield f"{index:06d}", _convert(frame, color)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise FrameSourceError(f"{source}: the video has no readable frames")


def check_source(source):
    """Raise FrameSourceError now (before any long work) when ``source`` cannot give a first frame."""
    for _ in read_frames(source, "bgr"):
        return
