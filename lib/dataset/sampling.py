"""Sampling for video training.

FGFA: a key frame plus ``num`` neighbours at DISTINCT random offsets drawn from [-max_offset, max_offset]
(as the reference draws them), each clamped to the video; a still image gets copies of itself.

LSTM-SSD: fixed-length clips of ``clip_length`` frames (``frame_stride`` apart). ``mode='random'``
draws clip starts at random; ``mode='sequential'`` cuts each video into consecutive clips in order, for
truncated back-propagation through time (``Clip.continues`` tells the model to keep its LSTM state).
Still images become pseudo-videos by crop-and-shift: a crop window that moves (and slightly zooms)
linearly across the clip. Augmentation with the same random parameters on every frame of a clip is
lib.transforms' job: ``load_clip`` returns the frames as a list for it.
"""
import dataclasses
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .io import read_image


def sample_neighbors(frame, length, num=2, max_offset=9, rng=None, min_offset=None):
    """Frame indices of ``num`` neighbours of ``frame`` in a video of ``length`` frames: distinct offsets
    drawn without replacement from [min_offset, max_offset] (min_offset defaults to -max_offset),
    then clamped to [0, length - 1]. Still images (frame < 0 or length <= 1) give ``[frame] * num``."""
    if frame < 0 or length <= 1:
        return [frame] * num
    lo = -max_offset if min_offset is None else min_offset
    choices = max_offset - lo + 1
    if num > choices:
        raise ValueError(f"cannot draw {num} distinct offsets from [{lo}, {max_offset}]")
    rng = rng if rng is not None else np.random.default_rng()
    offsets = rng.choice(choices, size=num, replace=False) + lo
    return [int(min(max(frame + o, 0), length - 1)) for o in offsets]


def video_lookup(dataset):
    """video -> {"length", "pattern" (or None), "records": {frame: Record}} for a dataset."""
    info = {}
    for rec in dataset:
        if rec.video is None:
            continue
        entry = info.setdefault(rec.video, {"length": 0, "pattern": None, "records": {}})
        entry["records"][rec.frame] = rec
        entry["length"] = max(entry["length"], rec.frame + 1)
    for video, meta in (getattr(dataset, "video_info", None) or {}).items():
        entry = info.setdefault(video, {"length": 0, "pattern": None, "records": {}})
        entry["length"] = max(entry["length"], int(meta["length"]))
        entry["pattern"] = meta.get("pattern")
    return info


class NeighborSampler:
    """FGFA training samples: ``sampler[i]`` -> {"key": Record, "neighbors": [image path],
    "neighbor_frames": [int]} with neighbours drawn by sample_neighbors. Deterministic from
    (seed, epoch, index): call ``set_epoch`` each epoch for new draws."""

    def __init__(self, dataset, num_neighbors=2, max_offset=9, seed=0, min_offset=None):
        self.dataset, self.num, self.max_offset, self.min_offset = dataset, num_neighbors, max_offset, min_offset
        self.seed, self.epoch = seed, 0
        self.videos = video_lookup(dataset)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def neighbor_path(self, rec, frame):
        if rec.video is None or frame == rec.frame:
            return rec.image
        meta = self.videos[rec.video]
        if frame in meta["records"]:
            return meta["records"][frame].image
        if meta["pattern"]:
            return meta["pattern"] % frame
        raise KeyError(f"{rec.video}: frame {frame} is neither in the dataset nor reachable by a path pattern")

    def __getitem__(self, idx):
        rec = self.dataset[idx]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        length = self.videos[rec.video]["length"] if rec.video is not None else 1
        frames = sample_neighbors(rec.frame, length, self.num, self.max_offset, rng, self.min_offset)
        return {"key": rec, "neighbors": [self.neighbor_path(rec, f) for f in frames], "neighbor_frames": frames}


@dataclass
class Clip:
    """A training clip: records (one per frame, in order) and, for pseudo-videos, a crop window per frame."""
    records: list
    video: str = None
    start: int = 0
    continues: bool = False
    crops: list = field(default=None)

    def __len__(self):
        return len(self.records)


def crop_and_shift_windows(width, height, length, rng, scale_range=(0.7, 0.9), max_shift=0.15, max_zoom=0.1):
    """Crop windows (x1, y1, x2, y2) for a pseudo-video of ``length`` frames from one still image: the
    window starts at a random place and moves linearly by up to max_shift of the image size, its scale
    changing by up to max_zoom, always inside the image."""
    s0 = rng.uniform(*scale_range)
    s1 = float(np.clip(s0 * (1 + rng.uniform(-max_zoom, max_zoom)), 0.1, 1.0))
    c0 = rng.uniform(0, 1, 2)
    c1 = np.clip(c0 + rng.uniform(-max_shift, max_shift, 2), 0, 1)

    def window(scale, c):
        w, h = width * scale, height * scale
        x1, y1 = c[0] * (width - w), c[1] * (height - h)
        return np.array([x1, y1, x1 + w, y1 + h])
    first, last = window(s0, c0), window(s1, c1)
    # corners move linearly from the first to the last window (both inside the image, so all are)
    windows = [tuple(float(v) for v in first + (last - first) * (t / max(1, length - 1))) for t in range(length)]
    return windows


class ClipSampler:
    """Fixed-length clips for LSTM-SSD (see the module docstring).

    still_images: 'pseudo' (crop-and-shift pseudo-videos), 'repeat' (the image T times) or 'skip'.
    ``epoch(e)`` returns that epoch's list of Clips, deterministic from (seed, e)."""

    def __init__(self, dataset, clip_length=4, frame_stride=1, mode="random", still_images="pseudo", seed=0,
                 clips_per_video=None, pseudo_kwargs=None):
        if mode not in ("random", "sequential"):
            raise ValueError(f"mode must be random|sequential, got {mode!r}")
        if still_images not in ("pseudo", "repeat", "skip"):
            raise ValueError(f"still_images must be pseudo|repeat|skip, got {still_images!r}")
        if clip_length < 1 or frame_stride < 1:
            raise ValueError("clip_length and frame_stride must be >= 1")
        self.dataset, self.T, self.stride, self.mode = dataset, clip_length, frame_stride, mode
        self.still_images, self.seed, self.clips_per_video = still_images, seed, clips_per_video
        self.pseudo_kwargs = pseudo_kwargs or {}
        self.videos = dataset.snippets()
        self.stills = [r for r in dataset if r.video is None]

    def _positions(self, n, start):
        return [min(start + k * self.stride, n - 1) for k in range(self.T)]  # short videos repeat the end

    def epoch(self, epoch=0):
        rng = np.random.default_rng([self.seed, int(epoch)])
        span = (self.T - 1) * self.stride + 1
        clips = []
        names = list(self.videos)
        rng.shuffle(names)
        for name in names:
            recs = self.videos[name]
            n = len(recs)
            if self.mode == "random":
                count = self.clips_per_video or max(1, n // span)
                for _ in range(count):
                    start = int(rng.integers(0, max(1, n - span + 1)))
                    clips.append(Clip([recs[p] for p in self._positions(n, start)], name, start))
            else:
                step = self.T * self.stride  # the next clip continues the same frame stride
                offset = int(rng.integers(0, min(step, max(1, n - span + 1))))
                starts = list(range(offset, max(offset + 1, n - span + 1), step))
                for k, start in enumerate(starts):
                    clips.append(Clip([recs[p] for p in self._positions(n, start)], name, start, continues=k > 0))
        if self.still_images != "skip":
            for rec in self.stills:
                if self.still_images == "repeat":
                    clips.append(Clip([rec] * self.T))
                else:
                    crops = crop_and_shift_windows(rec.width, rec.height, self.T, rng, **self.pseudo_kwargs)
                    clips.append(Clip([rec] * self.T, crops=crops))
        if self.mode == "random":
            order = rng.permutation(len(clips))
            clips = [clips[i] for i in order]
        return clips

    def streams(self, batch_size, epoch=0):
        """Sequential mode for truncated BPTT: yields lists of ``batch_size`` Clips per step; lane b keeps
        taking the next clip of its current video (continues=True) and starts a new video (continues=False,
        reset the state) when it runs out. Lanes with nothing left hold None.

        A video longer than an even share of the epoch (ceil(clips / batch_size)) is cut into pieces of
        that share, each starting from a fresh state, so that one long video does not keep a single
        lane busy while the others idle."""
        clips = self.epoch(epoch)
        groups, current = [], []
        for c in clips:
            if not c.continues and current:
                groups.append(current)
                current = []
            current.append(c)
        if current:
            groups.append(current)
        share = max(1, math.ceil(len(clips) / batch_size))
        pieces = []
        for g in groups:
            for i in range(0, len(g), share):
                piece = g[i:i + share]
                pieces.append([dataclasses.replace(piece[0], continues=False)] + piece[1:] if i else piece)
        lanes = [[] for _ in range(batch_size)]
        for piece in sorted(pieces, key=len, reverse=True):   # longest first onto the least loaded lane
            min(lanes, key=len).extend(piece)
        for step in range(max(len(lane) for lane in lanes) if pieces else 0):
            yield [lane[step] if step < len(lane) else None for lane in lanes]


def crop_boxes(boxes, window, min_size=2.0):
    """Boxes (N,4) seen through a crop window: shifted, clipped to it; returns (boxes, kept indices)."""
    x1, y1, x2, y2 = window
    b = np.asarray(boxes, np.float32).reshape(-1, 4) - np.array([x1, y1, x1, y1], np.float32)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, x2 - x1)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, y2 - y1)
    keep = np.where((b[:, 2] - b[:, 0] >= min_size) & (b[:, 3] - b[:, 1] >= min_size))[0]
    return b[keep], keep


def load_clip(clip, image_reader=read_image):
    """Read a clip: returns (frames [HxWx3 uint8 RGB], boxes [(N,4)], labels [(N,)], track_ids [(N,)]).
    Pseudo-video frames are crops resized back to the window's first-frame size (all frames equal size)."""
    frames, boxes, labels, tracks = [], [], [], []
    cache = {}
    out_size = None
    for k, rec in enumerate(clip.records):
        if rec.image not in cache:
            cache[rec.image] = image_reader(rec.image)
        img = cache[rec.image]
        if clip.crops is None:
            frames.append(img)
            boxes.append(rec.boxes.copy())
            labels.append(rec.labels.copy())
            tracks.append(rec.track_ids.copy())
            continue
        x1, y1, x2, y2 = clip.crops[k]
        if out_size is None:
            out_size = (max(1, int(round(x2 - x1))), max(1, int(round(y2 - y1))))
        sx, sy = out_size[0] / (x2 - x1), out_size[1] / (y2 - y1)
        m = np.array([[sx, 0, -x1 * sx], [0, sy, -y1 * sy]], np.float32)
        frames.append(cv2.warpAffine(img, m, out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
        b, keep = crop_boxes(rec.boxes, clip.crops[k])
        b = b * np.array([sx, sy, sx, sy], np.float32)
        boxes.append(b)
        labels.append(rec.labels[keep])
        # one object per box across the pseudo-video: the box index is its track id
        tracks.append(keep.astype(np.int64) if np.all(rec.track_ids < 0) else rec.track_ids[keep])
    return frames, boxes, labels, tracks
