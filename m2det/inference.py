"""Running a trained M2Det: a run folder's model, detection on images of any size (one or several
input sizes, optionally mirrored too: TEST.SIZES / TEST.FLIP), evaluation of the detections.

Hard NMS runs inside the hybridized inference graph (MKLDNN on CPU); soft-NMS ('linear' / 'gaussian')
runs lib.nms on the raw outputs.
"""
import copy
import math
import os

import mxnet as mx
import numpy as np
import tqdm

from lib.config import ConfigError, size_hw
from lib.dataset.io import read_image
from lib.eval import coco_ap, voc_ap
from lib.nms import batched_nms, vote_merge
from lib.runtime import hybridize_for_inference
from lib.train.checkpoint import CheckpointError, load_weights, params_path
from lib.train.run import RunFolder, RunFolderError

from .config import OFFICIAL_PRIORS
from .config import load as load_config
from .data import normalize
from .detector import M2Det, M2DetInference, build_model, first_context, postprocess


def resolve_checkpoint(path):
    """A run folder, a checkpoint JSON or a .params file -> (run folder, params path)."""
    try:
        params = params_path(path)
    except CheckpointError as err:
        raise FileNotFoundError(str(err)) from None
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.abspath(folder), params


def load_trained_model(path, ctx=None, overrides=None):
    """Rebuild the training network of a run and load its weights -> (net, cfg, classes)."""
    folder, params = resolve_checkpoint(path)
    try:
        run = RunFolder.read(folder, family="m2det")
    except RunFolderError as err:
        raise FileNotFoundError(f"{err}: {folder} is not an m2det-train run folder") from None
    cfg = load_config(run.config_path, overrides)
    net = build_model(cfg, len(run.classes), ctx, pretrained_weights=False)   # the checkpoint holds them
    load_weights(net, params, ctx=first_context(ctx))
    return net, cfg, run.classes


class Detector:
    """Runs a trained M2Det on images of any size -> detections in image pixels.

    Hard NMS runs inside the hybridized inference graph (MKLDNN on CPU); soft-NMS ('linear' /
    'gaussian') runs lib.nms on the raw outputs.
    """

    def __init__(self, net, cfg, ctx=None, nms=None, hybridize=True):
        self.net, self.cfg, self.ctx = net, cfg, first_context(ctx)
        self.method = nms or cfg.TEST.NMS_METHOD
        self.input_hw = net.input_hw
        if self.method == "hard":
            self.block = M2DetInference(net, cfg.TEST)
            self.block.priors.initialize(ctx=self.ctx)
        else:
            self.block = net
        if hybridize:
            hybridize_for_inference(self.block, self.ctx)

    def detect_normalized(self, batch):
        """(N,3,H,W) normalised -> list of (boxes (K,4) in input pixels, scores, labels)."""
        x = mx.nd.array(batch, ctx=self.ctx)
        results = []
        if self.method == "hard":
            ids, scores, boxes = (o.asnumpy() for o in self.block(x))
            for i in range(len(batch)):
                valid = ids[i, :, 0] >= 0
                results.append((boxes[i][valid], scores[i, valid, 0], ids[i, valid, 0].astype(np.int64)))
        else:
            cls_logits, box_deltas = (o.asnumpy() for o in self.block(x))
            for i in range(len(batch)):
                results.append(postprocess(cls_logits[i], box_deltas[i], self.net.priors, self.input_hw,
                                           self.cfg.TEST, self.net.variances, method=self.method))
        return results

    def detect(self, images_rgb):
        """List of RGB uint8 images -> list of (boxes in image pixels, scores, labels)."""
        batch = np.stack([normalize(im, self.input_hw, self.cfg.INPUT.MEAN, self.cfg.INPUT.STD)
                          for im in images_rgb])
        out = []
        for image, (boxes, scores, labels) in zip(images_rgb, self.detect_normalized(batch)):
            h, w = image.shape[:2]
            scale = np.array([w / self.input_hw[1], h / self.input_hw[0]] * 2, np.float32)
            out.append((np.asarray(boxes, np.float32) * scale, np.asarray(scores, np.float32), labels))
        return out

def model_at_size(net, cfg, size, ctx=None, prior_sizes="trained"):
    """The same weights at another input size S or [H, W] (multi-scale testing): every parameter of
    M2Det is independent of the input size; only the static resize sizes and the priors change.

    ``prior_sizes`` 'input': the priors cover the same share of the image at every size (the size
    pattern is a fraction of the input side; official step patterns for 320/512/800). 'trained': they
    keep the pixel sizes of the trained INPUT.SIZE, so each pyramid level is asked for objects of the
    pixel size it learned (an image pyramid: a larger input brings small objects up to the trained sizes).
    """
    if prior_sizes not in ("input", "trained"):
        raise ConfigError(f"TEST.PRIOR_SIZES must be 'input' or 'trained', got {prior_sizes!r}")
    cfg = copy.deepcopy(cfg)
    height, width = size_hw(size, "input size")
    cfg.INPUT.SIZE = height if height == width else [height, width]
    cfg.MODEL.PRIORS.STEPS = []
    if prior_sizes == "trained":
        ratio = math.sqrt(net.input_hw[0] * net.input_hw[1] / (height * width))
        cfg.MODEL.PRIORS.SIZE_PATTERN = [v * ratio for v in cfg.MODEL.PRIORS.SIZE_PATTERN]
    elif height == width and height in OFFICIAL_PRIORS and len(cfg.MODEL.PRIORS.SIZE_PATTERN) == 7 \
            and int(cfg.MODEL.NUM_SCALES) == 6:
        cfg.MODEL.PRIORS.STEPS = list(OFFICIAL_PRIORS[height][0])
    try:
        other = M2Det(cfg.MODEL, net.num_classes, cfg.INPUT.SIZE)
    except ValueError as err:       # a size without a valid pyramid for this backbone
        raise ConfigError(f"TEST.SIZES entry {cfg.INPUT.SIZE}: {err}") from None
    other.initialize(ctx=first_context(ctx))
    other(mx.nd.zeros((1, 3, height, width), ctx=first_context(ctx)))
    for (name, src), (_, dst) in zip(sorted(net._collect_params_with_prefix().items()),
                                     sorted(other._collect_params_with_prefix().items())):
        dst.set_data(src.data())
    return other, cfg


def mirror_boxes(boxes, width):
    """Boxes found on a horizontally mirrored image -> boxes of the original image of ``width`` px."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


class MultiScaleDetector:
    """Test-time augmentation: runs the model at several input sizes (and on the mirrored image with
    ``flip``) and merges the passes (TEST.MERGE): 'nms', class-aware hard NMS of their union
    (lib.nms.batched_nms), or 'vote' (lib.nms.vote_merge: scores averaged over the passes), keeping
    TEST.MAX_PER_CLASS per class and TEST.MAX_PER_IMAGE in all."""

    def __init__(self, net, cfg, sizes, ctx=None, nms=None, hybridize=True, flip=False, prior_sizes="trained"):
        self.cfg, self.flip = cfg, bool(flip)
        self.detectors = []
        for size in sizes or [net.input_hw]:
            same = size_hw(size, "input size") == net.input_hw
            scaled, scaled_cfg = (net, cfg) if same else model_at_size(net, cfg, size, ctx, prior_sizes)
            self.detectors.append(Detector(scaled, scaled_cfg, ctx, nms=nms, hybridize=hybridize))

    def detect(self, images_rgb):
        per_pass = [d.detect(images_rgb) for d in self.detectors]
        if self.flip:
            mirrored = [np.ascontiguousarray(im[:, ::-1]) for im in images_rgb]
            for d in self.detectors:
                per_pass.append([(mirror_boxes(boxes, im.shape[1]), scores, labels)
                                 for im, (boxes, scores, labels) in zip(images_rgb, d.detect(mirrored))])
        test = self.cfg.TEST
        merged = []
        for i in range(len(images_rgb)):
            boxes = np.concatenate([p[i][0] for p in per_pass]).reshape(-1, 4)
            scores = np.concatenate([p[i][1] for p in per_pass])
            labels = np.concatenate([p[i][2] for p in per_pass]).astype(np.int64)
            if test.MERGE == "vote":
                pass_ids = np.concatenate([np.full(len(p[i][1]), k) for k, p in enumerate(per_pass)])
                boxes, scores, labels = vote_merge(boxes, scores, labels, pass_ids, len(per_pass),
                                                   float(test.NMS_IOU), int(test.MAX_PER_CLASS))
                keep = np.arange(min(len(scores), int(test.MAX_PER_IMAGE)))
            else:
                keep = batched_nms(boxes, scores, labels, float(test.NMS_IOU), max_output=int(test.MAX_PER_CLASS))
                keep = keep[:int(test.MAX_PER_IMAGE)]
            merged.append((boxes[keep].astype(np.float32), scores[keep].astype(np.float32), labels[keep]))
        return merged


def build_detector(net, cfg, ctx=None, nms=None, hybridize=True):
    """The detector a config asks for: TEST.SIZES / TEST.FLIP (test-time augmentation) give a
    MultiScaleDetector, otherwise the single-pass Detector at INPUT.SIZE."""
    if cfg.TEST.MERGE not in ("nms", "vote"):
        raise ConfigError(f"TEST.MERGE must be 'nms' or 'vote', got {cfg.TEST.MERGE!r}")
    sizes, flip = list(cfg.TEST.SIZES or []), bool(cfg.TEST.FLIP)
    hws = [size_hw(size, f"TEST.SIZES[{i}]") for i, size in enumerate(sizes)]   # ConfigError naming the entry
    if not flip and all(hw == net.input_hw for hw in hws):
        return Detector(net, cfg, ctx, nms=nms, hybridize=hybridize)
    return MultiScaleDetector(net, cfg, sizes, ctx, nms=nms, hybridize=hybridize, flip=flip,
                              prior_sizes=cfg.TEST.PRIOR_SIZES)


def detect_dataset(detector, dataset, batch_size=4, progress=False):
    """Detections for every record, aligned with ``dataset.records``."""
    results = []
    records = dataset.records
    iterator = range(0, len(records), batch_size)
    if progress:
        iterator = tqdm.tqdm(iterator, desc="detect", leave=False)
    for start in iterator:
        chunk = records[start:start + batch_size]
        results.extend(detector.detect([read_image(r.image) for r in chunk]))
    return results

def filter_detections(detections, score_threshold=0.0, max_detections=None):
    out = []
    for boxes, scores, labels in detections:
        keep = np.flatnonzero(scores >= score_threshold)
        if max_detections:
            keep = keep[np.argsort(-scores[keep], kind="stable")[:max_detections]]
        out.append((boxes[keep], scores[keep], labels[keep]))
    return out

def evaluate_detections(dataset, detections, iou=0.5, coco=True):
    """VOC-style AP per class at ``iou`` (lib.eval.voc_ap) and, if asked, COCO AP via pycocotools.

    ``result["voc"]["weighted_mAP"]``: the APs averaged with the number of instances as weights
    (keras-retinanet's --weighted-average)."""
    result = {"voc": voc_ap(dataset.records, detections, dataset.classes, iou=iou)}
    pairs = [(v["ap"], v["num_gt"]) for v in result["voc"]["per_class"].values() if v["ap"] is not None]
    total = sum(n for _, n in pairs)
    result["voc"]["weighted_mAP"] = sum(ap * n for ap, n in pairs) / total if total else None
    if coco:
        result["coco"] = coco_ap(dataset.records, detections, dataset.classes)
    return result


def per_class_values(result, classes):
    per_class = result.get("per_class", {})
    if isinstance(per_class, dict):
        return [per_class.get(c) if not isinstance(per_class.get(c), dict) else per_class[c].get("ap")
                for c in classes]
    return list(per_class)
