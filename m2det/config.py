"""Default configuration of M2Det and its toolkit; yaml files override it (lib.config.load_config).

The defaults are the official M2Det 320 VGG16 settings (configs/m2det320_vgg.py of the paper's code).
Other official input sizes: see ``OFFICIAL_PRIORS`` and experiments/m2det/cfgs/.
"""
from lib.config import SHARED_DEFAULTS, SPEC_LIST_KEYS, Schema, extend_schema, load_config

# Official anchor patterns per input size: (step_pattern, size_pattern).
OFFICIAL_PRIORS = {
    320: ([8, 16, 32, 64, 107, 320], [0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]),
    512: ([8, 16, 32, 64, 128, 256], [0.06, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]),
    800: ([8, 16, 32, 62, 115, 160], [0.04, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]),
}

DEFAULTS = extend_schema(SHARED_DEFAULTS, {
    "MODEL": {
        # vgg16 | vgg16_bn | resnet50 | resnet101 | mobilenetv2 | efficientnet_lite0; PRETRAINED (top level)
        # gives its weights: vgg16_hed:bsds500, efficientnet_lite0:imagenet, gluoncv:<name>, a .params
        "BACKBONE": "vgg16",
        "BACKBONE_WIDTH": 1.0,         # channel multiplier of mobilenetv2 / efficientnet_lite0
        "PLANES": 256,                 # TUM width; FFMv2 gives PLANES // 2
        "SHALLOW_CHANNELS": 256,       # FFMv1 3x3 conv on the stride-8 tap
        "DEEP_CHANNELS": 512,          # FFMv1 1x1 conv on the stride-16 tap
        "NUM_LEVELS": 8,               # number of TUMs
        "NUM_SCALES": 6,
        "SMOOTH": True,
        "SFAM": False,                 # squeeze-excitation in SFAM (official configs: off)
        "SFAM_REDUCTION": 16,
        "SHARED_WEIGHTS": False,       # official quirk: one FFMv2 conv and one SE for all levels/scales
        "SOURCE_NORM": True,           # BatchNorm on the largest SFAM output, as the official code
        "HEAD_INIT_STD": 0.01,         # normal init of the heads; 0 = He init as the official code
        "BN_MOMENTUM": 0.0,            # > 0: running-stat momentum of every BatchNorm (MXNet sense);
                                       # 0 keeps 0.99 (official, PyTorch 0.01) / gluoncv's 0.9
        "PYRAMID": "m2det",            # m2det | ssd (ablation: heads straight on FFMv1 + extra convs)
        "PRIORS": {
            "SIZE_PATTERN": [0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
            "STEPS": [8, 16, 32, 64, 107, 320],   # empty list: input_size / feature_size
            "ASPECT_RATIOS": [2, 3],
            "VARIANCES": [0.1, 0.1, 0.2, 0.2],
            "CLIP": True,
        },
    },
    "INPUT": {
        "SIZE": 320,                   # input S (square) or [H, W]; must give a valid pyramid
        "MEAN": [123.0, 117.0, 104.0],  # RGB order of the official BGR means (104, 117, 123)
        "STD": [1.0, 1.0, 1.0],
    },
    "LOSS": {
        "TYPE": "softmax",             # softmax (SSD multibox, hard negative mining) | focal
        "NEGATIVE_RATIO": 3.0,
        "POS_IOU": 0.5,
        "LOC_WEIGHT": 1.0,
        "FOCAL_ALPHA": 0.25,
        "FOCAL_GAMMA": 2.0,
    },
    "TEST": {
        "SCORE_THRESH": 0.1,           # per-class threshold (paper: 0.05)
        "NMS_METHOD": "hard",          # hard | linear | gaussian (soft-NMS)
        "NMS_IOU": 0.45,
        "PRE_NMS_TOP_K": 400,          # per class, before NMS (bounds the O(k^2) box_nms); 0 = all
        "SOFT_NMS_SIGMA": 0.5,
        "MAX_PER_CLASS": 50,
        "MAX_PER_IMAGE": 100,
        # Test-time augmentation (the paper's multi-scale inference): the input sizes (S or [H, W]) the
        # same weights run at, merged by class-aware NMS; [] = INPUT.SIZE only. FLIP also runs the
        # mirrored frame. Training checkpoints only: an exported artifact has one input size.
        "SIZES": [],
        "FLIP": False,
        "MERGE": "nms",                # passes merged by 'nms' (their union) | 'vote' (scores averaged)
        "PRIOR_SIZES": "trained",      # priors at another test size: 'trained' (the trained pixel sizes:
                                       # an image pyramid) | 'input' (the same share of the image)
    },
    "DATASET": {
        "TRAIN": None,                 # lib.dataset.load_dataset specs (a list, or one mapping)
        "VAL": None,
        "CLASSES": [],                 # optional explicit class list
    },
    "TRAIN": {
        # Keys of lib.train.fit (see lib/train/loop.py); official M2Det schedule: warm-up 5 epochs to
        # lr 0.004 (from 1e-6), x0.1 steps at 90/110/130/150, 160 epochs, batch 16.
        "BATCH_SIZE": 16,
        "EPOCHS": 160,
        "OPTIMIZER": "sgd",
        "LR": 0.004,
        "MOMENTUM": 0.9,
        "WD": 0.0005,
        "LR_SCHEDULE": "step",
        "LR_STEPS": [90, 110, 130, 150],
        "LR_FACTOR": 0.1,
        "WARMUP_EPOCHS": 5.0,
        "WARMUP_FACTOR": 0.00025,      # 1e-6 / 0.004 as the official warm-up
        "CLIP_GRAD_NORM": 0.0,
        "SEED": 0,
        "CHECKPOINT_EVERY": 1,
        "KEEP_LAST": 3,
        "LOG_EVERY": 20,
        "EVAL_EVERY": 1,               # 0: only after the last epoch
        "EVALUATE": True,              # mAP on the validation set (DATASET.VAL) during training
        "FREEZE_BACKBONE": False,
        "FREEZE_PATTERNS": [],
        "NO_WD_PATTERNS": [],
        "PROGRESS": True,
        "AUGMENT": True,               # augment with AUGMENTATIONS
        # lib.transforms specs; the official SSD augmentation (ssd.pytorch / M2Det crop variant)
        "AUGMENTATIONS": ["PhotometricDistort", "Expand", {"name": "SSDRandomCrop", "iou_mode": "all"},
                          {"name": "RandomFlip", "p": 0.5}],
        "EXPAND_MAX_RATIO": 4.0,
        "WORKERS": 0,                  # loader threads preparing batches (0: in the training thread)
    },
    "OUTPUT_DIR": "output/m2det",
    "CONTEXT": "cpu",                  # cpu | gpu:N | comma-separated list for data-parallel training
})

SIZE_KEYS = ("INPUT.SIZE",)
# keys of earlier releases -> their names in the shared schema (read with a warning)
RENAMES = {
    "MODEL.INPUT_SIZE": "INPUT.SIZE",
    "TRAIN.MAX_ITERS_PER_EPOCH": "TRAIN.MAX_BATCHES",
    "TRAIN.RANDOM_TRANSFORM": "TRAIN.AUGMENT",
    "TEST.NMS": "TEST.NMS_METHOD",
    "TEST.PRE_NMS_TOPK": "TEST.PRE_NMS_TOP_K",
    "MODEL.BACKBONE_WEIGHTS": "PRETRAINED",
    "MODEL.MOBILENET_MULTIPLIER": "MODEL.BACKBONE_WIDTH",
}
SCHEMA = Schema(DEFAULTS, size_keys=SIZE_KEYS, renames=RENAMES, spec_list_keys=SPEC_LIST_KEYS)


def load(path=None, overrides=None):
    """DEFAULTS <- yaml ``path`` <- ``overrides`` ("A.B=value" strings) with strict key checks."""
    return load_config(path, SCHEMA, overrides=overrides)
