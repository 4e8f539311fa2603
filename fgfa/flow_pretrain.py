"""Supervised pre-training of FGFA's FlowNet on image pairs with known flow (lib.dataset.flow_pairs).

The reference starts from a FlowNet trained on Flying Chairs; no such weights can be downloaded here,
and trained only through the detection loss the FlowNet does not learn motion (its flows barely
change between neighbours 1 and 3 frames away). So before detection training (TRAIN.FLOW_PRETRAIN.ITERS
> 0) the FlowNet learns flow on pairs cut from the training images themselves: a translated (with
``ZOOM`` > 0 also scaled: forward camera motion) background plus pasted moving patches, supervised at
the feature stride with the end-point error.

With ``SOURCE: video`` the pairs are instead real training frames MIN_OFFSET..MAX_OFFSET apart in one
snippet, and the target is OpenCV's Farneback flow, scored only where its forward and backward flows
agree: the motion of the user's own footage (a dashcam's radial flow) rather than translated patches.
``SOURCE: dis`` takes OpenCV's DIS flow as the teacher on such pairs (lib.dataset.teacher_flow: cached
on disk as npz in data/cache/teacher_flow, keyed by the frames' pixels and the settings), at the
distances the FGFA window uses, over every pair of the training snippets (IMAGES: at most so many);
``PHOTOMETRIC`` / ``SMOOTHNESS`` > 0 add the unsupervised terms of lib.flow_losses.

The training runs through lib.train's Trainer (its own run folder OUTPUT_DIR/flow_pretrain: log,
TensorBoard, checkpoints, so an interrupted pre-training resumes), one epoch of ITERS steps with Adam,
the rate divided by 10 for the last fifth.

The result is saved as OUTPUT_DIR/flownet_pretrained.params (atomically) with a JSON record of the
settings it came from; it is reused only when they match (a changed FlowNet width, pre-training
setting, seed or training set retrains it). ``NETWORK.FLOW_WEIGHTS`` loads user-supplied FlowNet
weights instead. The evaluation pairs are drawn with another seed from the same training images.
"""
import copy
import json
import os

import mxnet as mx
import numpy as np

from lib.config import PROJECT_ROOT, ConfigError, to_plain
from lib.dataset.flow_pairs import consistent_mask, downsample_flow, farneback_flow, make_flow_pair
from lib.dataset.io import DatasetError, read_image
from lib.dataset.teacher_flow import TeacherFlowCache, TeacherFlowPairs
from lib.fileio import atomic_save, atomic_write_json
from lib.flow_losses import flow_loss
from lib.train import fit
from lib.train.distributed import deal_batches, split_batch

from .config import flip_enabled, input_scale
from .data import normalize_pad, resize_image

PRETRAINED_FILE = "flownet_pretrained.params"
RECORD_FILE = "flownet_pretrained.json"


def pretrain_settings(cfg, dataset):
    """What the pre-trained weights depend on (compared before they are reused)."""
    return {"FLOW_PRETRAIN": to_plain(cfg.TRAIN.FLOW_PRETRAIN), "FLOW_WIDTH": float(cfg.NETWORK.FLOW_WIDTH),
            "FLOW_SCALE": float(cfg.NETWORK.FLOW_SCALE), "SEED": int(cfg.TRAIN.SEED),
            "IMAGE": {"MEAN": list(cfg.INPUT.MEAN), "STD": list(cfg.INPUT.STD), "SCALE": list(input_scale(cfg))},
            "dataset": dataset.name, "images": len(dataset.records)}


def source_images(dataset, count, cfg, rng):
    """Up to ``count`` training images (RGB, at the test scale) to cut pairs from."""
    short, max_long = input_scale(cfg)
    picks = rng.choice(len(dataset.records), size=min(count, len(dataset.records)), replace=False)
    images = []
    for i in picks:
        try:
            images.append(resize_image(read_image(dataset.records[i].image), short, max_long)[0])
        except DatasetError:
            continue   # unreadable images are reported by the detection training itself
    if not images:
        raise DatasetError("flow pre-training: none of the sampled training images could be read")
    return images


def pair_batch(images, cfg, rng):
    """(first (B,3,H,W), second (B,3,H,W), target flow (B,2,H/16,W/16) in feature pixels, mask
    (B,H/16,W/16) of the cells scored: all of them)."""
    pre = cfg.TRAIN.FLOW_PRETRAIN
    width, height = (int(v) for v in pre.SIZE)
    img = cfg.INPUT
    stride = cfg.NETWORK.FEAT_STRIDE
    firsts, seconds, flows = [], [], []
    for _ in range(int(pre.BATCH)):
        a, b, flow = make_flow_pair(images, (height, width), rng, max_shift=float(pre.MAX_SHIFT),
                                    num_patches=tuple(pre.PATCHES), max_zoom=float(pre.ZOOM))
        firsts.append(normalize_pad(a, img.MEAN, img.STD, stride))
        seconds.append(normalize_pad(b, img.MEAN, img.STD, stride))
        flows.append(downsample_flow(flow, stride).transpose(2, 0, 1))
    flows = np.stack(flows)
    return np.stack(firsts), np.stack(seconds), flows, np.ones((len(flows),) + flows.shape[2:], np.float32)


def video_flow_pairs(dataset, cfg, rng):
    """Up to FLOW_PRETRAIN.IMAGES pairs of training frames TRAIN.MIN_OFFSET..MAX_OFFSET apart in one
    snippet (either order: FGFA warps neighbours on both sides), at the test scale:
    [(first, second, Farneback flow (H,W,2) in pixels, consistent pixels (H,W) bool)]."""
    pre, train = cfg.TRAIN.FLOW_PRETRAIN, cfg.TRAIN
    candidates = [(recs[i], recs[i + offset]) for recs in dataset.snippets().values()
                  for offset in range(int(train.MIN_OFFSET), int(train.MAX_OFFSET) + 1)
                  for i in range(len(recs) - offset)]
    if not candidates:
        raise DatasetError(f"flow pre-training (SOURCE: video): {dataset.name} has no snippet with frames "
                           f"{train.MIN_OFFSET}..{train.MAX_OFFSET} apart")
    short, max_long = input_scale(cfg)
    tolerance = 0.5 * cfg.NETWORK.FEAT_STRIDE
    pairs = []
    for i in rng.choice(len(candidates), size=min(int(pre.IMAGES), len(candidates)), replace=False):
        records = candidates[i][::-1] if rng.rand() < 0.5 else candidates[i]
        try:
            first, second = (resize_image(read_image(rec.image), short, max_long)[0] for rec in records)
        except DatasetError:
            continue   # unreadable images are reported by the detection training itself
        forward, backward = farneback_flow(first, second), farneback_flow(second, first)
        pairs.append((first, second, forward, consistent_mask(forward, backward, tolerance)))
    if not pairs:
        raise DatasetError("flow pre-training: none of the sampled training frame pairs could be read")
    return pairs


def video_pair_batch(pairs, cfg, rng):
    """A pair_batch of SIZE crops (on the stride grid, flipped when training flips) of ``video_flow_pairs``;
    the mask keeps the cells whose pixels are mostly consistent."""
    pre, img = cfg.TRAIN.FLOW_PRETRAIN, cfg.INPUT
    flip = flip_enabled(cfg)
    stride = cfg.NETWORK.FEAT_STRIDE
    width, height = (int(v) for v in pre.SIZE)
    firsts, seconds, flows, masks = [], [], [], []
    for _ in range(int(pre.BATCH)):
        first, second, flow, valid = pairs[rng.randint(len(pairs))]
        rows, cols = first.shape[0] // stride, first.shape[1] // stride
        if rows * stride < height or cols * stride < width:
            raise ValueError(f"TRAIN.FLOW_PRETRAIN.SIZE {width}x{height} is larger than the training frames "
                             f"({first.shape[1]}x{first.shape[0]})")
        y0 = stride * rng.randint(0, rows - height // stride + 1)
        x0 = stride * rng.randint(0, cols - width // stride + 1)
        crop = (slice(y0, y0 + height), slice(x0, x0 + width))
        first, second, flow, valid = first[crop], second[crop], flow[crop], valid[crop]
        if flip and rng.rand() < 0.5:
            first, second, valid = first[:, ::-1], second[:, ::-1], valid[:, ::-1]
            flow = flow[:, ::-1] * np.array([-1, 1], np.float32)
        firsts.append(normalize_pad(np.ascontiguousarray(first), img.MEAN, img.STD, stride))
        seconds.append(normalize_pad(np.ascontiguousarray(second), img.MEAN, img.STD, stride))
        flows.append(downsample_flow(np.ascontiguousarray(flow), stride).transpose(2, 0, 1))
        cells = valid.reshape(height // stride, stride, width // stride, stride).mean(axis=(1, 3))
        masks.append((cells > 0.5).astype(np.float32))
    return np.stack(firsts), np.stack(seconds), np.stack(flows), np.stack(masks)


def end_point_error(pred, target, mask):
    """Mean Euclidean distance between two (B,2,h,w) flows over the cells of a (B,h,w) mask."""
    error = mx.nd.sqrt(mx.nd.sum(mx.nd.square(pred - target), axis=1) + 1e-8)
    return (error * mask).sum() / mx.nd.maximum(mask.sum(), 1.0)


TEACHER_CACHE = os.path.join(PROJECT_ROOT, "data", "cache", "teacher_flow")


def dis_teacher_pairs(dataset, cfg):
    """TeacherFlowPairs of the training snippets at the window's distances, frames at the test scale
    (where the FlowNet runs in the window; the cache keys on these pixels)."""
    pre, train = cfg.TRAIN.FLOW_PRETRAIN, cfg.TRAIN
    short, max_long = input_scale(cfg)
    cache = TeacherFlowCache(os.environ.get("VIDEODET_TEACHER_CACHE", TEACHER_CACHE), preset=pre.DIS_PRESET,
                             factor=int(cfg.NETWORK.FEAT_STRIDE), tolerance=0.5 * cfg.NETWORK.FEAT_STRIDE)
    pairs = TeacherFlowPairs(dataset, cache, int(train.MIN_OFFSET), int(train.MAX_OFFSET), count=int(pre.IMAGES),
                             seed=int(train.SEED) + 7,
                             load_frame=lambda rec: resize_image(read_image(rec.image), short, max_long)[0])
    if not len(pairs):
        raise DatasetError(f"flow pre-training (SOURCE: dis): {dataset.name} has no snippet with frames "
                           f"{train.MIN_OFFSET}..{train.MAX_OFFSET} apart")
    height, width = pairs[0][0].shape[:2]
    if int(pre.SIZE[0]) > width or int(pre.SIZE[1]) > height:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: TRAIN.FLOW_PRETRAIN.SIZE {list(pre.SIZE)} "
                          f"([width, height]) is larger than the training frames at the test scale "
                          f"({width}x{height})")
    return pairs


def dis_batch(pairs, cfg, rng):
    """A pair_batch of SIZE crops of DIS teacher pairs (flipped when training flips)."""
    pre, img = cfg.TRAIN.FLOW_PRETRAIN, cfg.INPUT
    stride = cfg.NETWORK.FEAT_STRIDE
    width, height = (int(v) for v in pre.SIZE)
    items = [pairs._crop(pairs[int(rng.randint(len(pairs)))], (height, width), flip_enabled(cfg), stride,
                         np.random.default_rng(int(rng.randint(2 ** 31 - 1)))) for _ in range(int(pre.BATCH))]
    firsts = [normalize_pad(np.ascontiguousarray(a), img.MEAN, img.STD, stride) for a, _, _, _ in items]
    seconds = [normalize_pad(np.ascontiguousarray(b), img.MEAN, img.STD, stride) for _, b, _, _ in items]
    return (np.stack(firsts), np.stack(seconds), np.stack([f.transpose(2, 0, 1) for _, _, f, _ in items]),
            np.stack([m for _, _, _, m in items]))


class FlowTask:
    """lib.train task: the FlowNet's EPE against the target flow at feature resolution (+ the optional
    photometric and smoothness terms), the batch split over the contexts (each part weighted by its
    share, so the losses sum to the batch's loss)."""

    def __init__(self, flownet, cfg, contexts):
        self.net = flownet
        self.contexts = list(contexts)
        pre = cfg.TRAIN.FLOW_PRETRAIN
        self.photometric, self.smoothness = float(pre.PHOTOMETRIC), float(pre.SMOOTHNESS)

    def loss(self, batch):
        total = len(batch[0])
        losses, parts = [], {}
        for ctx, part in zip(self.contexts, split_batch(tuple(batch), self.contexts, even_split=False)):
            first, second, target, mask = (mx.nd.array(a, ctx=ctx) for a in part)
            loss, values = flow_loss(self.net(first, second), target, mask, first, second,
                                     self.photometric, self.smoothness)
            share = len(part[0]) / total
            losses.append(loss * share)
            for key, value in values.items():
                parts[key] = parts.get(key, 0.0) + value * share
        return losses, parts


class FlowEpoch:
    """The pre-training's one epoch: ITERS batches from ``next_batch(rng)``, made as they are consumed."""

    def __init__(self, next_batch, count, seed, batches=None):
        self.next_batch, self.count, self.seed = next_batch, count, seed
        self.batches = batches

    def shard(self, rank, num_workers):
        return FlowEpoch(self.next_batch, self.count, self.seed,
                         [int(b) for b in deal_batches(np.arange(self.count), 1, rank, num_workers)])

    def __len__(self):
        return self.count if self.batches is None else len(self.batches)

    def __iter__(self):
        for index in (range(self.count) if self.batches is None else self.batches):
            yield self.next_batch(np.random.RandomState(self.seed * 1_000_003 + index))


def _saved_settings(record_path):
    if not os.path.isfile(record_path):
        return None
    with open(record_path, "r", encoding="utf-8") as f:
        return json.load(f).get("settings")


def pretrained_flownet_reusable(cfg, dataset, out_dir):
    """True when ``pretrain_flownet`` would load OUTPUT_DIR's weights instead of training."""
    return (os.path.isfile(os.path.join(out_dir, PRETRAINED_FILE))
            and _saved_settings(os.path.join(out_dir, RECORD_FILE)) == pretrain_settings(cfg, dataset))


def pretrain_flownet(model, cfg, dataset, out_dir, ctx=None, logger=None, progress=True):
    """Train ``model.flownet`` for TRAIN.FLOW_PRETRAIN.ITERS steps; returns {"epe_start", "epe_end",
    "zero_flow_epe", "path"} measured on a fixed held-out batch. Skipped (weights loaded) when
    OUTPUT_DIR already holds the result. ``ctx``: a context or the list the batches are split over."""
    contexts = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]
    pre = cfg.TRAIN.FLOW_PRETRAIN
    path = os.path.join(out_dir, PRETRAINED_FILE)
    record_path = os.path.join(out_dir, RECORD_FILE)
    settings = pretrain_settings(cfg, dataset)
    if os.path.isfile(path):
        saved = _saved_settings(record_path)
        if saved == settings:
            model.flownet.load_parameters(path, ctx=contexts)
            if logger:
                logger.info("FlowNet: pre-trained weights loaded from %s", path)
            return {"path": path, "reused": True}
        if logger:
            logger.warning("FlowNet: %s was pre-trained with other settings (%s): training it again", path,
                           record_path if saved is not None else "no record")
    rng = np.random.RandomState(int(cfg.TRAIN.SEED) + 7)
    if pre.SOURCE in ("video", "dis"):
        if pre.SOURCE == "video":
            pairs = video_flow_pairs(dataset, cfg, rng)
            make = video_pair_batch
        else:
            pairs = dis_teacher_pairs(dataset, cfg)
            pairs.precompute(progress=progress)
            make = dis_batch
        # an eighth of the pairs (at least one) only for the held-out EPE
        held = max(1, len(pairs) // 8) if len(pairs) > 1 else 0
        if pre.SOURCE == "video":
            held_pairs, pairs = pairs[:held] or pairs, pairs[held:]
        else:
            held_pairs, pairs = copy.copy(pairs), copy.copy(pairs)
            held_pairs.pairs, pairs.pairs = pairs.pairs[:held] or pairs.pairs, pairs.pairs[held:]
        held_out = make(held_pairs, cfg, np.random.RandomState(12345))

        def next_batch(batch_rng):
            return make(pairs, cfg, batch_rng)
    else:
        images = source_images(dataset, int(pre.IMAGES), cfg, rng)
        held_out = pair_batch(images, cfg, np.random.RandomState(12345))

        def next_batch(batch_rng):
            return pair_batch(images, cfg, batch_rng)
    held_out = [mx.nd.array(a, ctx=contexts[0]) for a in held_out]

    def held_out_epe():
        return float(end_point_error(model.flownet(held_out[0], held_out[1]), *held_out[2:]).asscalar())

    result = {"zero_flow_epe": float(end_point_error(mx.nd.zeros_like(held_out[2]), *held_out[2:]).asscalar()),
              "epe_start": held_out_epe()}
    iters = int(pre.ITERS)
    train_cfg = {"OPTIMIZER": "adam", "LR": float(pre.LR), "WD": 0.0, "EPOCHS": 1, "LR_SCHEDULE": "step",
                 "LR_STEP_UNIT": "iter", "LR_STEPS": [int(0.8 * iters)], "LR_FACTOR": 0.1,
                 "SEED": int(cfg.TRAIN.SEED) + 7, "PROGRESS": bool(progress), "LOG_EVERY": max(1, iters // 10),
                 "KEEP_LAST": 1, "BATCH_SIZE": int(pre.BATCH), "KVSTORE": "device"}
    fit(FlowTask(model.flownet, cfg, contexts), lambda epoch: FlowEpoch(next_batch, iters, train_cfg["SEED"]),
        train_cfg, os.path.join(out_dir, "flow_pretrain"), ctx=contexts, logger=logger)
    result["epe_end"] = held_out_epe()
    os.makedirs(out_dir, exist_ok=True)
    atomic_save(path, model.flownet.save_parameters)
    result["path"] = path
    atomic_write_json(record_path, {"settings": settings, "result": result}, sort_keys=False)
    if logger:
        logger.info("FlowNet pre-trained: held-out EPE %.3f -> %.3f feature px (zero flow: %.3f); saved %s",
                    result["epe_start"], result["epe_end"], result["zero_flow_epe"], path)
    return result
