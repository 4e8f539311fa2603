"""Training of FGFA / the R-FCN baseline through lib.train.fit.

``train(cfg)`` loads the training sets of the config, builds the model (gluoncv backbone weights when
PRETRAINED is set), and runs the fit loop: checkpoints every epoch (atomic, exact resume),
tqdm, tensorboardX and a log file in OUTPUT_DIR. The run folder record (lib.train.run: family, classes,
config) lets test, demo and the shared tools rebuild the same network.
"""
import copy
import logging
import os

import mxnet as mx
import numpy as np

from lib.config import ConfigError, project_path
from lib.dataset import DatasetError
from lib.dataset.specs import load_datasets
from lib.runtime import get_context
from lib.train import (
    CheckpointError,
    CheckpointManager,
    fit,
    load_matching_parameters,
    seed_everything,
    setup_logger,
)
from lib.pretrained import PretrainedError
from lib.train.distributed import config_contexts, deal_batches, join_job, split_batch
from lib.train.run import RunFolder

from .backbone import BackboneWeightsError
from .data import TrainSamples, collate
from .detector import FGFADetector
from .flow_pretrain import pretrain_flownet, pretrained_flownet_reusable


def family_name(cfg):
    """The registered family a config trains: fgfa with aggregation, rfcn without."""
    return "fgfa" if cfg.NETWORK.AGGREGATE else "rfcn"


def output_dir(cfg):
    return project_path(cfg.OUTPUT_DIR)


def load_train_set(cfg):
    """Concatenate the DATASET.TRAIN specs (e.g. DET + VID image sets) into one dataset."""
    source = cfg.get("CONFIG_FILE") or "<config>"
    dataset = load_datasets(cfg.DATASET.TRAIN, classes=cfg.DATASET.CLASSES, source=source, key="DATASET.TRAIN")
    if dataset is None:
        raise ConfigError(f"{source}: DATASET.TRAIN lists no dataset")
    if not len(dataset):
        raise ConfigError(f"{source}: DATASET.TRAIN holds no image")
    return dataset


def load_val_set(cfg, specs=None):
    """DATASET.VAL (or ``specs``) as one dataset; ConfigError when it is empty."""
    source = cfg.get("CONFIG_FILE") or "<config>"
    dataset = load_datasets(cfg.DATASET.VAL if specs is None else specs, classes=cfg.DATASET.CLASSES,
                            source=source, key="DATASET.VAL")
    if dataset is None:
        raise ConfigError(f"{source}: DATASET.VAL lists no dataset")
    return dataset


def build_model(cfg, num_classes, ctx=None, logger=None):
    """A fully initialised detector (shapes materialised by one tiny forward pass); ``ctx``: one
    context or the list a training splits its batches over. PRETRAINED weights go into the backbone
    (a bad or missing file is a ConfigError naming the key); the log says what stayed random."""
    ctx = ctx or get_context(cfg.CONTEXT)
    contexts = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    model = FGFADetector(cfg, num_classes)
    model.prepare_for_context(contexts[0])
    try:
        report = model.init_weights(list(contexts) if len(contexts) > 1 else contexts[0])
    except (PretrainedError, BackboneWeightsError) as err:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: PRETRAINED: {err}") from None
    if report is not None:
        (logger or logging.getLogger("train")).info("backbone weights %s", report.summary())
    materialize(model, contexts[0])
    return model


def load_init_weights(model, cfg, logger=None):
    """NETWORK.INIT_WEIGHTS: start from another detector of this project (e.g. FGFA from the R-FCN
    frame baseline): parameters of the same name and shape are loaded, the others (FlowNet and
    embedding then) keep their initialisation. Returns (loaded names, skipped names)."""
    path = project_path(cfg.NETWORK.INIT_WEIGHTS)
    try:
        loaded, skipped = load_matching_parameters(model, path)
    except CheckpointError as err:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: NETWORK.INIT_WEIGHTS: {err}") from None
    if logger:
        logger.info("initialised %d parameter arrays from %s; %d keep their init (%s)", len(loaded), path,
                    len(skipped), ", ".join(sorted({n.split('.')[0] for n in skipped})) or "none")
    return loaded, skipped


def materialize(model, ctx):
    """Run every block once on a tiny input so deferred parameter shapes become known."""
    stride = model.cfg.IMAGE.PAD_STRIDE
    size = max(64, stride * 4)
    image = mx.nd.zeros((1, 3, size, size), ctx=ctx)
    feat = model.features(image)
    if model.aggregate:
        model.embed(feat)
        model.flownet(image, image)
    half = model.feat_channels // 2
    model.rpn(feat[:, :half])
    model.rfcn(feat[:, half:], mx.nd.array([[0, 0, 0, 15, 15]], ctx=ctx))
    # MKLDNN's inference convolutions reorder their weights in place, asynchronously: let that finish
    # before anyone reads or copies a parameter (a read racing the reorder fails in MXNet 1.9)
    mx.nd.waitall()


class FGFATask:
    """The object lib.train.fit trains: ``net`` and ``loss(batch)``. With several contexts the batch is
    split over them (lib.train.distributed.split_batch); each part's loss is weighted by its share of
    the images, so the losses sum to the batch's mean."""

    def __init__(self, model, ctx):
        self.net = model
        self.contexts = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]

    def loss(self, batch):
        # np.random is reseeded by fit from (SEED, epoch): anchor/RoI sampling resumes exactly
        if len(self.contexts) == 1:
            data, im_info, boxes, labels = batch
            return self.net.train_loss(mx.nd.array(data, ctx=self.contexts[0]), im_info, boxes, labels, rng=np.random)
        total = len(batch[0])
        losses, parts = [], {}
        for ctx, (data, im_info, boxes, labels) in zip(self.contexts, split_batch(batch, self.contexts,
                                                                                   even_split=False)):
            share = len(data) / total
            loss, values = self.net.train_loss(mx.nd.array(data, ctx=ctx), im_info, boxes, labels, rng=np.random)
            losses.append(loss * share)
            for key, value in values.items():
                parts[key] = parts.get(key, 0.0) + value * share
        return losses, parts


def make_batches(samples, batch_size, logger=None, max_batches=0):
    """``epoch -> iterable of batches``; shuffling uses np.random, which fit reseeds per epoch.
    ``max_batches`` > 0 (TRAIN.MAX_BATCHES): at most that many batches of each epoch's order.

    A sample whose image cannot be read (or whose frames differ in size) is reported and skipped.
    """
    logger = logger or logging.getLogger("train")

    def load(index):
        try:
            return samples.load(index, np.random)
        except (DatasetError, ValueError) as err:
            logger.warning("skipping training sample %d: %s", index, err)
            return None

    class Epoch:
        """One epoch's batches of key-frame indices (a shuffled order cut into batches)."""

        def __init__(self, chunks=None):
            if chunks is None:
                order = np.random.permutation(len(samples))
                chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
            self.chunks = chunks[:max_batches] if max_batches > 0 else chunks

        def shard(self, rank, num_workers):
            """This worker's batches of a distributed job (lib.train.distributed.deal_batches)."""
            return Epoch(deal_batches(np.concatenate(self.chunks), batch_size, rank, num_workers))

        def __len__(self):
            return len(self.chunks)

        def __iter__(self):
            for chunk in self.chunks:
                loaded = [s for s in (load(int(i)) for i in chunk) if s is not None]
                if loaded:
                    yield collate(loaded)

    return lambda epoch: Epoch()


def window_parameters(cfg):
    """TRAIN.WINDOW_ONLY's TRAINABLE_PATTERNS: the embedding (with its quality logit), the FlowNet and the
    aggregation scale when it is learned."""
    return [r"^embed\.", r"^flownet\."] + ([r"^aggregate_log_scale$"] if cfg.NETWORK.AGGREGATE_SCALE_LEARNED else [])


def train(cfg, dataset=None, val_fn=None, logger=None, run=None):
    """Train from the config; returns lib.train.fit's summary (plus the model and classes). ``run``: the
    RunFolder already written by a caller (the recipe); else OUTPUT_DIR's record is written here."""
    out_dir = output_dir(cfg)
    contexts = config_contexts(cfg)
    job = join_job(cfg.TRAIN.KVSTORE, contexts)      # rank 0 alone writes OUTPUT_DIR
    if job.is_chief:
        os.makedirs(out_dir, exist_ok=True)
    if logger is None:
        logger = setup_logger(out_dir, "train") if job.is_chief else setup_logger(None, f"train.rank{job.rank}")
    dataset = dataset if dataset is not None else load_train_set(cfg)
    # a set in which no box survived loading trains on background at loss 0: refused unless asked for
    dataset.require_boxes(f"{cfg.get('CONFIG_FILE') or '<config>'}: DATASET.TRAIN",
                          allow_background_only=cfg.DATASET.ALLOW_BACKGROUND_ONLY)
    samples = TrainSamples(dataset, cfg, num_neighbors=2 if cfg.NETWORK.AGGREGATE else 0)
    logger.info("training %s on %d key frames of %s (%d classes: %s)", cfg.NAME, len(samples),
                dataset.name, dataset.num_classes, dataset.classes)
    if run is None and job.is_chief:
        RunFolder(out_dir).write(family_name(cfg), dataset.classes, cfg)
    seed_everything(cfg.TRAIN.SEED, 0)  # the initial weights are a function of the seed (exact resume)
    model = build_model(cfg, dataset.num_classes, contexts, logger)
    if cfg.NETWORK.INIT_WEIGHTS:
        load_init_weights(model, cfg, logger)
    if model.aggregate and cfg.NETWORK.FLOW == "dis":
        # the aggregation warps with DIS flow: the FlowNet is neither pre-trained nor trained
        model.flownet.collect_params().setattr("grad_req", "null")
        logger.info("NETWORK.FLOW dis: the window warps with OpenCV DIS flow (TEST.DIS_PRESET %s); FlowNet unused",
                    cfg.TEST.DIS_PRESET)
    elif model.aggregate and cfg.NETWORK.FLOW_WEIGHTS:
        path = project_path(cfg.NETWORK.FLOW_WEIGHTS)
        if not os.path.isfile(path):
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: NETWORK.FLOW_WEIGHTS: {path} not found")
        model.flownet.load_parameters(path, ctx=contexts)
        logger.info("FlowNet weights loaded from %s", path)
    elif model.aggregate and cfg.TRAIN.FLOW_PRETRAIN.ITERS > 0 and not (
            cfg.TRAIN.RESUME and CheckpointManager(out_dir).latest()):
        # (a resumed run loads its FlowNet from the checkpoint)
        if job.distributed and not pretrained_flownet_reusable(cfg, dataset, out_dir):
            # its own Trainer would take the job's kvstore keys again (gluon numbers every Trainer's
            # parameters from 0): ps-lite would wait forever for the re-initialised keys
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: TRAIN.FLOW_PRETRAIN runs in one process, "
                              f"not in a distributed job: pre-train the FlowNet without the launcher first (it is "
                              f"kept in OUTPUT_DIR and reused), set NETWORK.FLOW_WEIGHTS, or TRAIN.FLOW_PRETRAIN.ITERS: 0")
        pretrain_flownet(model, cfg, dataset, out_dir, contexts, logger, progress=cfg.TRAIN.PROGRESS)
    if cfg.TRAIN.HYBRIDIZE:
        blocks = [model.features, model.rpn, model.rfcn]
        if model.aggregate:
            blocks += [model.embed] + ([model.flownet] if cfg.NETWORK.FLOW != "dis" else [])
        for block in blocks:
            block.hybridize()
    train_cfg = cfg.TRAIN
    if train_cfg.WINDOW_ONLY:
        train_cfg = copy.deepcopy(train_cfg)
        train_cfg.TRAINABLE_PATTERNS = window_parameters(cfg)
        logger.info("TRAIN.WINDOW_ONLY: the detector stays fixed; training %s", ", ".join(train_cfg.TRAINABLE_PATTERNS))
    summary = fit(FGFATask(model, contexts), make_batches(samples, cfg.TRAIN.BATCH_SIZE, logger, cfg.TRAIN.MAX_BATCHES),
                  train_cfg, out_dir, ctx=contexts, val_fn=val_fn, resume=cfg.TRAIN.RESUME, logger=logger)
    summary["model"] = model
    summary["classes"] = dataset.classes
    return summary
