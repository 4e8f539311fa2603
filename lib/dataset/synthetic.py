"""Deterministic synthetic videos for tests and the default demo, written in ImageNet VID layout.

Each video: a textured, slowly panning background; 1..max_objects textured shapes of several classes
(shape and texture identify the class), moving on straight paths, some fast with motion blur along
their direction of motion, some entering or leaving through the image border; an occluding pole
crossing the frame; objects also occlude each other (later objects in front). A box is the extent of
the object's shape inside the image (occluders do not shrink it, as annotators box hidden parts they
can infer; motion blur spreads a few pixels beyond it); an object less than ``min_visible`` visible (occluded or outside) gets
no box in that frame. Optionally a fraction of the frames are "degraded" (a failed exposure: contrast
cut to ``DEGRADED_CONTRAST`` and sensor noise added) with their boxes kept: a single-frame detector can
hardly see the objects there, a detector with memory can carry them over from the frames before.
Everything is drawn from ``numpy.random.default_rng([seed, video])``, so the same arguments give the same
files (the degraded frames from their own generator, so the other frames do not change).
"""
import json
import os

import cv2
import numpy as np

from .io import DatasetError
from .labelmap import write_label_map
from .record import Record
from .vid import load_vid, vid_frame_path, write_image_set_4, write_vid_frame

SYNTHETIC_CLASSES = ["disc", "square", "triangle", "diamond"]
DEGRADED_CONTRAST = 0.15  # of a degraded frame, around its mean
DEGRADED_NOISE = 24.0  # std of the Gaussian sensor noise added to a degraded frame (8-bit levels)
DEGRADED_LIST = "degraded_frames.txt"  # "<video> <frame>" per degraded frame, in the dataset root
INTACT_LIST = "intact_frames.txt"  # the other frames, same format


def _shape_mask(shape, size):
    mask = np.zeros((size, size), np.uint8)
    s = size - 1
    if shape == "disc":
        cv2.circle(mask, (size // 2, size // 2), size // 2, 255, -1, lineType=cv2.LINE_AA)
    elif shape == "square":
        mask[:] = 255
    elif shape == "triangle":
        cv2.fillPoly(mask, [np.array([[0, s], [s // 2, 0], [s, s]], np.int32)], 255, lineType=cv2.LINE_AA)
    elif shape == "diamond":
        cv2.fillPoly(mask, [np.array([[s // 2, 0], [s, s // 2], [s // 2, s], [0, s // 2]], np.int32)], 255,
                     lineType=cv2.LINE_AA)
    else:
        raise ValueError(f"unknown synthetic shape {shape!r}")
    return mask.astype(np.float32) / 255.0


def _texture(class_idx, size, color, rng):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = max(4.0, size / rng.uniform(3.0, 5.0))
    kind = class_idx % 4
    if kind == 0:    # rings
        r = np.hypot(xx - size / 2, yy - size / 2)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * r / period)
    elif kind == 1:  # checkerboard
        pattern = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    elif kind == 2:  # stripes
        pattern = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * yy / period))
    else:            # dots
        pattern = ((np.hypot((xx % period) - period / 2, (yy % period) - period / 2) < period / 3)
                   ).astype(np.float32)
    tex = np.asarray(color, np.float32)[None, None, :] * (0.45 + 0.55 * pattern[..., None])
    return np.clip(tex, 0, 255)


def _background(rng, width, height, margin):
    h, w = height + 2 * margin, width + 2 * margin
    small = rng.uniform(40, 200, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    bg += rng.normal(0, 6, size=bg.shape).astype(np.float32)
    return np.clip(bg, 0, 255)


def _blur_kernel(vx, vy):
    length = int(round(np.hypot(vx, vy)))
    if length < 3:
        return None
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2.0
    dx, dy = vx / np.hypot(vx, vy), vy / np.hypot(vx, vy)
    cv2.line(k, (int(round(c - dx * c)), int(round(c - dy * c))), (int(round(c + dx * c)),
             int(round(c + dy * c))), 1.0, 1)
    return k / k.sum()


def _make_objects(rng, n, width, height, num_frames, num_classes, fast_fraction, size_range, video_index=0):
    objects = []
    for track in range(n):
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        fast = rng.random() < fast_fraction
        speed = rng.uniform(6.0, 11.0) if fast else rng.uniform(0.5, 2.5)
        entering = rng.random() < 0.35
        if entering:  # start just outside the left or right border, moving inward
            side = rng.integers(0, 2)
            x0 = -size * 0.8 if side == 0 else width - size * 0.2
            angle = rng.uniform(-0.4, 0.4) + (0 if side == 0 else np.pi)
        else:
            x0 = rng.uniform(0, max(1, width - size))
            angle = rng.uniform(0, 2 * np.pi)
        y0 = rng.uniform(0, max(1, height - size))
        rng.integers(0, num_classes)  # (kept so the other draws stay as they were)
        cls = (video_index + track) % num_classes  # round robin: a few videos already show every class
        base = np.array([[230, 60, 60], [60, 200, 60], [70, 90, 235], [235, 200, 50]][cls % 4], np.float32)
        color = np.clip(base + rng.normal(0, 15, 3), 30, 255)
        objects.append({"track": track, "cls": cls, "size": size, "x0": x0, "y0": y0,
                        "vx": speed * np.cos(angle), "vy": speed * np.sin(angle), "fast": fast,
                        "growth": rng.uniform(-0.004, 0.008), "color": color,
                        "texture_seed": int(rng.integers(0, 2 ** 31))})
    return objects


def degraded_frame_indices(seed, video_index, num_frames, fraction):
    """The frames of a video that are degraded (never the first one: memory has nothing to carry there)."""
    if fraction <= 0:
        return []
    rng = np.random.default_rng([int(seed), int(video_index), 7])
    return [t for t in range(1, num_frames) if rng.random() < fraction]


def _degrade(frame, rng):
    mean = frame.mean(axis=(0, 1), keepdims=True)
    return mean + (frame - mean) * DEGRADED_CONTRAST + rng.normal(0.0, DEGRADED_NOISE, frame.shape)


def render_video(seed, video_index=0, num_frames=30, width=320, height=240, num_classes=4, max_objects=3,
                 fast_fraction=0.3, occluder=True, size_range=(24, 72), min_visible=0.15, min_box=4,
                 draw_objects=True, degraded_fraction=0.0):
    """Render one video. Returns (frames: list of HxWx3 uint8 RGB, annotations: list per frame of
    (boxes (N,4) float32, labels (N,), track_ids (N,), visible (N,) fraction of the object seen)).
    draw_objects=False renders the same scene
    without the objects (same annotations), e.g. to check boxes against what was drawn.
    degraded_fraction: share of frames degraded (degraded_frame_indices), boxes unchanged."""
    rng = np.random.default_rng([int(seed), int(video_index)])
    shapes = [SYNTHETIC_CLASSES[k % len(SYNTHETIC_CLASSES)] for k in range(num_classes)]
    n = int(rng.integers(1, max_objects + 1))
    objects = _make_objects(rng, n, width, height, num_frames, num_classes, fast_fraction, size_range,
                            video_index)
    margin = 16
    background = _background(rng, width, height, margin)
    pan = rng.uniform(-0.5, 0.5, size=2)
    pole = None
    if occluder:
        pole = {"x": rng.uniform(-20, width), "v": rng.uniform(-3, 3), "w": int(rng.integers(10, 22)),
                "color": rng.uniform(20, 90, 3)}
    degraded = set(degraded_frame_indices(seed, video_index, num_frames, degraded_fraction))
    noise_rng = np.random.default_rng([int(seed), int(video_index), 8])
    frames, annotations = [], []
    for t in range(num_frames):
        ox = int(np.clip(margin + pan[0] * t, 0, 2 * margin))
        oy = int(np.clip(margin + pan[1] * t, 0, 2 * margin))
        frame = background[oy:oy + height, ox:ox + width].copy()
        masks, boxes = [], []
        for obj in objects:
            size = max(6, int(round(obj["size"] * (1 + obj["growth"] * t))))
            x = obj["x0"] + obj["vx"] * t
            y = obj["y0"] + obj["vy"] * t
            trng = np.random.default_rng(obj["texture_seed"])
            mask = _shape_mask(shapes[obj["cls"]], size)
            tex = _texture(obj["cls"], size, obj["color"], trng)
            kernel = _blur_kernel(obj["vx"], obj["vy"]) if obj["fast"] else None
            pad = kernel.shape[0] if kernel is not None else 0
            layer = np.zeros((size + 2 * pad, size + 2 * pad, 4), np.float32)
            layer[pad:pad + size, pad:pad + size, :3] = tex * mask[..., None]
            layer[pad:pad + size, pad:pad + size, 3] = mask
            if kernel is not None:  # motion blur of colour (premultiplied) and coverage alike
                layer = cv2.filter2D(layer, -1, kernel, borderType=cv2.BORDER_CONSTANT)
            xi, yi = int(np.floor(x)) - pad, int(np.floor(y)) - pad
            sx0, sy0 = max(0, -xi), max(0, -yi)
            dx0, dy0 = max(0, xi), max(0, yi)
            dx1 = min(width, xi + layer.shape[1])
            dy1 = min(height, yi + layer.shape[0])
            if draw_objects and dx1 > dx0 and dy1 > dy0:  # composite premultiplied colour over the frame
                part = layer[sy0:sy0 + dy1 - dy0, sx0:sx0 + dx1 - dx0]
                roi = frame[dy0:dy1, dx0:dx1]
                frame[dy0:dy1, dx0:dx1] = roi * (1 - part[..., 3:4]) + part[..., :3]
            shape_mask = np.zeros((height, width), bool)
            mx0, my0 = int(np.floor(x)), int(np.floor(y))
            cx0, cy0, cx1, cy1 = max(0, mx0), max(0, my0), min(width, mx0 + size), min(height, my0 + size)
            if cx1 > cx0 and cy1 > cy0:
                shape_mask[cy0:cy1, cx0:cx1] = mask[cy0 - my0:cy1 - my0, cx0 - mx0:cx1 - mx0] > 0.5
            ys, xs = np.nonzero(shape_mask)  # the box: the part of the shape inside the image
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
            for prev in masks:  # this object hides the ones drawn before it
                prev &= ~shape_mask
            masks.append(shape_mask)
            boxes.append((obj, float((mask > 0.5).sum()), box))
        if pole is not None:
            px = int(round(pole["x"] + pole["v"] * t))
            x0, x1 = max(0, px), min(width, px + pole["w"])
            if x1 > x0:
                frame[:, x0:x1] = pole["color"]
                for m in masks:
                    m[:, x0:x1] = False
        out_boxes, out_labels, out_tracks, out_visible = [], [], [], []
        for (obj, full_area, box), visible in zip(boxes, masks):
            if box[2] - box[0] < min_box or box[3] - box[1] < min_box or full_area <= 0:
                continue
            fraction = float(visible.sum() / full_area)
            if fraction < min_visible:
                continue
            out_boxes.append([int(v) for v in box])  # integer corners: exact in every format
            out_labels.append(obj["cls"])
            out_tracks.append(obj["track"])
            out_visible.append(fraction)
        if t in degraded:
            frame = _degrade(frame, noise_rng)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        annotations.append((np.asarray(out_boxes, np.float32).reshape(-1, 4), np.asarray(out_labels, np.int64),
                            np.asarray(out_tracks, np.int64), np.asarray(out_visible, np.float32)))
    return frames, annotations


def generate_video_dataset(out_dir, seed=0, num_videos=4, num_frames=30, width=320, height=240, num_classes=4,
                           max_objects=3, fast_fraction=0.3, occluder=True, split="train", key_frames=15,
                           jpeg_quality=90, load=True, degraded_fraction=0.0):
    """Write ``num_videos`` synthetic videos in ImageNet VID layout under out_dir:
    Data/VID/<split>/synth_<seed>_<k>/%06d.JPEG, Annotations/VID/... (XML with trackid),
    ImageSets/VID_<split>_videos.txt (every frame, 4 fields) and VID_<split>_<key_frames>frames.txt
    (key frames spread evenly, FGFA's training list format), classes.txt, label_map.pbtxt,
    synthetic.json (the arguments) and, with degraded_fraction > 0, degraded_frames.txt and
    intact_frames.txt (lstm_ssd's TEST.SUBSETS format). Returns the loaded DetectionDataset (or out_dir with load=False)."""
    if not 1 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SYNTHETIC_CLASSES)}, got {num_classes}")
    classes = SYNTHETIC_CLASSES[:num_classes]
    all_frames, key_entries, degraded_entries, intact_entries = [], [], [], []
    frame_id = 0
    for v in range(num_videos):
        snippet = f"synth_{seed:04d}_{v:04d}"
        frames, annotations = render_video(seed, v, num_frames, width, height, num_classes, max_objects,
                                           fast_fraction, occluder, degraded_fraction=degraded_fraction)
        degraded = degraded_frame_indices(seed, v, num_frames, degraded_fraction)
        degraded_entries += [f"{split}/{snippet} {t}\n" for t in degraded]
        intact_entries += [f"{split}/{snippet} {t}\n" for t in range(num_frames) if t not in degraded]
        for t, (img, (boxes, labels, tracks, visible)) in enumerate(zip(frames, annotations)):
            path = vid_frame_path(out_dir, split, snippet, t)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            rec = Record(image=path, width=width, height=height, boxes=boxes, labels=labels, track_ids=tracks)
            write_vid_frame(out_dir, split, snippet, t, rec, classes, occluded=visible < 0.9)
            frame_id += 1
            all_frames.append((f"{split}/{snippet}", frame_id, t, num_frames))
        picks = sorted({int(num_frames * (k + 0.5) / key_frames) for k in range(min(key_frames, num_frames))})
        key_entries += [(f"{split}/{snippet}", 0, p, num_frames) for p in picks]
    key_entries = [(v, k + 1, p, n) for k, (v, _, p, n) in enumerate(key_entries)]
    write_image_set_4(os.path.join(out_dir, "ImageSets", f"VID_{split}_videos.txt"), all_frames)
    write_image_set_4(os.path.join(out_dir, "ImageSets", f"VID_{split}_{key_frames}frames.txt"), key_entries)
    with open(os.path.join(out_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(c + "\n" for c in classes))
    write_label_map(os.path.join(out_dir, "label_map.pbtxt"), classes)
    if degraded_fraction > 0:
        for name, entries in ((DEGRADED_LIST, degraded_entries), (INTACT_LIST, intact_entries)):
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                f.write("".join(entries))
    with open(os.path.join(out_dir, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "num_videos": num_videos, "num_frames": num_frames, "width": width,
                   "height": height, "num_classes": num_classes, "max_objects": max_objects,
                   "fast_fraction": fast_fraction, "occluder": occluder, "split": split,
                   "degraded_fraction": degraded_fraction}, f, indent=1)
    if not load:
        return out_dir
    return load_synthetic(out_dir, split)


STAMP = "synthetic.json"  # the generation arguments, written last: a folder with it is complete


def ensure_synthetic(root, params, checked=None):
    """Generate the synthetic set ``params`` (generate_video_dataset keyword arguments) into ``root``
    unless it is there already with the same arguments (``checked``: the keys to compare, default
    all; a spec that only points at an existing folder leaves the others to it).

    Safe with several processes (test workers, parallel runs): generation holds a lock file next to
    the folder and writes into a temporary folder that is renamed into place when complete, so a
    reader never sees half a dataset. A folder generated with other arguments is an error naming
    the first differing key (regenerating it under another process would pull files from under it)."""
    import shutil
    try:
        import fcntl
    except ImportError:  # not on Windows (the project runs there inside WSL): no lock, still atomic
        fcntl = None
    root = os.path.abspath(root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    with open(root + ".lock", "a+") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        stamp_path = os.path.join(root, STAMP)
        if os.path.isfile(stamp_path):
            _check_stamp(root, stamp_path, {k: v for k, v in params.items() if checked is None or k in checked})
            return root
        if os.path.isdir(root) and os.listdir(root):
            raise DatasetError(f"{root}: exists but holds no {STAMP} (an incomplete or foreign folder): delete it "
                               f"or give the synthetic dataset another ROOT")
        tmp = f"{root}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            generate_video_dataset(tmp, load=False, **params)
            if os.path.isdir(root):
                os.rmdir(root)  # empty (checked above)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_stamp(root, stamp_path, params):
    try:
        with open(stamp_path, "r", encoding="utf-8-sig") as f:
            stamp = json.load(f)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{stamp_path}: unreadable ({exc}); delete {root} to regenerate it") from None
    for key, wanted in params.items():
        have = stamp.get(key, _GENERATION_DEFAULTS.get(key))
        if have != wanted and not (isinstance(wanted, float) and isinstance(have, (int, float))
                                   and abs(have - wanted) < 1e-12):
            raise DatasetError(f"{root}: generated with {key.upper()} {have!r}, this spec asks for {wanted!r}; "
                               f"delete the folder to regenerate it, or give this spec another ROOT")


# generate_video_dataset's defaults for stamps written before a key existed
_GENERATION_DEFAULTS = {"degraded_fraction": 0.0, "occluder": True}


def load_synthetic(out_dir, split="train", image_set=None, **kwargs):
    """Load a generated synthetic dataset (every frame, or an image set of it)."""
    with open(os.path.join(out_dir, "classes.txt"), "r", encoding="utf-8-sig") as f:
        classes = [ln.strip() for ln in f if ln.strip()]
    return load_vid(out_dir, image_set=image_set, split=split, classes=classes, kind="vid",
                    name=f"synthetic_{split}", **kwargs)
