"""Teacher flow for training a flow network on the user's own footage: OpenCV DIS on real frame pairs.

There is no labelled flow for a user's videos. DIS (lib.flow) estimates it well where the image has
texture, and where its forward and backward flows agree; a FlowNet trained to match it there, at
feature resolution, follows the motion of that footage (a dashcam's radial flow), which synthetic
moving patches do not teach.

- ``teacher_pairs``: frame pairs of one snippet whose positions differ by MIN_OFFSET..MAX_OFFSET,
  in both orders (FGFA warps neighbours on both sides of the key frame), a seeded choice.
- ``TeacherFlowCache``: DIS flows on disk as npz (never pickle), one file per pair, keyed by a hash
  of both frames' pixels and every setting (preset, DIS scale, grid factor, consistency tolerance,
  OpenCV version), so a changed frame (or a different resize of it) or setting is a new entry; files
  are written atomically. A flow is stored on the grid of ``factor`` x ``factor`` cells (the feature
  stride, 16 for FGFA: a 1280x720 pair is 45x80 cells, ~14 KB), in grid cells, with the share of each
  cell's pixels that passed the forward-backward check. It is stored as float16 when that changes no
  value by more than 0.01 grid cell (always the case for flows under 32 cells, 512 px at factor 16;
  checked per file), else as float32.
- ``TeacherFlowPairs``: (frame_a, frame_b, flow, mask) per pair and batches of crops on the grid,
  horizontally flipped at random, for the flow pre-training.

Flow convention (FGFA's, lib.flow): the content at (x, y) of frame_a is at (x, y) + flow in frame_b,
so ``flow_warp(features of frame_b, flow)`` aligns frame_b's features with frame_a's.
"""
import hashlib
import json
import os

import numpy as np
from tqdm import tqdm

from lib.fileio import atomic_open
from lib.flow import DISFlow, flow_to_grid, mask_to_grid

from .io import DatasetError, read_image

CACHE_VERSION = 1
FLOAT16_TOLERANCE = 0.01     # grid cells


def teacher_pairs(dataset, min_offset, max_offset, count=None, seed=0):
    """[(first Record, second Record, offset)]: two frames of one snippet (DetectionDataset.snippets:
    records sorted by frame) whose positions differ by ``min_offset``..``max_offset``, in both orders
    (offset = position of second - position of first, negative for a neighbour before the key).
    ``count``: a seeded choice of that many (None: all of them), in a stable order."""
    min_offset, max_offset = int(min_offset), int(max_offset)
    if not 1 <= min_offset <= max_offset:
        raise ValueError(f"need 1 <= min_offset <= max_offset, got {min_offset}, {max_offset}")
    candidates = []
    for recs in dataset.snippets().values():
        for offset in range(min_offset, max_offset + 1):
            for i in range(len(recs) - offset):
                candidates.append((recs[i], recs[i + offset], offset))
                candidates.append((recs[i + offset], recs[i], -offset))
    if not candidates:
        raise DatasetError(f"{dataset.name}: no snippet with frames {min_offset}..{max_offset} apart "
                           f"(video frames need Record.video: give SNIPPETS for numbered frames)")
    if count is None or int(count) >= len(candidates):
        return candidates
    picks = np.random.default_rng(seed).choice(len(candidates), size=int(count), replace=False)
    return [candidates[i] for i in sorted(picks)]


class TeacherFlowCache:
    """DIS teacher flows on the grid of ``factor`` x ``factor`` cells, computed once and kept in
    ``root`` (see the module docstring). ``tolerance``: forward-backward agreement, in pixels of the
    frames, for a pixel to count as consistent."""

    def __init__(self, root, preset="medium", scale=1.0, factor=16, tolerance=1.0):
        self.root = root
        self.dis = DISFlow(preset, scale)
        self.factor, self.tolerance = int(factor), float(tolerance)
        if self.factor < 1:
            raise ValueError(f"grid factor must be a positive integer, got {factor}")
        if not self.tolerance > 0:
            raise ValueError(f"consistency tolerance must be > 0 pixels, got {tolerance}")
        self.hits = self.misses = 0

    def settings(self):
        return {"version": CACHE_VERSION, "factor": self.factor, "tolerance": self.tolerance, **self.dis.settings()}

    def key(self, first, second):
        """Hex digest of the settings and both frames' pixels (and shapes)."""
        digest = hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode())
        for frame in (first, second):
            frame = np.ascontiguousarray(frame)
            digest.update(f"{frame.shape}{frame.dtype}".encode())
            digest.update(memoryview(frame).cast("B"))
        return digest.hexdigest()

    def path(self, key):
        return os.path.join(self.root, key[:2], key + ".npz")

    def compute(self, first, second):
        """(flow (rows, cols, 2) float32 in grid cells, consistent share (rows, cols) float32) by DIS."""
        forward, consistent = self.dis.with_mask(first, second, self.tolerance)
        return flow_to_grid(forward, self.factor), mask_to_grid(consistent, self.factor)

    def load(self, key):
        """The stored (flow, consistent share) of ``key``, or None (missing, unreadable or another key)."""
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:
                    return None
                return data["flow"].astype(np.float32), data["valid"].astype(np.float32)
        except (OSError, ValueError, KeyError):    # truncated or foreign file: computed again
            return None

    def store(self, key, flow, valid):
        """Write one entry atomically (temporary file + os.replace); returns the stored flow dtype."""
        half = flow.astype(np.float16)
        stored = half if float(np.max(np.abs(half.astype(np.float32) - flow), initial=0.0)) <= FLOAT16_TOLERANCE \
            else flow.astype(np.float32)
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, key=np.array(key), flow=stored, valid=valid.astype(np.float16),
                                settings=np.array(json.dumps(self.settings(), sort_keys=True)))
        return stored.dtype

    def get(self, first, second):
        """(flow (rows, cols, 2) float32 in grid cells, consistent share (rows, cols) float32) of the
        pair, from the cache or computed and stored."""
        key = self.key(first, second)
        cached = self.load(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        flow, valid = self.compute(first, second)
        self.store(key, flow, valid)
        # what a later run will read back (float16 rounding included), so the first run trains the same
        return self.load(key) or (flow, valid)


class TeacherFlowPairs:
    """Frame pairs of a video dataset with their DIS teacher flow.

    ``pairs[i]`` = (frame_a uint8 HxWx3, frame_b, flow (rows, cols, 2) float32 in grid cells,
    mask (rows, cols) float32, 1 where more than ``min_valid`` of the cell's pixels passed the
    forward-backward check). ``load_frame(record) -> RGB uint8`` reads a frame (default: the file as
    it is); pass the training resize there, the cache keys on the pixels it returns."""

    def __init__(self, dataset, cache, min_offset=1, max_offset=9, count=None, seed=0, load_frame=None,
                 min_valid=0.5):
        self.cache = cache
        self.pairs = teacher_pairs(dataset, min_offset, max_offset, count, seed)
        self.load_frame = load_frame or (lambda rec: read_image(rec.image))
        self.min_valid = float(min_valid)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        first_rec, second_rec, _ = self.pairs[index]
        first, second = self.load_frame(first_rec), self.load_frame(second_rec)
        flow, valid = self.cache.get(first, second)
        return first, second, flow, (valid > self.min_valid).astype(np.float32)

    def precompute(self, progress=True):
        """Fill the cache for every pair (tqdm progress); returns the number of flows computed."""
        before = self.cache.misses
        for index in tqdm(range(len(self)), desc="DIS teacher flow", unit="pair", disable=not progress,
                          dynamic_ncols=True):
            self[index]
        return self.cache.misses - before

    def batches(self, batch_size, crop=None, flip=False, seed=0):
        """Endless batches (frames_a (B,H,W,3) uint8, frames_b, flows (B,2,h,w) float32 in grid cells,
        masks (B,h,w) float32) of pairs drawn at random (seeded). ``crop`` (height, width), multiples of
        the grid factor: a random crop on the grid (None: the frame's whole cells); ``flip``: mirror half
        of them (flow x negated). Cells whose flow leaves the crop are masked out: the network cannot
        see where that content went."""
        factor = self.cache.factor
        if crop is not None and (len(crop) != 2 or any(int(v) <= 0 or int(v) % factor for v in crop)):
            raise ValueError(f"crop must be (height, width), positive multiples of {factor}, got {crop}")
        rng = np.random.default_rng(seed)
        while True:
            items = [self._crop(self[int(rng.integers(len(self)))], crop, flip, factor, rng) for _ in range(batch_size)]
            shapes = {item[0].shape for item in items}
            if len(shapes) > 1:
                raise ValueError(f"frames of different sizes {sorted(shapes)} in one batch: give crop=(height, width)")
            yield (np.stack([i[0] for i in items]), np.stack([i[1] for i in items]),
                   np.stack([i[2].transpose(2, 0, 1) for i in items]), np.stack([i[3] for i in items]))

    @staticmethod
    def _crop(item, crop, flip, factor, rng):
        first, second, flow, mask = item
        rows, cols = first.shape[0] // factor, first.shape[1] // factor    # whole cells only
        out_rows, out_cols = (rows, cols) if crop is None else (int(crop[0]) // factor, int(crop[1]) // factor)
        if out_rows > rows or out_cols > cols:
            raise ValueError(f"crop {out_cols * factor}x{out_rows * factor} is larger than the frames "
                             f"({first.shape[1]}x{first.shape[0]})")
        r0, c0 = int(rng.integers(rows - out_rows + 1)), int(rng.integers(cols - out_cols + 1))
        pixels = (slice(r0 * factor, (r0 + out_rows) * factor), slice(c0 * factor, (c0 + out_cols) * factor))
        cells = (slice(r0, r0 + out_rows), slice(c0, c0 + out_cols))
        first, second, flow, mask = first[pixels], second[pixels], flow[cells].copy(), mask[cells].copy()
        if flip and rng.random() < 0.5:
            first, second, mask = first[:, ::-1], second[:, ::-1], mask[:, ::-1]
            flow = flow[:, ::-1] * np.array([-1.0, 1.0], np.float32)
        ys, xs = np.mgrid[0:out_rows, 0:out_cols].astype(np.float32) + 0.5     # cell centres, grid units
        end_x, end_y = xs + flow[..., 0], ys + flow[..., 1]
        inside = (end_x >= 0) & (end_x <= out_cols) & (end_y >= 0) & (end_y <= out_rows)
        return (np.ascontiguousarray(first), np.ascontiguousarray(second), np.ascontiguousarray(flow, np.float32),
                np.ascontiguousarray(mask * inside, np.float32))
