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

The result is saved as OUTPUT_DIR/flownet_pretrained.params (atomically) with a JSON record of the
settings it came from; it is reused only when they match (a changed FlowNet width, pre-training
setting, seed or training set retrains it). ``NETWORK.FLOW_WEIGHTS`` loads user-supplied FlowNet
weights instead. The evaluation pairs are drawn with another seed from the same training images.
"""
import json
import os

import mxnet as mx
import numpy as np
import tqdm
from mxnet import autograd, gluon

from lib.config import to_plain
from lib.dataset.flow_pairs import consistent_mask, downsample_flow, farneback_flow, make_flow_pair
from lib.dataset.io import DatasetError, read_image

from .config import flip_enabled, training_scales
from .data import normalize_pad, resize_image

PRETRAINED_FILE = "flownet_pretrained.params"
RECORD_FILE = "flownet_pretrained.json"


def pretrain_settings(cfg, dataset):
    """What the pre-trained weights depend on (compared before they are reused)."""
    return {"FLOW_PRETRAIN": to_plain(cfg.TRAIN.FLOW_PRETRAIN), "FLOW_WIDTH": float(cfg.NETWORK.FLOW_WIDTH),
            "FLOW_SCALE": float(cfg.NETWORK.FLOW_SCALE), "SEED": int(cfg.TRAIN.SEED),
            "IMAGE": {"MEAN": list(cfg.INPUT.MEAN), "STD": list(cfg.INPUT.STD), "SCALE": training_scales(cfg)[0]},
            "dataset": dataset.name, "images": len(dataset.records)}


def source_images(dataset, count, cfg, rng):
    """Up to ``count`` training images (RGB, resized to the first training scale) to cut pairs from."""
    short, max_long = training_scales(cfg)[0]
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
    snippet (either order: FGFA warps neighbours on both sides), at the first training scale:
    [(first, second, Farneback flow (H,W,2) in pixels, consistent pixels (H,W) bool)]."""
    pre, train = cfg.TRAIN.FLOW_PRETRAIN, cfg.TRAIN
    candidates = [(recs[i], recs[i + offset]) for recs in dataset.snippets().values()
                  for offset in range(int(train.MIN_OFFSET), int(train.MAX_OFFSET) + 1)
                  for i in range(len(recs) - offset)]
    if not candidates:
        raise DatasetError(f"flow pre-training (SOURCE: video): {dataset.name} has no snippet with frames "
                           f"{train.MIN_OFFSET}..{train.MAX_OFFSET} apart")
    short, max_long = training_scales(cfg)[0]
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


def pretrain_flownet(model, cfg, dataset, out_dir, ctx=None, logger=None, progress=True):
    """Train ``model.flownet`` for TRAIN.FLOW_PRETRAIN.ITERS steps; returns {"epe_start", "epe_end",
    "zero_flow_epe", "path"} measured on a fixed held-out batch. Skipped (weights loaded) when
    OUTPUT_DIR already holds the result."""
    ctx = ctx or mx.cpu()
    pre = cfg.TRAIN.FLOW_PRETRAIN
    path = os.path.join(out_dir, PRETRAINED_FILE)
    record_path = os.path.join(out_dir, RECORD_FILE)
    settings = pretrain_settings(cfg, dataset)
    if os.path.isfile(path):
        saved = None
        if os.path.isfile(record_path):
            with open(record_path, "r", encoding="utf-8") as f:
                saved = json.load(f).get("settings")
        if saved == settings:
            model.flownet.load_parameters(path, ctx=ctx)
            if logger:
                logger.info("FlowNet: pre-trained weights loaded from %s", path)
            return {"path": path, "reused": True}
        if logger:
            logger.warning("FlowNet: %s was pre-trained with other settings (%s): training it again", path,
                           record_path if saved is not None else "no record")
    rng = np.random.RandomState(int(cfg.TRAIN.SEED) + 7)
    if pre.SOURCE == "video":
        pairs = video_flow_pairs(dataset, cfg, rng)
        # an eighth of the pairs (at least one) only for the held-out EPE
        held = max(1, len(pairs) // 8) if len(pairs) > 1 else 0
        held_pairs, pairs = pairs[:held] or pairs, pairs[held:]
        held_out = video_pair_batch(held_pairs, cfg, np.random.RandomState(12345))

        def next_batch():
            return video_pair_batch(pairs, cfg, rng)
    else:
        images = source_images(dataset, int(pre.IMAGES), cfg, rng)
        held_out = pair_batch(images, cfg, np.random.RandomState(12345))

        def next_batch():
            return pair_batch(images, cfg, rng)
    held_out = [mx.nd.array(a, ctx=ctx) for a in held_out]

    def held_out_epe():
        return float(end_point_error(model.flownet(held_out[0], held_out[1]), *held_out[2:]).asscalar())

    result = {"zero_flow_epe": float(end_point_error(mx.nd.zeros_like(held_out[2]), *held_out[2:]).asscalar()),
              "epe_start": held_out_epe()}
    trainer = gluon.Trainer(model.flownet.collect_params(), "adam", {"learning_rate": float(pre.LR), "wd": 0.0})
    iters = int(pre.ITERS)
    bar = None
    if progress:
        bar = tqdm.tqdm(total=iters, desc="flow pre-training", dynamic_ncols=True, leave=False)
    for step in range(iters):
        lr = float(pre.LR) * (0.1 if step >= int(0.8 * iters) else 1.0)
        trainer.set_learning_rate(lr)
        first, second, target, mask = (mx.nd.array(a, ctx=ctx) for a in next_batch())
        with autograd.record():
            loss = end_point_error(model.flownet(first, second), target, mask)
        loss.backward()
        trainer.step(1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epe=f"{float(loss.asscalar()):.3f}")
        if logger and (step + 1) % max(1, iters // 10) == 0:
            logger.info("flow pre-training %d/%d: EPE %.3f feature px (lr %.2g)", step + 1, iters,
                        float(loss.asscalar()), lr)
    if bar is not None:
        bar.close()
    result["epe_end"] = held_out_epe()
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp"
    model.flownet.save_parameters(tmp)
    os.replace(tmp, path)
    result["path"] = path
    with open(record_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "result": result}, f, indent=1)
    os.replace(record_path + ".tmp", record_path)
    if logger:
        logger.info("FlowNet pre-trained: held-out EPE %.3f -> %.3f feature px (zero flow: %.3f); saved %s",
                    result["epe_start"], result["epe_end"], result["zero_flow_epe"], path)
    return result
