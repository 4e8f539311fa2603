"""M2Det training data: records -> normalised images of the input size with SSD targets for its priors.

``train_batches(dataset, cfg, priors)`` gives lib.train.fit its ``epoch -> batches``; the augmentation
(TRAIN.AUGMENTATIONS, when TRAIN.AUGMENT) draws from a RandomState per (epoch, sample), so loader threads
do not share a generator and a resumed run augments identically.
"""
import cv2
import numpy as np
from mxnet import gluon

from lib.config import size_hw
from lib.dataset.io import DatasetError, read_image
from lib.matching import ssd_targets
from lib.train.distributed import deal_batches
from lib.transforms import build_transforms


def normalize(image_rgb, input_hw, mean, std):
    """RGB uint8 HxWx3 -> normalised float32 (3,h,w): bilinear resize to the network input ``input_hw``
    (h, w; the image's aspect ratio is not kept), (x - mean) / std.

    The same steps as lib.tools.infer applies to exported models.
    """
    height, width = input_hw
    resized = cv2.resize(image_rgb, (int(width), int(height)), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    out = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))

def build_augmentation(cfg, rng=None):
    """lib.transforms pipeline of TRAIN.AUGMENTATIONS (default: the official SSD augmentation,
    photometric, expand, crop, flip); an Expand without its own max_ratio / fill takes
    TRAIN.EXPAND_MAX_RATIO and INPUT.MEAN. ``rng``: a np.random.RandomState (default: numpy's global
    generator)."""
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
    """Record -> (image (3,H,W) float32, class targets (P,) int32, box targets (P,4) float32)."""

    def __init__(self, cfg, priors, augment=None):
        self.input_hw = size_hw(cfg.INPUT.SIZE, "INPUT.SIZE")
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
        data = normalize(image, self.input_hw, self.mean, self.std)
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
    """``epoch -> batches`` for lib.train's Trainer (shuffling is seeded by the trainer per epoch)."""
    sample = TrainSample(cfg, priors)
    data = _RecordDataset(dataset.records, sample, cfg if cfg.TRAIN.AUGMENT else None)
    batch_size = min(int(cfg.TRAIN.BATCH_SIZE), len(data))
    if batch_size < 1:
        raise DatasetError("the training set is empty")

    def batches(epoch):
        # the trainer reseeds numpy from (SEED, epoch) before this call
        data.epoch_seed = int(np.random.randint(0, 2 ** 31 - 1))
        order = np.arange(len(data))
        np.random.shuffle(order)       # as gluon's RandomSampler; a short last batch is left out
        chunks = [order[start:start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]
        return Epoch(data, chunks, batch_size, int(cfg.TRAIN.MAX_BATCHES), int(cfg.TRAIN.WORKERS))

    return batches


class Epoch:
    """One epoch's batches of sample indices, loaded by a DataLoader as they are consumed."""

    def __init__(self, data, chunks, batch_size, cap=0, workers=0):
        self.data, self.batch_size, self.cap, self.workers = data, batch_size, cap, workers
        self.chunks = chunks[:cap] if cap > 0 else chunks

    def shard(self, rank, num_workers):
        """This worker's batches of a distributed job (lib.train.distributed.deal_batches)."""
        return Epoch(self.data, deal_batches(np.concatenate(self.chunks), self.batch_size, rank, num_workers),
                     self.batch_size, self.cap, self.workers)

    def __len__(self):
        return len(self.chunks)

    def __iter__(self):
        # Worker threads, not processes: each epoch's new process pool forks the training process,
        # and every fork left it ~1.7 GB larger (speedtrap M2Det, also at 2 batches per epoch) until
        # the OOM killer ended the run. The sample work (cv2, numpy) releases the GIL.
        loader = gluon.data.DataLoader(self.data, batch_sampler=[list(map(int, c)) for c in self.chunks],
                                       num_workers=self.workers, thread_pool=True)
        return iter(loader)
