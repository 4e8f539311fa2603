"""Everything the toolkit commands share: config, model building and loading, the training task and
data, detection on images, evaluation and export of the inference model.

A training run folder (``--snapshot-path`` / OUTPUT_DIR) holds ``m2det_config.yaml`` (the resolved
config), ``classes.json`` and lib.train checkpoints (``ckpt-NNNN.{json,params,states}``). Any of these
three identifies a model for m2det-evaluate / m2det-convert-model: the folder (latest checkpoint) or
a checkpoint JSON / params file.
"""
import glob
import json
import logging
import os

import cv2
import mxnet as mx
import numpy as np
from mxnet import gluon

from lib.config import ConfigError, dump_config, load_config, read_yaml, merge
from lib.dataset.io import read_image
from lib.matching import ssd_targets

from .config import DEFAULTS, OPEN_KEYS
from .detector import M2Det, M2DetInference, postprocess

logger = logging.getLogger("m2det")

CONFIG_NAME = "m2det_config.yaml"
CLASSES_NAME = "classes.json"


# ----------------------------------------------------------------------------------------------
# config and model

def build_config(path=None, overrides=None):
    """DEFAULTS <- yaml ``path`` <- ``overrides`` ("A.B=value" strings) with strict key checks."""
    return load_config(path, DEFAULTS, overrides=overrides, open_keys=OPEN_KEYS)


def get_context(cfg):
    """CONTEXT 'cpu', 'gpu:1' or a comma-separated list ('gpu:0,gpu:1') -> list of mx.Context."""
    from lib.runtime import get_context as _ctx
    specs = [part.strip() for part in str(cfg.CONTEXT).split(",") if part.strip()]
    if not specs:
        raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: CONTEXT is empty")
    return [_ctx(spec) for spec in specs]


def _first(ctx):
    if ctx is None:
        return mx.cpu()
    return ctx[0] if isinstance(ctx, (list, tuple)) else ctx


def build_model(cfg, num_classes, ctx=None):
    """An initialised M2Det training network for ``num_classes`` foreground classes
    (``ctx``: one context or a list, for data-parallel training)."""
    net = M2Det(cfg.MODEL, num_classes)
    net.initialize_weights(ctx=ctx or mx.cpu())
    # One forward pass completes deferred shapes so that checkpoints can be loaded right away.
    size = net.input_size
    net(mx.nd.zeros((1, 3, size, size), ctx=_first(ctx)))
    return net


def save_run_metadata(out_dir, cfg, classes):
    os.makedirs(out_dir, exist_ok=True)
    dump_config(cfg, os.path.join(out_dir, CONFIG_NAME))
    with open(os.path.join(out_dir, CLASSES_NAME), "w", encoding="utf-8") as f:
        json.dump(list(classes), f)


def resolve_checkpoint(path):
    """A run folder, a checkpoint JSON or a .params file -> (run folder, params path)."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "ckpt-*.json")))
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoint (ckpt-*.json) in this folder")
        path = found[-1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model not found: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if path.endswith(".json"):
        with open(path, "r", encoding="utf-8") as f:
            record = json.load(f)
        if "params" not in record:
            raise ValueError(f"{path}: not a training checkpoint (no 'params' key)")
        params = os.path.join(folder, record["params"])
    elif path.endswith(".params"):
        params = path
    else:
        raise ValueError(f"{path}: expected a run folder, a ckpt-*.json or a .params file")
    return folder, params


def load_trained_model(path, ctx=None, overrides=None):
    """Rebuild the training network of a run and load its weights -> (net, cfg, classes)."""
    folder, params = resolve_checkpoint(path)
    cfg_path, classes_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, CLASSES_NAME)
    for needed in (cfg_path, classes_path):
        if not os.path.isfile(needed):
            raise FileNotFoundError(f"{needed} missing: {folder} is not an m2det-train run folder")
    saved = read_yaml(cfg_path)
    saved.pop("CONFIG_FILE", None)
    cfg = load_config(None, merge(DEFAULTS, saved, source=cfg_path, open_keys=OPEN_KEYS),
                      overrides=overrides, open_keys=OPEN_KEYS)
    with open(classes_path, "r", encoding="utf-8") as f:
        classes = json.load(f)
    cfg.MODEL.BACKBONE_WEIGHTS = ""  # the checkpoint holds them
    net = build_model(cfg, len(classes), ctx)
    net.load_parameters(params, ctx=ctx or mx.cpu())
    return net, cfg, classes


# ----------------------------------------------------------------------------------------------
# pre-processing and data

def normalize(image_rgb, size, mean, std):
    """RGB uint8 HxWx3 -> normalised float32 (3,S,S): bilinear square resize, (x - mean) / std.

    The same steps as lib.tools.infer applies to exported models.
    """
    resized = cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    out = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def build_augmentation(cfg, rng=None):
    """lib.transforms pipeline of TRAIN.AUGMENTATIONS (default: the official SSD augmentation,
    photometric, expand, crop, flip); an Expand without its own max_ratio / fill takes
    TRAIN.EXPAND_MAX_RATIO and INPUT.MEAN. ``rng``: a np.random.RandomState (default: numpy's global
    generator)."""
    from lib.transforms import build_transforms
    specs = []
    for spec in cfg.TRAIN.AUGMENTATIONS:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        if str(spec.get("name", spec.get("type", ""))).lower() == "expand":
            spec.setdefault("max_ratio", float(cfg.TRAIN.EXPAND_MAX_RATIO))
            spec.setdefault("fill", list(cfg.INPUT.MEAN))
        specs.append(spec)
    source = f"{cfg.get('CONFIG_FILE') or 'm2det config'}: TRAIN.AUGMENTATIONS"
    return build_transforms(specs, rng=rng, source=source)


class TrainSample:
    """Record -> (image (3,S,S) float32, class targets (P,) int32, box targets (P,4) float32)."""

    def __init__(self, cfg, priors, augment=None):
        self.size = int(cfg.MODEL.INPUT_SIZE)
        self.mean, self.std = cfg.INPUT.MEAN, cfg.INPUT.STD
        self.priors = priors
        self.pos_iou = float(cfg.LOSS.POS_IOU)
        self.variances = tuple(cfg.MODEL.PRIORS.VARIANCES)
        self.augment = augment

    def load(self, record, augment=None):
        """Image and boxes (with labels as a 5th column) after augmentation (``augment``, else the
        sample's own), before resizing."""
        image = read_image(record.image)
        boxes = np.concatenate([record.boxes, record.labels[:, None].astype(np.float32)], axis=1)
        augment = self.augment if augment is None else augment
        if augment is not None:
            frames, box_lists = augment([image], [boxes])
            image, boxes = frames[0], np.asarray(box_lists[0], np.float32).reshape(-1, boxes.shape[1])
        return image, boxes

    def __call__(self, record, augment=None):
        image, boxes = self.load(record, augment)
        h, w = image.shape[:2]
        data = normalize(image, self.size, self.mean, self.std)
        gt = boxes[:, :4] / np.array([w, h, w, h], np.float32)
        labels = boxes[:, 4].astype(np.int64)
        cls_t, box_t = ssd_targets(gt, labels, self.priors, pos_iou=self.pos_iou, stds=self.variances)
        return data, np.asarray(cls_t, np.float32), np.asarray(box_t, np.float32)


class _RecordDataset(gluon.data.Dataset):
    """Training samples; with augmentation, each (epoch, index) gets its own RandomState so that
    loader threads do not share a generator and a resumed run augments identically."""

    def __init__(self, records, sample, cfg=None):
        self.records, self.sample, self.cfg = list(records), sample, cfg
        self.epoch_seed = 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        augment = None
        if self.cfg is not None:
            # a pipeline per call (not stored on the shared sample): loader threads run concurrently
            rng = np.random.RandomState((self.epoch_seed * 1_000_003 + idx) % (2 ** 31 - 1))
            augment = build_augmentation(self.cfg, rng=rng)
        return self.sample(self.records[idx], augment)


def train_batches(dataset, cfg, priors):
    """``epoch -> DataLoader`` for lib.train.fit (shuffling is seeded by fit per epoch)."""
    sample = TrainSample(cfg, priors)
    data = _RecordDataset(dataset.records, sample, cfg if cfg.TRAIN.RANDOM_TRANSFORM else None)
    batch_size = min(int(cfg.TRAIN.BATCH_SIZE), len(data))
    if batch_size < 1:
        raise ValueError("the training set is empty")
    cap = int(cfg.TRAIN.MAX_ITERS_PER_EPOCH)

    def batches(epoch):
        # lib.train.fit reseeds numpy from (SEED, epoch) before this call.
        data.epoch_seed = int(np.random.randint(0, 2 ** 31 - 1))
        # Worker threads, not processes: each epoch's new process pool forks the training process,
        # and every fork left it ~1.7 GB larger (speedtrap M2Det, also at 2 batches per epoch) until
        # the OOM killer ended the run. The sample work (cv2, numpy) releases the GIL.
        loader = gluon.data.DataLoader(data, batch_size=batch_size, shuffle=True, last_batch="rollover",
                                       num_workers=int(cfg.TRAIN.WORKERS), thread_pool=True)
        if cap <= 0:
            return loader
        return _Capped(loader, cap)

    return batches


class _Capped:
    def __init__(self, loader, cap):
        self.loader, self.cap = loader, cap

    def __len__(self):
        return min(len(self.loader), self.cap)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.cap:
                break
            yield batch


class M2DetTask:
    """lib.train task: ``net`` and ``loss(batch)`` (multibox loss with hard negative mining / focal).

    With several contexts the batch is split across them (data parallel); each device's loss is
    rescaled from its own positives to the positives of the whole batch, so the summed gradient is
    the single-device one (up to BatchNorm, whose batch statistics stay per device).
    """

    def __init__(self, net, cfg, ctx=None):
        from lib.losses import MultiBoxLoss
        self.net = net
        self.ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]
        if cfg.LOSS.TYPE not in ("softmax", "focal"):
            raise ConfigError(f"LOSS.TYPE must be 'softmax' or 'focal', got {cfg.LOSS.TYPE!r}")
        self.loss_fn = MultiBoxLoss(cls_loss=cfg.LOSS.TYPE, negative_ratio=float(cfg.LOSS.NEGATIVE_RATIO),
                                    loc_weight=float(cfg.LOSS.LOC_WEIGHT),
                                    focal_alpha=float(cfg.LOSS.FOCAL_ALPHA),
                                    focal_gamma=float(cfg.LOSS.FOCAL_GAMMA))

    def loss(self, batch):
        if len(self.ctx) == 1:
            images, cls_t, box_t = (b.as_in_context(self.ctx[0]) for b in batch)
            cls_pred, box_pred = self.net(images)
            total, cls_loss, box_loss = self.loss_fn(cls_pred, box_pred, cls_t, box_t)
            return total, {"cls_loss": cls_loss.asscalar(), "box_loss": box_loss.asscalar()}
        splits = [gluon.utils.split_and_load(b, self.ctx, even_split=False) for b in batch]
        total_pos = max(1.0, float((batch[1] > 0).sum().asscalar()))
        losses, parts = [], {"cls_loss": 0.0, "box_loss": 0.0}
        for images, cls_t, box_t in zip(*splits):
            cls_pred, box_pred = self.net(images)
            _, cls_loss, box_loss = self.loss_fn(cls_pred, box_pred, cls_t, box_t)
            scale = max(1.0, float((cls_t > 0).sum().asscalar())) / total_pos
            losses.append((cls_loss + box_loss) * scale)
            parts["cls_loss"] += float(cls_loss.asscalar()) * scale
            parts["box_loss"] += float(box_loss.asscalar()) * scale
        return losses, parts


# ----------------------------------------------------------------------------------------------
# detection

class Detector:
    """Runs a trained M2Det on images of any size -> detections in image pixels.

    Hard NMS runs inside the hybridized inference graph (MKLDNN on CPU); soft-NMS ('linear' /
    'gaussian') runs lib.nms on the raw outputs.
    """

    def __init__(self, net, cfg, ctx=None, nms=None, hybridize=True):
        from lib.runtime import hybridize_for_inference
        self.net, self.cfg, self.ctx = net, cfg, _first(ctx)
        self.method = nms or cfg.TEST.NMS
        self.size = net.input_size
        if self.method == "hard":
            self.block = M2DetInference(net, cfg.TEST)
            self.block.priors.initialize(ctx=self.ctx)
        else:
            self.block = net
        if hybridize:
            hybridize_for_inference(self.block, self.ctx)

    def detect_normalized(self, batch):
        """(N,3,S,S) normalised -> list of (boxes (K,4) in input pixels, scores, labels)."""
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
                results.append(postprocess(cls_logits[i], box_deltas[i], self.net.priors, self.size,
                                           self.cfg.TEST, self.net.variances, method=self.method))
        return results

    def detect(self, images_rgb):
        """List of RGB uint8 images -> list of (boxes in image pixels, scores, labels)."""
        batch = np.stack([normalize(im, self.size, self.cfg.INPUT.MEAN, self.cfg.INPUT.STD)
                          for im in images_rgb])
        out = []
        for image, (boxes, scores, labels) in zip(images_rgb, self.detect_normalized(batch)):
            h, w = image.shape[:2]
            scale = np.array([w / self.size, h / self.size] * 2, np.float32)
            out.append((np.asarray(boxes, np.float32) * scale, np.asarray(scores, np.float32), labels))
        return out


def model_at_size(net, cfg, size, ctx=None):
    """The same weights at another input size (multi-scale testing): every parameter of M2Det is
    independent of the input size; only the static resize sizes and the priors change. Official
    step patterns are used for 320/512/800, input_size / feature_size otherwise."""
    import copy
    from .config import OFFICIAL_PRIORS
    cfg = copy.deepcopy(cfg)
    cfg.MODEL.INPUT_SIZE = int(size)
    if int(size) in OFFICIAL_PRIORS and len(cfg.MODEL.PRIORS.SIZE_PATTERN) == 7 \
            and int(cfg.MODEL.NUM_SCALES) == 6:
        cfg.MODEL.PRIORS.STEPS = list(OFFICIAL_PRIORS[int(size)][0])
    else:
        cfg.MODEL.PRIORS.STEPS = []
    cfg.MODEL.BACKBONE_WEIGHTS = ""
    other = M2Det(cfg.MODEL, net.num_classes)
    other.initialize(ctx=_first(ctx))
    other(mx.nd.zeros((1, 3, int(size), int(size)), ctx=_first(ctx)))
    for (name, src), (_, dst) in zip(sorted(net._collect_params_with_prefix().items()),
                                     sorted(other._collect_params_with_prefix().items())):
        dst.set_data(src.data())
    return other, cfg


class MultiScaleDetector:
    """Runs the model at several input sizes and merges the detections with class-aware hard NMS
    (lib.nms.batched_nms), keeping TEST.MAX_PER_CLASS per class and TEST.MAX_PER_IMAGE in all."""

    def __init__(self, net, cfg, sizes, ctx=None, nms=None, hybridize=True):
        from lib.nms import batched_nms
        self._batched_nms = batched_nms
        self.cfg = cfg
        self.detectors = []
        for size in sizes:
            scaled, scaled_cfg = (net, cfg) if int(size) == net.input_size else model_at_size(net, cfg, size, ctx)
            self.detectors.append(Detector(scaled, scaled_cfg, ctx, nms=nms, hybridize=hybridize))

    def detect(self, images_rgb):
        per_scale = [d.detect(images_rgb) for d in self.detectors]
        merged = []
        for i in range(len(images_rgb)):
            boxes = np.concatenate([s[i][0] for s in per_scale]).reshape(-1, 4)
            scores = np.concatenate([s[i][1] for s in per_scale])
            labels = np.concatenate([s[i][2] for s in per_scale]).astype(np.int64)
            keep = self._batched_nms(boxes, scores, labels, float(self.cfg.TEST.NMS_IOU),
                                     max_output=int(self.cfg.TEST.MAX_PER_CLASS))
            keep = keep[:int(self.cfg.TEST.MAX_PER_IMAGE)]
            merged.append((boxes[keep], scores[keep], labels[keep]))
        return merged


def detect_dataset(detector, dataset, batch_size=4, progress=False):
    """Detections for every record, aligned with ``dataset.records``."""
    results = []
    records = dataset.records
    iterator = range(0, len(records), batch_size)
    if progress:
        import tqdm
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
    from lib.eval import voc_ap
    result = {"voc": voc_ap(dataset.records, detections, dataset.classes, iou=iou)}
    pairs = [(v["ap"], v["num_gt"]) for v in result["voc"]["per_class"].values() if v["ap"] is not None]
    total = sum(n for _, n in pairs)
    result["voc"]["weighted_mAP"] = sum(ap * n for ap, n in pairs) / total if total else None
    if coco:
        from lib.eval import coco_ap
        result["coco"] = coco_ap(dataset.records, detections, dataset.classes)
    return result


# ----------------------------------------------------------------------------------------------
# export

def export_inference_model(net, cfg, classes, out_dir, onnx=False, ctx=None):
    """Write the inference artifact (docs/DESIGN.md): model-symbol.json + model-0000.params with
    decode, clip and NMS inside, meta.json, and optionally model.onnx. Returns a dict of paths."""
    os.makedirs(out_dir, exist_ok=True)
    ctx = ctx or mx.cpu()
    block = M2DetInference(net, cfg.TEST)
    block.priors.initialize(ctx=ctx)
    block.hybridize()
    size = net.input_size
    block(mx.nd.zeros((1, 3, size, size), ctx=ctx))
    prefix = os.path.join(out_dir, "model")
    block.export(prefix, epoch=0)
    meta = {"detector": "m2det", "classes": list(classes),
            "input": {"resize": "fixed", "size": [size, size], "mean": list(cfg.INPUT.MEAN),
                      "std": list(cfg.INPUT.STD)},
            "ops_library": False, "nms": "hard", "score_threshold": float(cfg.TEST.SCORE_THRESH),
            "nms_iou": float(cfg.TEST.NMS_IOU), "max_per_class": int(cfg.TEST.MAX_PER_CLASS),
            "max_per_image": int(cfg.TEST.MAX_PER_IMAGE), "backbone": cfg.MODEL.BACKBONE}
    paths = {"symbol": prefix + "-symbol.json", "params": prefix + "-0000.params",
             "meta": os.path.join(out_dir, "meta.json")}
    if onnx:
        paths["onnx"] = export_onnx(paths["symbol"], paths["params"], size, os.path.join(out_dir, "model.onnx"))
        with open(paths["symbol"], "r", encoding="utf-8") as f:
            graph = json.load(f)
        meta["onnx_outputs"] = [graph["nodes"][h[0]]["name"] for h in graph["heads"]]
    with open(paths["meta"], "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return paths


def export_onnx(symbol_path, params_path, size, onnx_path):
    """ONNX export of the exported symbol with mx.onnx, NMS included (box_nms maps to ONNX
    NonMaxSuppression with per-class suppression identical here because each class runs its own
    box_nms). ``size``: S or (H, W) of the input ``data``.

    MXNet 1.9's exporter targets the installed onnx's newest opset but writes ``Split`` without the
    ``num_outputs`` attribute that opset >= 18 requires; the fix-up below adds it (the number of
    outputs of each such node), which is what the node meant.
    """
    import onnx
    height, width = (size, size) if np.isscalar(size) else size
    mx.onnx.export_model(symbol_path, params_path, in_shapes=[(1, 3, int(height), int(width))],
                         in_types=[np.float32], onnx_file_path=onnx_path, verbose=False)
    model = onnx.load(onnx_path)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    changed = False
    for node in model.graph.node:
        if node.op_type == "Split" and opset >= 18 and len(node.input) < 2 and \
                not any(a.name == "num_outputs" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("num_outputs", len(node.output)))
            changed = True
    if changed:
        onnx.save(model, onnx_path)
    onnx.checker.check_model(onnx_path)
    return onnx_path
