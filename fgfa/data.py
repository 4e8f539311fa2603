"""Images in, network tensors out: resizing, normalisation, padding, and FGFA training samples.

A training sample is a key frame and its neighbours (two frames of the same video at distinct random
offsets in [-MAX_OFFSET, MAX_OFFSET], clamped to the video; copies of the key image for still
images), all resized to one randomly drawn scale, flipped and (IMAGE.TRAIN_TILE) cropped together.
"""
import cv2
import numpy as np

from lib.dataset.io import read_image, read_image_or_fallback
from lib.dataset.record import spread_indices
from lib.transforms import RandomTile

from .config import flip_enabled, input_scale, per_frame_transform, training_scales


def target_size(height, width, short, max_long):
    """Scale so the short side is ``short`` unless the long side would exceed ``max_long``."""
    scale = float(short) / min(height, width)
    if round(scale * max(height, width)) > max_long:
        scale = float(max_long) / max(height, width)
    return scale


def resize_image(image, short, max_long, flip=False):
    """RGB uint8 HxWx3 -> (resized (and flipped) uint8 image, scale)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    height, width = image.shape[:2]
    scale = target_size(height, width, short, max_long)
    new_h, new_w = int(round(height * scale)), int(round(width * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return (resized[:, ::-1] if flip else resized), scale


def normalize_pad(image, mean, std, pad_stride):
    """uint8 HxWx3 -> float32 3xHpxWp, (x - mean) / std, zero-padded to a multiple of pad_stride."""
    new_h, new_w = image.shape[:2]
    out_h = int(np.ceil(new_h / pad_stride) * pad_stride)
    out_w = int(np.ceil(new_w / pad_stride) * pad_stride)
    padded = np.zeros((3, out_h, out_w), np.float32)
    norm = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    padded[:, :new_h, :new_w] = norm.transpose(2, 0, 1)
    return padded


def denormalize(image, mean, std, height=None, width=None):
    """normalize_pad's inverse: float32 3xHpxWp -> RGB uint8 HxWx3 (the top-left height x width, the
    unpadded image, when given): the frame DIS flow runs on."""
    height, width = height or image.shape[1], width or image.shape[2]
    pixels = (image[:, :height, :width] * np.asarray(std, np.float32).reshape(3, 1, 1)
              + np.asarray(mean, np.float32).reshape(3, 1, 1))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def prepare_image(image, short, max_long, mean, std, pad_stride, flip=False):
    """RGB uint8 HxWx3 -> (float32 3xHpxWp normalised and zero-padded, [h, w, scale])."""
    resized, scale = resize_image(image, short, max_long, flip)
    return normalize_pad(resized, mean, std, pad_stride), np.array(list(resized.shape[:2]) + [scale], np.float32)


def make_preprocess(cfg):
    """The test-time image -> (tensor, im_info) function of a config."""
    short, max_long = input_scale(cfg)
    mean, std, stride = cfg.INPUT.MEAN, cfg.INPUT.STD, cfg.IMAGE.PAD_STRIDE

    def preprocess(image):
        return prepare_image(image, short, max_long, mean, std, stride)
    return preprocess


def neighbor_indices(key_pos, video_len, count, min_offset, max_offset, rng):
    """Positions of ``count`` neighbours of ``key_pos`` at distinct random offsets (clamped).

    Offsets are drawn without replacement from +-[min_offset, max_offset]; clamping to the video
    may make two neighbours coincide in very short videos, which is the reference's behaviour.
    """
    offsets = np.concatenate([np.arange(-max_offset, -min_offset + 1), np.arange(min_offset, max_offset + 1)])
    chosen = rng.choice(offsets, size=count, replace=len(offsets) < count)
    return [int(min(max(key_pos + o, 0), video_len - 1)) for o in chosen]


class TrainSamples:
    """Training samples of a DetectionDataset for FGFA (or the baseline with ``num_neighbors=0``)."""

    def __init__(self, dataset, cfg, num_neighbors=2):
        self.dataset = dataset
        self.cfg = cfg
        self.num_neighbors = num_neighbors
        self.videos = dataset.snippets()
        self.position = {}
        for vid, recs in self.videos.items():
            for pos, rec in enumerate(recs):
                self.position[rec.image_id] = (vid, pos)
        self.keys = list(range(len(dataset)))
        self._paths_by_video = {}
        self.scales, self.flip = training_scales(cfg), flip_enabled(cfg)
        self.per_frame = per_frame_transform(cfg)
        tile = cfg.IMAGE.TRAIN_TILE
        self.tiler = None
        if tile.SIZE and min(tile.SIZE) > 0:
            # crops of the resized frames: small objects at a high scale for a fraction of the cost
            # frames smaller than the tile are padded with the mean: 0 after normalisation, as at test
            self.tiler = RandomTile(size=list(tile.SIZE), object_prob=tile.OBJECT_PROB, min_visible=tile.MIN_VISIBLE,
                                    fill=tuple(cfg.INPUT.MEAN))
        per_video = cfg.DATASET.FRAMES_PER_VIDEO
        if per_video > 0:
            keep = set()
            for recs in self.videos.values():
                keep.update(recs[i].image_id for i in spread_indices(len(recs), per_video))
            self.keys = [i for i, r in enumerate(dataset.records) if r.video is None or r.image_id in keep]

    def __len__(self):
        return len(self.keys)

    def frames_of(self, index, rng):
        """(key Record, image paths of the key frame and its neighbours) of sample ``index``. Neighbours
        reached through a video's file pattern are not records (no load-time check has seen them):
        ``load`` reads those with the key frame as the fallback."""
        rec = self.dataset.records[self.keys[index]]
        if not self.num_neighbors:
            return rec, [rec.image]
        video_info = (getattr(self.dataset, "video_info", None) or {}).get(rec.video)
        if video_info and rec.frame >= 0:
            # every frame of the video is reachable through its file pattern (ImageNet VID layout)
            nb = neighbor_indices(rec.frame, int(video_info["length"]), self.num_neighbors,
                                  self.cfg.TRAIN.MIN_OFFSET, self.cfg.TRAIN.MAX_OFFSET, rng)
            return rec, [rec.image] + [video_info["pattern"] % i for i in nb]
        if rec.video is None or rec.image_id not in self.position:
            return rec, [rec.image] * (1 + self.num_neighbors)   # still image: copies
        vid, pos = self.position[rec.image_id]
        recs = self.videos[vid]
        nb = neighbor_indices(pos, len(recs), self.num_neighbors, self.cfg.TRAIN.MIN_OFFSET,
                              self.cfg.TRAIN.MAX_OFFSET, rng)
        return rec, [rec.image] + [recs[i].image for i in nb]

    def _record_paths(self, key):
        """Image paths of the records of ``key``'s video (checked when the dataset was loaded)."""
        if key.video is None or key.image_id not in self.position:
            return {key.image}
        if key.video not in self._paths_by_video:
            self._paths_by_video[key.video] = {r.image for r in self.videos[key.video]}
        return self._paths_by_video[key.video]

    def load(self, index, rng):
        """-> (frames (F,3,Hp,Wp) float32, im_info [h, w, scale], gt boxes (G,4), labels (G,)).

        Every frame of a sample gets the same scale, flip and (IMAGE.TRAIN_TILE) tile; a RandomDegrade /
        RandomFrameDrop among TRAIN.AUGMENTATIONS acts on each frame on its own, before tiling."""
        key, paths = self.frames_of(index, rng)
        short, max_long = self.scales[rng.randint(len(self.scales))]
        flip = bool(self.flip and rng.rand() < 0.5)
        resized = {}
        records = self._record_paths(key)
        report = getattr(self.dataset, "report", None)
        for path in paths:
            if path not in resized:
                # a neighbour outside the records that cannot be read: reported once, the key frame used
                image = read_image(path) if path in records else read_image_or_fallback(path, key.image, report)
                resized[path], scale = resize_image(image, short, max_long, flip)
        images = [resized[p] for p in paths]
        if any(f.shape != images[0].shape for f in images):
            raise ValueError(f"{key.image}: neighbour frames differ in size from the key frame ({paths})")
        keep = ~key.difficult
        boxes = key.boxes[keep].astype(np.float32) * scale
        labels = key.labels[keep]
        if flip:
            width = images[0].shape[1]
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        if self.per_frame is not None:
            # neighbours have no boxes of their own here; the key frame's (a few frames away) put an
            # occluder where the object is about
            images, _ = self.per_frame(images, [boxes] * len(images), rng=rng)
        content = images[0].shape[:2]   # the image part of the input (padding excluded)
        if self.tiler is not None:
            with_labels = np.concatenate([boxes.reshape(-1, 4), labels.reshape(-1, 1).astype(np.float32)], axis=1)
            images, tiled = self.tiler(images, [with_labels] + [with_labels[:0]] * (len(images) - 1), rng=rng)
            boxes, labels = tiled[0][:, :4], tiled[0][:, 4].astype(np.int64)
            # a frame smaller than the tile is padded right/bottom: the RPN must not use that area
            content = (min(content[0], images[0].shape[0]), min(content[1], images[0].shape[1]))
        frames = [normalize_pad(im, self.cfg.INPUT.MEAN, self.cfg.INPUT.STD, self.cfg.IMAGE.PAD_STRIDE)
                  for im in images]
        im_info = np.array(list(content) + [scale], np.float32)
        return np.stack(frames), im_info, boxes.reshape(-1, 4).astype(np.float32), labels


def collate(samples):
    """Pad the frames of a batch to one size: (N,F,3,H,W), im_info (N,3), box and label lists."""
    height = max(s[0].shape[2] for s in samples)
    width = max(s[0].shape[3] for s in samples)
    n_frames = samples[0][0].shape[0]
    data = np.zeros((len(samples), n_frames, 3, height, width), np.float32)
    for i, s in enumerate(samples):
        data[i, :, :, :s[0].shape[2], :s[0].shape[3]] = s[0]
    return data, np.stack([s[1] for s in samples]), [s[2] for s in samples], [s[3] for s in samples]
