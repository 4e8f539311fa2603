"""Sliding-tile inference for small objects in large frames.

Small objects vanish when a 1280x720 (or 1080p) frame is resized to a 320-512 px network input.
Tiling runs the detector on overlapping crops at (close to) native resolution, maps each tile's boxes
back to frame coordinates, drops boxes cut by an inner tile border (their object is seen whole in a
neighbouring tile thanks to the overlap), and merges everything with class-aware NMS.
``tile_dataset`` cuts training tiles of big frames, for any detector family.
"""
import os

import cv2
import numpy as np

from lib.dataset import DetectionDataset, Record, read_image
from lib.nms import batched_nms
from lib.transforms import RandomTile


def tile_origins(length, tile, overlap):
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap`` px overlap."""
    if tile <= overlap:
        raise ValueError(f"tile size {tile} must be larger than the overlap {overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    count = int(np.ceil((length - tile) / step)) + 1
    # spread the tiles evenly so the last one ends exactly at the border
    return [int(round(i * (length - tile) / (count - 1))) for i in range(count)]


def tile_grid(width, height, tile_size, overlap):
    """(x0, y0, x1, y1) of every tile of a width x height frame; tile_size is int or (w, h)."""
    tw, th = (tile_size, tile_size) if np.isscalar(tile_size) else tile_size
    tiles = []
    for y0 in tile_origins(height, th, overlap):
        for x0 in tile_origins(width, tw, overlap):
            tiles.append((x0, y0, min(x0 + tw, width), min(y0 + th, height)))
    return tiles


def _touches_inner_border(boxes, tile, width, height, margin):
    x0, y0, x1, y1 = tile
    cut = np.zeros(len(boxes), bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def detect_tiled(detect_fn, image, tile_size, overlap=64, nms_iou=0.5, border_margin=2,
                 include_full_frame=False, max_detections=100):
    """Run ``detect_fn(image_crop) -> (boxes, scores, labels)`` on tiles of ``image`` and merge.

    Boxes returned by ``detect_fn`` are in the crop's pixel coordinates. With ``include_full_frame``
    the whole frame is detected too (large objects larger than a tile).
    Returns (boxes (K,4) float32, scores (K,), labels (K,)) in frame coordinates, best first.
    """
    height, width = image.shape[:2]
    all_boxes, all_scores, all_labels = [], [], []
    tiles = tile_grid(width, height, tile_size, overlap)
    for tile in tiles:
        x0, y0, x1, y1 = tile
        boxes, scores, labels = detect_fn(image[y0:y1, x0:x1])
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) + np.array([x0, y0, x0, y0], np.float32)
        keep = ~_touches_inner_border(boxes, tile, width, height, border_margin) if len(tiles) > 1 \
            else np.ones(len(boxes), bool)
        all_boxes.append(boxes[keep])
        all_scores.append(np.asarray(scores, np.float32).reshape(-1)[keep])
        all_labels.append(np.asarray(labels, np.int64).reshape(-1)[keep])
    if include_full_frame and len(tiles) > 1:
        boxes, scores, labels = detect_fn(image)
        all_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        all_scores.append(np.asarray(scores, np.float32).reshape(-1))
        all_labels.append(np.asarray(labels, np.int64).reshape(-1))
    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4), np.float32)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0, np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    if len(boxes) == 0:
        return boxes, scores, labels
    keep = np.asarray(batched_nms(boxes, scores, labels, nms_iou), np.int64)[:max_detections]
    return boxes[keep], scores[keep], labels[keep]


def tile_dataset(dataset, out_dir, tile_cfg, write=True):
    """Training tiles of big frames, written as JPEGs (lib.transforms.RandomTile, seeded).

    Per frame TILES_PER_IMAGE tiles, each around an object with probability OBJECT_PROB (else a random,
    mostly background tile); KEEP_FULL_FRAMES also keeps the whole frames. Works for every family since
    it only produces a new dataset. Frames not larger than the tile are kept as they are.
    ``write=False``: the same records (same seed, same tiles) without writing: they name the files
    another process writes into ``out_dir`` (the other workers of a distributed job).
    """
    width, height = (int(v) for v in tile_cfg.SIZE)
    tiler = RandomTile(size=[width, height], object_prob=float(tile_cfg.OBJECT_PROB),
                       min_visible=float(tile_cfg.MIN_VISIBLE), rng=np.random.RandomState(int(tile_cfg.SEED)))
    if write:
        os.makedirs(out_dir, exist_ok=True)
    records = []
    for index, rec in enumerate(dataset.records):
        if tile_cfg.KEEP_FULL_FRAMES or (rec.width <= width and rec.height <= height):
            records.append(rec)
        if rec.width <= width and rec.height <= height:
            continue
        image = read_image(rec.image)
        with_labels = np.concatenate([rec.boxes, rec.labels[:, None].astype(np.float32),
                                      rec.difficult[:, None].astype(np.float32)], axis=1)
        for t in range(int(tile_cfg.TILES_PER_IMAGE)):
            frames, boxes = tiler([image], [with_labels])
            tile, b = frames[0], np.asarray(boxes[0], np.float32).reshape(-1, 6)
            name = f"{index:06d}_{t}"
            path = os.path.join(out_dir, name + ".jpg")
            if write:
                cv2.imwrite(path, cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            records.append(Record(image=path, width=tile.shape[1], height=tile.shape[0], boxes=b[:, :4],
                                  labels=b[:, 4].astype(np.int64), difficult=b[:, 5] > 0.5,
                                  image_id=f"tiles/{name}"))
    return DetectionDataset(records, dataset.classes, dataset.name + "+tiles")

