"""Training of FGFA / the R-FCN baseline through lib.train.fit.

``train(cfg)`` loads the training sets of the config, builds the model (gluoncv backbone weights when
NETWORK.PRETRAINED is set), and runs the fit loop: checkpoints every epoch (atomic, exact resume),
tqdm, tensorboardX and a log file in OUTPUT_DIR. The run folder record (lib.train.run: family, classes,
config) lets test, demo and the shared tools rebuild the same network.
"""
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
from lib.train.run import RunFolder

from .data import TrainSamples, collate
from .detector import FGFADetector
from .flow_pretrain import pretrain_flownet


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


def build_model(cfg, num_classes, ctx=None):
    """A fully initialised detector (shapes materialised by one tiny forward pass)."""
    ctx = ctx or get_context(cfg.CONTEXT)
    model = FGFADetector(cfg, num_classes)
    model.prepare_for_context(ctx)
    model.init_weights(ctx)
    materialize(model, ctx)
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


class FGFATask:
    """The object lib.train.fit trains: ``net`` and ``loss(batch)``."""

    def __init__(self, model, ctx):
        self.net = model
        self.ctx = ctx

    def loss(self, batch):
        data, im_info, boxes, labels = batch
        data = mx.nd.array(data, ctx=self.ctx)
        # np.random is reseeded by fit from (SEED, epoch): anchor/RoI sampling resumes exactly
        return self.net.train_loss(data, im_info, boxes, labels, rng=np.random)


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
        def __init__(self):
            self.order = np.random.permutation(len(samples))

        def __len__(self):
            count = (len(self.order) + batch_size - 1) // batch_size
            return min(count, max_batches) if max_batches > 0 else count

        def __iter__(self):
            for start in range(0, len(self) * batch_size, batch_size):
                chunk = self.order[start:start + batch_size]
                loaded = [s for s in (load(int(i)) for i in chunk) if s is not None]
                if loaded:
                    yield collate(loaded)

    return lambda epoch: Epoch()


def train(cfg, dataset=None, val_fn=None, logger=None, run=None):
    """Train from the config; returns lib.train.fit's summary (plus the model and classes). ``run``: the
    RunFolder already written by a caller (the recipe); else OUTPUT_DIR's record is written here."""
    out_dir = output_dir(cfg)
    os.makedirs(out_dir, exist_ok=True)
    logger = logger or setup_logger(out_dir, "train")
    ctx = get_context(cfg.CONTEXT)
    dataset = dataset if dataset is not None else load_train_set(cfg)
    samples = TrainSamples(dataset, cfg, num_neighbors=2 if cfg.NETWORK.AGGREGATE else 0)
    logger.info("training %s on %d key frames of %s (%d classes: %s)", cfg.NAME, len(samples),
                dataset.name, dataset.num_classes, dataset.classes)
    if run is None:
        RunFolder(out_dir).write(family_name(cfg), dataset.classes, cfg)
    seed_everything(cfg.TRAIN.SEED, 0)  # the initial weights are a function of the seed (exact resume)
    model = build_model(cfg, dataset.num_classes, ctx)
    if cfg.NETWORK.INIT_WEIGHTS:
        load_init_weights(model, cfg, logger)
    if model.aggregate and cfg.NETWORK.FLOW_WEIGHTS:
        path = project_path(cfg.NETWORK.FLOW_WEIGHTS)
        if not os.path.isfile(path):
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or '<config>'}: NETWORK.FLOW_WEIGHTS: {path} not found")
        model.flownet.load_parameters(path, ctx=ctx)
        logger.info("FlowNet weights loaded from %s", path)
    elif model.aggregate and cfg.TRAIN.FLOW_PRETRAIN.ITERS > 0 and not (
            cfg.TRAIN.RESUME and CheckpointManager(out_dir).latest()):
        # (a resumed run loads its FlowNet from the checkpoint)
        pretrain_flownet(model, cfg, dataset, out_dir, ctx, logger, progress=cfg.TRAIN.PROGRESS)
    if cfg.TRAIN.HYBRIDIZE:
        blocks = [model.features, model.rpn, model.rfcn]
        if model.aggregate:
            blocks += [model.embed, model.flownet]
        for block in blocks:
            block.hybridize()
    summary = fit(FGFATask(model, ctx), make_batches(samples, cfg.TRAIN.BATCH_SIZE, logger, cfg.TRAIN.MAX_BATCHES), cfg.TRAIN, out_dir,
                  ctx=ctx, val_fn=val_fn, resume=cfg.TRAIN.RESUME, logger=logger)
    summary["model"] = model
    summary["classes"] = dataset.classes
    return summary
