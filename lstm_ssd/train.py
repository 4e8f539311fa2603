"""Training and evaluation of LSTM-SSD / Looking Fast and Slow on clips.

Training: clips of TRAIN.UNROLL frames; with CARRY_STATE the videos are cut into consecutive segments
given to fixed batch lanes, and each lane's LSTM state is carried (detached: truncated BPTT) from one
segment to the next and reset when its lane starts a new video. Still images become pseudo-videos
(crop-and-shift, lib.dataset.ClipSampler). Augmentation (TRAIN.AUGMENTATIONS, lib.transforms specs; by
default flip + SSD random crop) draws its parameters once per clip. For fast_slow the extractor of each
step is drawn at random (INTERLEAVE.SMALL_PROB).
The loss (sigmoid CE with hard negative mining + smooth L1, weights from LOSS) is taken over all
batch x unroll frames and normalised by the matched anchors. The loop is lib.train.fit.

Evaluation streams each test video frame by frame (state reset at every video start), with the
configured interleaving policy, and reports VOC mAP@0.5 and the frames per second of the stream.
"""
import os
import time

import mxnet as mx
import numpy as np
from easydict import EasyDict

from lib.config import ConfigError, merge, project_path, size_hw
from lib.dataset import ClipSampler, load_clip, read_image
from lib.dataset.specs import load_datasets
from lib.eval import voc_ap
from lib.eval.subsets import subset_scores
from lib.losses import MultiBoxLoss
from lib.matching import ssd_targets
from lib.streaming import fused_runner
from lib.train import fit, load_matching_parameters, seed_everything
from lib.pretrained import PretrainedError
from lib.train.distributed import config_contexts, deal_batches, join_job, split_batch
from lib.train.run import RunFolder
from lib.transforms import Compose, ResizeTo, build_transforms, lists_transform
from lib.viz import draw_detections, save_image

from .detector import build_detector, load_pretrained, save_model
from .policy import ACTIONS, train_policy
from .streaming import AsyncStreamingDetector, MemoryMotion, StreamingDetector, preprocess

MODEL_FILE = "model.params"


def clip_transform(cfg, train=True):
    """Training: TRAIN.AUGMENTATIONS (when TRAIN.AUGMENT) then the resize to INPUT.SIZE; test: the resize."""
    height, width = size_hw(cfg.INPUT.SIZE, "INPUT.SIZE")
    steps = []
    if train and cfg.TRAIN.AUGMENT:
        source = f"{cfg.get('CONFIG_FILE') or '<config>'}: TRAIN.AUGMENTATIONS"
        steps = build_transforms(list(cfg.TRAIN.AUGMENTATIONS), source=source).transforms
    return Compose(steps + [ResizeTo(height, width)])


def build_loss(cfg):
    L = cfg.LOSS
    return MultiBoxLoss("sigmoid", negative_ratio=L.NEG_RATIO, loc_weight=L.LOC_WEIGHT, cls_weight=L.CLS_WEIGHT,
                        max_negatives=L.MAX_NEGATIVES)


def clip_arrays(clip, transform, anchors, cfg):
    """One clip -> frames (T,3,H,W) float32 0..255, cls targets (T,P), box targets (T,P,4)."""
    frames, boxes, labels, _ = load_clip(clip)
    with_labels = [np.concatenate([b.reshape(-1, 4), l.reshape(-1, 1).astype(np.float32)], axis=1)
                   for b, l in zip(boxes, labels)]
    frames, with_labels = transform(frames, with_labels)
    height, width = size_hw(cfg.INPUT.SIZE, "INPUT.SIZE")
    scale = np.array([width, height, width, height], np.float32)
    cls_t, box_t = [], []
    for b in with_labels:
        gt = b[:, :4] / scale
        c, t = ssd_targets(gt, b[:, 4].astype(np.int64), anchors, cfg.MATCHER.IOU, tuple(cfg.MODEL.BOX_STDS))
        cls_t.append(c)
        box_t.append(t)
    arr = np.stack([f.transpose(2, 0, 1) for f in frames]).astype(np.float32)
    return arr, np.stack(cls_t), np.stack(box_t)


class ClipData:
    """``data(epoch)`` for lib.train.fit: batches of clips (dicts) from a dataset."""

    def __init__(self, dataset, cfg, anchors):
        t = cfg.TRAIN
        self.cfg, self.anchors = cfg, anchors
        # a model without memory has no state to carry: random clips (full, independent batches)
        self.mode = "sequential" if t.CARRY_STATE and cfg.MODEL.TYPE != "ssdlite" else "random"
        self.sampler = ClipSampler(dataset, clip_length=t.UNROLL, mode=self.mode, still_images=t.STILL_IMAGES,
                                   seed=t.SEED)
        self.transform = clip_transform(cfg, train=True)

    def _lanes(self, epoch):
        b = self.cfg.TRAIN.BATCH_SIZE
        if self.mode == "sequential":
            yield from self.sampler.streams(b, epoch)
        else:
            clips = self.sampler.epoch(epoch)
            for i in range(0, len(clips), b):
                yield clips[i:i + b]

    def __call__(self, epoch):
        return EpochBatches(self, epoch)

    def batches(self, epoch, lanes_list):
        rng = np.random.RandomState(self.cfg.TRAIN.SEED * 7919 + epoch)
        for lanes in lanes_list:
            present = [c for c in lanes if c is not None]
            # an idle lane (its share of the epoch is done) repeats another clip from a fresh state
            filled = [(c, bool(c.continues)) if c is not None else (present[0], False) for c in lanes]
            arrays = [clip_arrays(c, self.transform, self.anchors, self.cfg) for c, _ in filled]
            steps = arrays[0][0].shape[0]
            if self.cfg.MODEL.TYPE == "fast_slow":
                schedule = ["small" if rng.rand() < self.cfg.INTERLEAVE.SMALL_PROB else "large" for _ in range(steps)]
            else:
                schedule = ["large"] * steps
            drop = float(self.cfg.TRAIN.STATE_DROPOUT)
            # drawn after the schedule, and only when asked for: runs without it keep their random streams
            keep = (rng.rand(len(filled), steps) >= drop) if drop > 0 else np.ones((len(filled), steps), bool)
            yield {"frames": np.stack([a[0] for a in arrays]), "cls": np.stack([a[1] for a in arrays]),
                   "box": np.stack([a[2] for a in arrays]), "continues": np.array([k for _, k in filled]),
                   "state_keep": keep.astype(np.float32), "schedule": schedule}


class EpochBatches:
    """One epoch of batches: the clip plan is fixed up front (so len() is known for lr schedules);
    images are read and augmented lazily while iterating."""

    def __init__(self, data, epoch, lanes=None):
        self.data, self.epoch = data, epoch
        if lanes is None:
            lanes = [l for l in data._lanes(epoch) if any(c is not None for c in l)]
            cap = data.cfg.TRAIN.MAX_BATCHES
            lanes = lanes[:cap] if cap else lanes
        self.lanes = lanes

    def shard(self, rank, num_workers):
        """This worker's batches of a distributed job: the epoch's batches dealt out in turn
        (lib.train.distributed.deal_batches; a carried lane state then continues across a worker's
        own batches)."""
        picks = deal_batches(np.arange(len(self.lanes)), 1, rank, num_workers)
        return EpochBatches(self.data, self.epoch, [self.lanes[int(i[0])] for i in picks])

    def __len__(self):
        return len(self.lanes)

    def __iter__(self):
        return self.data.batches(self.epoch, self.lanes)


class _Task:
    """What the lib.train.fit tasks of this family share: the model, config and contexts, and the
    parameters the objective trains when TRAIN.TRAINABLE_PATTERNS is empty (empty = all)."""

    TRAINABLE = ()

    def __init__(self, net, cfg, ctx=None):
        self.net, self.cfg = net, cfg
        self.contexts = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]

    @property
    def ctx(self):
        return self.contexts[0]


class ClipTask(_Task):
    """task for lib.train.fit: loss over all batch x unroll frames, lane states carried between batches.
    With several contexts the lanes are split over them (each keeps its lanes' states); each part's
    loss is weighted by its share of the lanes."""

    def __init__(self, net, cfg, ctx=None):
        super().__init__(net, cfg, ctx)
        self.loss_fn = build_loss(cfg)
        self.lane_state = [None] * len(self.contexts)
        self.motion = None
        if net.memory is None and cfg.TRAIN.AUGMENT and lists_transform(cfg.TRAIN.AUGMENTATIONS, "RandomFrameDrop"):
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: TRAIN.AUGMENTATIONS: RandomFrameDrop "
                              f"trains a memory to detect on a dropped frame; MODEL.TYPE {net.type} has none and "
                              f"would learn boxes on blank frames")
        if cfg.TRAIN.MOVE_STATE:
            if net.memory is None:
                raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: TRAIN.MOVE_STATE moves the memory "
                                  f"state; MODEL.TYPE {net.type} has none")
            # the flow settings of the test-time move (TEST.MOTION PRESET, SCALE): the memory trains on the
            # alignment it will be read with
            motion = EasyDict(dict(cfg.TEST.MOTION, FLOW="dis", PROPAGATE=False))
            self.motion = MemoryMotion(net, motion, cfg.get("CONFIG_FILE") or "<config>")

    def initial_state(self, continues, batch, part=0):
        ctx = self.contexts[part]
        zero = self.net.zero_state(batch, ctx)
        carried = self.lane_state[part]
        if zero is None or carried is None or not self.cfg.TRAIN.CARRY_STATE or carried[0].shape[0] != batch:
            return zero
        keep = mx.nd.array(continues.astype(np.float32), ctx=ctx).reshape((-1, 1, 1, 1))
        return tuple(mx.nd.broadcast_mul(s, keep) for s in carried)

    def _part_loss(self, part, frames, cls_t, box_t, continues, state_keep, schedule):
        ctx = self.contexts[part]
        flows = None
        if self.motion is not None:     # frames are 0..255 at the input size: DIS reads them as images
            images = np.clip(np.rint(frames), 0, 255).astype(np.uint8).transpose(0, 1, 3, 4, 2)
            flows = self.motion.clip_flows(images, schedule, ctx)
        frames = mx.nd.array(frames, ctx=ctx)
        b, t = frames.shape[:2]
        state = self.initial_state(continues, b, part)
        state_keep = mx.nd.array(state_keep, ctx=ctx) if self.cfg.TRAIN.STATE_DROPOUT > 0 else None
        cls, box, state = self.net(frames, state, schedule, state_keep, flows)
        if state is not None:
            self.lane_state[part] = tuple(s.detach() for s in state)   # truncated BPTT
        p = cls.shape[2]
        return self.loss_fn(cls.reshape((b * t, p, -1)), box.reshape((b * t, p, 4)),
                            mx.nd.array(cls_t.reshape(b * t, p), ctx=ctx),
                            mx.nd.array(box_t.reshape(b * t, p, 4), ctx=ctx))

    def loss(self, batch):
        # state_keep (TRAIN.STATE_DROPOUT): a batch made elsewhere (bench.train_step) may leave it out: keep all
        keep = batch.get("state_keep")
        keep = np.ones(batch["frames"].shape[:2], np.float32) if keep is None else keep
        fields = (batch["frames"], batch["cls"], batch["box"], batch["continues"], keep)
        if len(self.contexts) == 1:
            total, cls_loss, box_loss = self._part_loss(0, *fields, batch["schedule"])
            return total, {"cls": cls_loss, "box": box_loss}
        lanes = len(batch["frames"])
        losses, parts = [], {"cls": 0.0, "box": 0.0}
        for part, pieces in enumerate(split_batch(fields, self.contexts, even_split=False)):
            share = len(pieces[0]) / lanes
            total, cls_loss, box_loss = self._part_loss(part, *pieces, batch["schedule"])
            losses.append(total * share)
            parts["cls"] += float(cls_loss.asscalar()) * share
            parts["box"] += float(box_loss.asscalar()) * share
        return losses, parts


class DistillTask(_Task):
    """TRAIN.OBJECTIVE distill_small (fast_slow): the small extractor and its projection learn the large
    extractor's projected features on the same frames (mean squared error per cell and channel; the
    teacher runs in inference mode, without gradient). The shared head and memory were trained on the
    large extractor's level 0; a small extractor that reproduces it makes the small steps usable from
    the start of interleaved training, which otherwise spends half its steps on features the head has
    never seen. Only parameters of the small extractor and projection train (unless TRAINABLE_PATTERNS
    says otherwise)."""

    TRAINABLE = ("_small_",)    # lstmssd0_small_* (extractor) and lstmssd0_project_small_*

    def __init__(self, net, cfg, ctx=None):
        if net.type != "fast_slow" or net.project_small is None:
            shared = " and a small extractor of its own (MODEL.SMALL.NET large is the large one)" \
                if net.small_shares_large else ""
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: TRAIN.OBJECTIVE distill_small needs "
                              f"MODEL.TYPE fast_slow with MODEL.LSTM.RESIDUAL true (the small projection){shared}; "
                              f"got MODEL.TYPE {net.type}")
        super().__init__(net, cfg, ctx)

    def _part_loss(self, part, frames):
        net = self.net
        frames = mx.nd.array(frames.reshape((-1,) + frames.shape[2:]), ctx=self.contexts[part])  # B*T frames
        with mx.autograd.pause():
            teacher = net.project(net.large(frames))
        student = net.project_small(net.small(frames))
        return mx.nd.mean(mx.nd.square(student - teacher))

    def loss(self, batch):
        if len(self.contexts) == 1:
            mse = self._part_loss(0, batch["frames"])
            return mse, {"mse": mse}
        lanes = len(batch["frames"])
        losses, total = [], 0.0
        for part, (frames,) in enumerate(split_batch((batch["frames"],), self.contexts, even_split=False)):
            share = len(frames) / lanes
            mse = self._part_loss(part, frames)
            losses.append(mse * share)
            total += float(mse.asscalar()) * share
        return losses, {"mse": total}


OBJECTIVES = {"detection": ClipTask, "distill_small": DistillTask}


def load_split(cfg, split):
    """DATASET.TRAIN or DATASET.VAL (``split``: TRAIN | VAL; TEST is read as VAL) as one dataset."""
    split = "VAL" if split == "TEST" else split
    ds = load_datasets(cfg.DATASET[split], source=cfg.get("CONFIG_FILE") or "<config>", key=f"DATASET.{split}")
    if ds is None:
        raise ConfigError(f"{cfg.CONFIG_FILE}: DATASET.{split} is empty; give a dataset spec (FORMAT: ...)")
    if cfg.DATASET.CLASSES and list(ds.classes) != list(cfg.DATASET.CLASSES):
        raise ConfigError(f"{cfg.CONFIG_FILE}: DATASET.{split} has classes {list(ds.classes)}, "
                         f"DATASET.CLASSES says {list(cfg.DATASET.CLASSES)}")
    if len(ds.classes) != cfg.MODEL.NUM_CLASSES:
        raise ConfigError(f"{cfg.CONFIG_FILE}: MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but DATASET.{split} "
                         f"has {len(ds.classes)} classes {list(ds.classes)}")
    return ds


def train(cfg, net, epochs=None, out_dir=None, dataset=None, ctx=None, val_fn=None, resume=True,
          train_overrides=None):
    """Train ``net`` with lib.train.fit; returns fit's summary. ``train_overrides``: TRAIN keys to
    replace for this call (e.g. a constant rate for fine-tuning after pruning)."""
    dataset = dataset if dataset is not None else load_split(cfg, "TRAIN")
    tcfg = dict(cfg.TRAIN)
    if epochs is not None:
        tcfg["EPOCHS"] = int(epochs)
    tcfg.update(train_overrides or {})
    tcfg = merge(tcfg, {})
    out_dir = out_dir or cfg.OUTPUT_DIR
    net.hybridize_parts(static_alloc=True)   # static graphs per part: several times faster on CPU
    objective = cfg.TRAIN.OBJECTIVE
    if objective not in OBJECTIVES:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: TRAIN.OBJECTIVE must be one of "
                          f"{sorted(OBJECTIVES)}, got {objective!r}")
    task = OBJECTIVES[objective](net, cfg, ctx)
    if not tcfg["TRAINABLE_PATTERNS"]:
        tcfg["TRAINABLE_PATTERNS"] = list(task.TRAINABLE)
    data = ClipData(dataset, cfg, net.anchors())
    return fit(task, data, tcfg, out_dir, ctx=ctx, val_fn=val_fn, resume=resume)


def load_init_weights(net, path, log=print):
    """Fine-tuning start (MODEL.WEIGHTS, e.g. the frame SSDLite model for LSTM-SSD): the parameters
    whose names and shapes match are loaded, the rest reported."""
    path = project_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS: {path} not found (the model this run starts from: train the "
                                f"run that writes it first)")
    loaded, skipped = load_matching_parameters(net, path)
    log(f"MODEL.WEIGHTS {path}: loaded {len(loaded)} tensors, {len(skipped)} left at their init "
        f"(e.g. {skipped[:3]})")
    return loaded, skipped


def train_model(cfg, dataset=None, out_dir=None, ctx=None, run=None, log=print):
    """The whole training phase: the run folder record, initial weights from the seed (exact resume),
    MODEL.WEIGHTS, training, OUTPUT_DIR/model.params (written by rank 0 alone in a distributed job,
    TRAIN.KVSTORE dist_sync). Returns (net, fit's summary, seconds)."""
    out_dir = out_dir or project_path(cfg.OUTPUT_DIR)
    contexts = config_contexts(cfg) if ctx is None else (list(ctx) if isinstance(ctx, (list, tuple)) else [ctx])
    job = join_job(cfg.TRAIN.KVSTORE, contexts)
    dataset = dataset if dataset is not None else load_split(cfg, "TRAIN")
    # a set in which no box survived loading trains on background at loss 0: refused unless asked for
    dataset.require_boxes(f"{cfg.get('CONFIG_FILE') or '<config>'}: DATASET.TRAIN",
                          allow_background_only=cfg.DATASET.ALLOW_BACKGROUND_ONLY)
    if run is None and job.is_chief:
        RunFolder(out_dir).write(cfg.MODEL.TYPE, dataset.classes, cfg)
    net = assemble_model(cfg, contexts, log)
    start = time.time()
    summary = train(cfg, net, out_dir=out_dir, dataset=dataset, ctx=contexts)
    seconds = time.time() - start
    if job.is_chief:
        save_model(net, os.path.join(out_dir, MODEL_FILE))
    return net, summary, seconds


def assemble_model(cfg, contexts, log=print):
    """The model a training run starts from: initial weights from the seed, then PRETRAINED, then
    MODEL.WEIGHTS (PHASE assemble saves it as it is, e.g. a fast_slow model whose small steps only
    propagate a trained LSTM-SSD's features, TEST.MOTION.PROPAGATE)."""
    seed_everything(cfg.TRAIN.SEED, 0)  # the initial weights are a function of the seed
    net = build_detector(cfg, contexts)
    net(mx.nd.zeros((1, 1, 3) + net.image_hw, ctx=contexts[0]))
    if cfg.PRETRAINED:
        try:
            for report in load_pretrained(net, cfg.PRETRAINED, ctx=contexts):
                log(f"backbone weights {report.summary()}")
        except PretrainedError as err:
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: PRETRAINED: {err}") from None
    skipped = None
    if cfg.MODEL.WEIGHTS:
        _, skipped = load_init_weights(net, cfg.MODEL.WEIGHTS, log)
    if net.small_from_large and not net.small_shares_large:
        copied = net.copy_large_into_small(skipped)
        log(f"MODEL.SMALL.NET large: {len(copied)} small-extractor tensors start as copies of the large one's")
    return net


def warm_up(net, ctx=mx.cpu(), steps=2):
    """Run each extractor's hybridized graph once or twice so graph building is not timed as fps."""
    frame = mx.nd.zeros((1, 3) + net.image_hw, ctx=ctx)
    for e in net.extractor_names:
        for _ in range(steps):
            net.step(frame, net.zero_state(1, ctx), e)[0].wait_to_read()


def _groups_in_order(dataset):
    """Test records grouped into streams: each video in frame order; each still image alone."""
    groups = [list(recs) for recs in dataset.snippets().values()]
    groups += [[r] for r in dataset if r.video is None]
    return groups


def calibration_frames(cfg, count):
    """(count, 3, H, W) frames spread over DATASET.TRAIN at INPUT.SIZE (int8 calibration)."""
    if count < 1:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: TEST.CALIB_FRAMES must be >= 1, got {count}")
    size = size_hw(cfg.INPUT.SIZE, "INPUT.SIZE")
    return np.concatenate([preprocess(read_image(rec.image), size).asnumpy()
                           for rec in load_split(cfg, "TRAIN").spread(count)])


def evaluate(cfg, net, dataset=None, policy=None, print_dir=None, policy_net=None, max_images=None, ctx=mx.cpu()):
    """Stream the test set; returns {"mAP", "fps", "frames", "large_share", "per_class"}.

    print_dir: write annotated JPEGs there (TEST.PRINT_IMAGES)."""
    dataset = dataset if dataset is not None else load_split(cfg, "VAL")
    policy = policy or cfg.INTERLEAVE.POLICY
    if policy == "async":
        stream = AsyncStreamingDetector(net, cfg, ctx=ctx)
    else:
        stream = StreamingDetector(net, cfg, policy=policy, ctx=ctx, policy_net=policy_net)
    stream = fused_runner(stream, cfg.TEST, cfg.get("CONFIG_FILE") or "config")
    if cfg.TEST.QUANTIZE == "int8":
        net.quantize_int8(calibration_frames(cfg, cfg.TEST.CALIB_FRAMES))
    elif cfg.TEST.QUANTIZE:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: TEST.QUANTIZE must be '' (float) or 'int8', "
                          f"got {cfg.TEST.QUANTIZE!r}")
    warm_up(net, ctx)
    limit = max_images if max_images is not None else cfg.TEST.MAX_IMAGES
    records, detections, seconds, large = [], [], 0.0, 0
    since_large = []          # per frame: frames since the last large step of its snippet (0: a large step)
    try:
        for group in _groups_in_order(dataset):
            stream.reset()
            distance = None
            for rec in group:
                if limit and len(records) >= limit:
                    break
                image = read_image(rec.image)
                t0 = time.perf_counter()
                (_, (boxes, scores, labels)), = stream.step(image)
                seconds += time.perf_counter() - t0
                large += stream.last_extractor == "large"
                if stream.last_extractor == "large":
                    distance = 0
                elif distance is not None:
                    distance += 1
                since_large.append(distance)
                records.append(rec)
                detections.append((boxes, scores, labels))
                if print_dir:
                    drawn = draw_detections(image, boxes, scores, labels, dataset.classes, cfg.TEST.DRAW_THRESH)
                    save_image(os.path.join(print_dir, rec.image_id.replace("/", "_") + ".jpg"), drawn)
    finally:
        if policy == "async":
            stream.close()
    result = voc_ap(records, detections, dataset.classes)
    # the whole videos were streamed, so the memory saw every frame of a subset's neighbourhood
    subsets = {name: dict(sub, mAP=sub["mAP"] or 0.0)
               for name, sub in subset_scores(records, detections, dataset.classes, cfg.TEST.SUBSETS).items()}
    return {"mAP": result["mAP"] or 0.0, "fps": len(records) / max(seconds, 1e-9),
            "frames": len(records), "large_share": large / max(len(records), 1), "per_class": result["per_class"],
            "policy": policy, "subsets": subsets,
            "by_distance": scores_by_distance(records, detections, dataset.classes, since_large)}


DISTANCE_BINS = ((0, 0), (1, 2), (3, 5), (6, None))


def scores_by_distance(records, detections, classes, since_large):
    """mAP of the frames grouped by how many frames ago the large extractor last ran (interleaved
    streams: how fast what the memory carries goes stale); {} when every frame was a large step or no
    frame was (async)."""
    known = [d for d in since_large if d is not None]
    if not known or max(known) == 0:
        return {}
    out = {}
    for low, high in DISTANCE_BINS:
        picked = [i for i, d in enumerate(since_large) if d is not None and d >= low and (high is None or d <= high)]
        if picked:
            name = f"{low}" if low == high else (f"{low}+" if high is None else f"{low}-{high}")
            ap = voc_ap([records[i] for i in picked], [detections[i] for i in picked], classes)["mAP"]
            out[name] = {"frames": len(picked), "mAP": ap or 0.0}
    return out


def frame_loss_fn(cfg, net):
    """(cls, box, (cls_target, box_target)) -> float detection loss of one frame (policy rewards)."""
    loss_fn = build_loss(cfg)

    def frame_loss(cls, box, target):
        c, b = target
        total, _, _ = loss_fn(cls, box, mx.nd.array(c[None]), mx.nd.array(b[None]))
        return float(total.asscalar())
    return frame_loss


def policy_clips(cfg, net, dataset, count):
    """(frames (1,T,3,S,S), [(cls_t, box_t)] * T) clips without augmentation, for policy training."""
    sampler = ClipSampler(dataset, clip_length=cfg.TRAIN.UNROLL, mode="random", still_images=cfg.TRAIN.STILL_IMAGES,
                          seed=cfg.TRAIN.SEED)
    transform = clip_transform(cfg, train=False)
    clips = sampler.epoch(0)
    for i in range(count):
        arr, cls_t, box_t = clip_arrays(clips[i % len(clips)], transform, net.anchors(), cfg)
        yield mx.nd.array(arr[None]), list(zip(cls_t, box_t))


def train_adaptive_policy(cfg, net, dataset=None, log=print):
    dataset = dataset if dataset is not None else load_split(cfg, "TRAIN")
    n_clips = max(1, cfg.POLICY_NET.STEPS // cfg.TRAIN.UNROLL + 1)
    return train_policy(net, policy_clips(cfg, net, dataset, n_clips), frame_loss_fn(cfg, net), cfg, log)


__all__ = ["train", "evaluate", "ClipTask", "ClipData", "train_adaptive_policy", "ACTIONS"]
