"""M2Det training through lib.train.fit: the model, the loss task, the run.

``run_training(cfg, train_set, val_set)`` writes the run folder (lib.train.run), builds the network
(backbone weights from PRETRAINED), and trains with checkpoints, TensorBoard, the log file
and, with TRAIN.EVALUATE, the validation mAP every EVAL_EVERY epochs.
"""
import json
import logging
import os

import mxnet as mx
from mxnet import gluon

from lib.config import ConfigError, project_path
from lib.losses import MultiBoxLoss
from lib.dataset import DatasetError
from lib.train import fit, seed_everything, training_config
from lib.train.checkpoint import load_weights, params_path
from lib.train.distributed import config_contexts, join_job
from lib.train.run import RUN_FILE, RunFolder, RunFolderError

from .data import train_batches
from .detector import build_model
from .inference import Detector, detect_dataset, evaluate_detections, per_class_values

logger = logging.getLogger("m2det")


class M2DetTask:
    """lib.train task: ``net`` and ``loss(batch)`` (multibox loss with hard negative mining / focal).

    With several contexts the batch is split across them (data parallel); each device's loss is
    rescaled from its own positives to the positives of the whole batch, so the summed gradient is
    the single-device one (up to BatchNorm, whose batch statistics stay per device). In a distributed
    job the positives are counted over every worker (lib.train.distributed's allreduce_sum), so the
    job's summed gradient is that of one process with the whole job's batch
    (``global_normalization``).
    """

    global_normalization = True

    def __init__(self, net, cfg, ctx=None):
        self.net = net
        self.dist = None
        self.ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]
        if cfg.LOSS.TYPE not in ("softmax", "focal"):
            raise ConfigError(f"LOSS.TYPE must be 'softmax' or 'focal', got {cfg.LOSS.TYPE!r}")
        self.loss_fn = MultiBoxLoss(cls_loss=cfg.LOSS.TYPE, negative_ratio=float(cfg.LOSS.NEGATIVE_RATIO),
                                    loc_weight=float(cfg.LOSS.LOC_WEIGHT),
                                    focal_alpha=float(cfg.LOSS.FOCAL_ALPHA),
                                    focal_gamma=float(cfg.LOSS.FOCAL_GAMMA))

    def set_distributed(self, dist):
        self.dist = dist

    def loss(self, batch):
        distributed = self.dist is not None and self.dist.distributed
        if len(self.ctx) == 1 and not distributed:
            images, cls_t, box_t = (b.as_in_context(self.ctx[0]) for b in batch)
            cls_pred, box_pred = self.net(images)
            total, cls_loss, box_loss = self.loss_fn(cls_pred, box_pred, cls_t, box_t)
            return total, {"cls_loss": cls_loss.asscalar(), "box_loss": box_loss.asscalar()}
        splits = [gluon.utils.split_and_load(b, self.ctx, even_split=False) for b in batch]
        total_pos = float((batch[1] > 0).sum().asscalar())
        if distributed:
            total_pos = float(self.dist.allreduce_sum("m2det_positives", [total_pos])[0])
        total_pos = max(1.0, total_pos)
        losses, parts = [], {"cls_loss": 0.0, "box_loss": 0.0}
        for images, cls_t, box_t in zip(*splits):
            cls_pred, box_pred = self.net(images)
            _, cls_loss, box_loss = self.loss_fn(cls_pred, box_pred, cls_t, box_t)
            scale = max(1.0, float((cls_t > 0).sum().asscalar())) / total_pos
            losses.append((cls_loss + box_loss) * scale)
            parts["cls_loss"] += float(cls_loss.asscalar()) * scale
            parts["box_loss"] += float(box_loss.asscalar()) * scale
        return losses, parts


def snapshot_params(snapshot):
    """The .params of ``snapshot`` (m2det-train --snapshot): an m2det run folder (its newest checkpoint),
    a checkpoint JSON in one, or a .params file. Another family's run folder is a RunFolderError
    naming that family; a missing file or checkpoint a CheckpointError naming it."""
    folder = snapshot if os.path.isdir(snapshot) else os.path.dirname(os.path.abspath(snapshot))
    if os.path.isdir(snapshot) or os.path.isfile(os.path.join(folder, RUN_FILE)):
        try:
            RunFolder.read(folder, family="m2det")
        except RunFolderError as err:
            raise RunFolderError(f"--snapshot {snapshot}: {err}") from None
    return params_path(snapshot)


def run_training(cfg, train_set, val_set=None, snapshot=None, tensorboard_dir=None, run=None):
    """Train on ``train_set`` (DetectionDataset) with lib.train.fit; returns fit's summary. ``run``: the
    RunFolder already written by a caller (the recipe); else OUTPUT_DIR's record is written here (by
    rank 0 alone in a distributed job, TRAIN.KVSTORE dist_sync). A training set without any box is
    refused unless DATASET.ALLOW_BACKGROUND_ONLY."""
    source = cfg.get("CONFIG_FILE") or "<config>"
    if train_set is None or len(train_set) == 0:
        raise DatasetError(f"{source}: DATASET.TRAIN: the training set has no image")
    train_set.require_boxes(f"{source}: DATASET.TRAIN", allow_background_only=cfg.DATASET.ALLOW_BACKGROUND_ONLY)
    out_dir = project_path(cfg.OUTPUT_DIR)
    train_cfg = dict(cfg.TRAIN)
    train_cfg["FREEZE_PATTERNS"] = list(cfg.TRAIN.FREEZE_PATTERNS) + (
        [r"^backbone\."] if cfg.TRAIN.FREEZE_BACKBONE else [])
    train_cfg["CONFIG_FILE"] = cfg.CONFIG_FILE
    training_config(train_cfg)        # the loop's keys checked before anything is written
    ctx = config_contexts(cfg)
    job = join_job(cfg.TRAIN.KVSTORE, ctx)
    classes = train_set.classes
    if val_set is not None and list(val_set.classes) != list(classes):
        raise DatasetError(f"validation classes {val_set.classes} differ from training classes {classes}")
    snapshot = snapshot_params(snapshot) if snapshot else None   # checked before anything is written
    if run is None and job.is_chief:
        RunFolder(out_dir).write("m2det", classes, cfg)
    seed_everything(cfg.TRAIN.SEED, 0)  # the initial weights are a function of the seed (exact resume)
    net = build_model(cfg, len(classes), ctx)
    if snapshot:
        load_weights(net, snapshot, ctx=ctx)   # a .params of another network: CheckpointError naming it
        logger.info("initialised from %s", snapshot)
    task = M2DetTask(net, cfg, ctx)
    batches = train_batches(train_set, cfg, net.priors)
    val_fn = None
    if cfg.TRAIN.EVALUATE and val_set is not None and len(val_set):
        def val_fn(_net, epoch):
            detector = Detector(net, cfg, ctx[0], hybridize=False)
            detections = detect_dataset(detector, val_set, batch_size=int(cfg.TRAIN.BATCH_SIZE))
            result = evaluate_detections(val_set, detections, coco=False)["voc"]
            metrics = {"mAP": float(result["mAP"])}
            for name, ap in zip(val_set.classes, per_class_values(result, val_set.classes)):
                if ap is not None:
                    metrics[f"AP/{name}"] = float(ap)
            return metrics
    if tensorboard_dir and job.is_chief:
        os.makedirs(os.path.join(out_dir, "tb"), exist_ok=True)
        if not os.path.exists(tensorboard_dir):
            os.makedirs(os.path.dirname(os.path.abspath(tensorboard_dir)), exist_ok=True)
            os.symlink(os.path.join(out_dir, "tb"), tensorboard_dir)
    summary = fit(task, batches, train_cfg, out_dir, ctx=ctx, val_fn=val_fn)
    print(json.dumps({k: v for k, v in summary.items() if k != "final_losses"}, default=str))
    return summary
