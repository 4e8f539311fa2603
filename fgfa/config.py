"""Defaults of FGFA and its R-FCN frame baseline, as a nested dict merged under the yaml configs.

Every number the model, training and testing use lives here (or in a yaml override); the code reads
them from the config. The defaults follow the reference ImageNet VID setup (ResNet-101, 600x1000);
the CPU configs under ``experiments/`` shrink them.
"""
import copy

from lib.config import ConfigError, load_config

from lib.train import TRAIN_DEFAULTS

DEFAULTS = {
    "NAME": "fgfa_rfcn",
    "OUTPUT_DIR": "output/fgfa_rfcn",
    "CONTEXT": "cpu",                 # 'cpu', 'gpu', 'gpu:1'
    "DATASET": {
        # lib.dataset.load_dataset specs (free-form mappings: FORMAT plus that format's keys)
        "TRAIN": [],                   # list of specs; their records are concatenated
        "TEST": {},
        "CLASSES": [],                 # optional explicit class list (else taken from the data)
        "FRAMES_PER_VIDEO": 0,         # >0: subsample each training video to this many key frames
        "TEST_MAX_FRAMES": 0,          # >0: only the first N frames of each test video (quick runs)
    },
    "IMAGE": {
        "SCALES": [[600, 1000]],       # [short side, max long side]; one drawn per training sample
        "TEST_SCALE": [600, 1000],
        "MEAN": [123.15, 115.90, 103.06],  # RGB, subtracted
        "STD": [1.0, 1.0, 1.0],        # divide after the mean (reference: none)
        "PAD_STRIDE": 16,              # image padded to a multiple (features, flow align exactly)
        "FLIP": True,
        # training crops [width, height] of the resized frames (0 = whole frames): around an object
        # with probability OBJECT_PROB, else anywhere; boxes kept when MIN_VISIBLE of them is inside
        "TRAIN_TILE": {"SIZE": [0, 0], "OBJECT_PROB": 0.7, "MIN_VISIBLE": 0.5},
    },
    "NETWORK": {
        "DEPTH": 101,                  # ResNet v1 depth: 18, 34, 50, 101
        "WIDTH": 1.0,                  # channel multiplier of every ResNet stage (< 1: thin, from scratch)
        "NORM": "frozen",              # frozen (global stats, needs pretrained) | trainable | group
        "GROUPS": 32,                  # GroupNorm groups
        "FROZEN_STAGES": 2,            # 0 none, 1 conv1, 2 conv1+res2 (with pretrained weights)
        "PRETRAINED": "",              # gluoncv-format ResNet params (.params) for the backbone
        "FEAT_CHANNELS": 1024,         # 3x3 dilated feature conv after res5
        "FEAT_DILATION": 6,
        "RES5_DILATION": 2,
        "FEAT_STRIDE": 16,
        "ANCHOR_BASE": 16,
        "ANCHOR_SCALES": [8, 16, 32],
        "ANCHOR_RATIOS": [0.5, 1.0, 2.0],
        "RPN_BBOX_STDS": [0.1, 0.1, 0.4, 0.4],
        "RCNN_BBOX_STDS": [0.1, 0.1, 0.2, 0.2],
        "PS_GROUP": 7,                 # position-sensitive grid (group = pooled size)
        "AGGREGATE": True,             # False: the R-FCN single-frame baseline
        "FLOW_WIDTH": 1.0,             # FlowNetSimple channel multiplier (CPU configs: < 1)
        "FLOW_SCALE": 2.5,             # 20 (FlowNet's flow/20) / 8 (flow at 1/8 of a half image)
        "EMBED_CHANNELS": [512, 512, 2048],
        "FLOW_WEIGHTS": "",            # FlowNet .params to start from (else TRAIN.FLOW_PRETRAIN)
        # a detector of this project to start from (.params, e.g. the R-FCN frame baseline's checkpoint
        # for FGFA): parameters of the same name and shape are loaded, the others keep their init
        "INIT_WEIGHTS": "",
    },
    "TRAIN": {
        "BATCH_IMAGES": 1,             # key frames per batch
        "MAX_OFFSET": 9,               # neighbours at distinct random offsets in [-MAX, MAX]
        "MIN_OFFSET": 1,
        "AGGREGATE_KEY": False,        # reference: softmax over the two neighbours only
        # FlowNet pre-training on pairs with known flow cut from the training images (fgfa.flow_pretrain):
        # the reference starts from Flying Chairs weights, which cannot be downloaded here. ITERS 0 = off.
        # SOURCE: synthetic (pasted patches with known flow; ZOOM: largest relative scale change of the
        # background, a camera moving forward) or video (training frames MIN..MAX_OFFSET apart with
        # OpenCV's Farneback flow as the target; IMAGES = pairs)
        "FLOW_PRETRAIN": {"ITERS": 0, "BATCH": 8, "LR": 0.001, "SOURCE": "synthetic", "MAX_SHIFT": 32.0,
                          "ZOOM": 0.0, "PATCHES": [1, 4], "SIZE": [320, 240], "IMAGES": 64},
        "RPN_PRE_NMS_TOP_N": 6000,
        "RPN_POST_NMS_TOP_N": 300,
        "RPN_NMS": 0.7,
        "RPN_MIN_SIZE": 0,
        "RPN_BATCH_SIZE": 256,
        "RPN_FG_FRACTION": 0.5,
        "RPN_POS_IOU": 0.7,
        "RPN_NEG_IOU": 0.3,
        "RPN_ALLOWED_BORDER": 0,
        "RCNN_FG_IOU": 0.5,
        "RCNN_BG_IOU": [0.0, 0.5],
        "OHEM_ROIS": 128,              # per image: RoIs with the highest loss kept
        "RPN_SMOOTH_L1_SIGMA": 3.0,
        "RCNN_SMOOTH_L1_SIGMA": 1.0,
        # lib.train.fit keys (lib.train.TRAIN_DEFAULTS lists them all; any of them may be set here)
        "EPOCHS": 2,
        "LR": 0.00025,
        "LR_STEPS": [1.333],           # in epochs (LR_STEP_UNIT)
        "LR_FACTOR": 0.1,
        "WARMUP_EPOCHS": 0.0,
        "MOMENTUM": 0.9,
        "WD": 0.0005,
        "KEEP_LAST": 3,
        "LOG_EVERY": 20,
        "RESUME": True,
        "HYBRIDIZE": True,             # static graphs for the network blocks while training (faster)
    },
    "TEST": {
        "K": 9,                        # window of 2K+1 frames (reference: 9, hard-coded as 19 frames)
        # direct: 2K FlowNet runs per output frame, centre -> each frame (reference);
        # chained: 2 FlowNet runs per new frame (to and from its predecessor), the flow to a frame
        # j steps away composed from the j one-step flows by warping (2K cheap 2-channel warps)
        "FLOW_MODE": "direct",
        "RPN_PRE_NMS_TOP_N": 6000,
        "RPN_POST_NMS_TOP_N": 300,
        "RPN_NMS": 0.7,
        "RPN_MIN_SIZE": 0,
        "SCORE_THRESH": 0.001,
        "NMS": 0.3,
        "MAX_PER_IMAGE": 300,
        "SEQ_NMS": False,
        "SEQ_NMS_LINK_IOU": 0.5,
        "SEQ_NMS_SUPPRESS_IOU": 0.3,
        "SEQ_NMS_RESCORE": "avg",
        "CHECKPOINT": "",              # empty: the last checkpoint of OUTPUT_DIR
        "QUANTIZE": "",                # int8: backbone, feature conv, head convs (+ embedding, FlowNet) in int8
        "CALIB_FRAMES": 8,             #   on CPU (MKLDNN), calibrated on this many training frames; -> test_int8/
        "CALIB_MODE": "naive",         #   int8 ranges: naive (min/max) | entropy (KL), for the detector's graphs
        "FLOW_CALIB_MODE": "entropy",  #   and for the FlowNet (entropy: int8 flows ~half as far from float)
        "HYBRIDIZE": True,
        "EVAL_METRIC": "auto",         # auto (vid when tracks exist, else voc) | vid | voc
        # split: the window sees the test split's frames only; video: whole videos of DATASET.TEST
        # without its SPLIT / IMAGE_SET are streamed (true neighbours when a random split leaves gaps)
        # and only the split's frames are reported (ignored without aggregation: same results)
        "CONTEXT": "split",
        "VIS_THRESH": 0.5,
    },
}

# every lib.train.fit key is accepted under TRAIN, with the fit loop's defaults unless set above
for _key, _value in TRAIN_DEFAULTS.items():
    DEFAULTS["TRAIN"].setdefault(_key, copy.deepcopy(_value))

# dataset specs are free-form mappings handed to lib.dataset.load_dataset
OPEN_KEYS = ("DATASET.TEST",)

_NORMS = ("frozen", "trainable", "group")
_DEPTHS = (18, 34, 50, 101)


def validate(cfg):
    """Cross-field checks that the type-level merge cannot express; errors name the key."""
    src = cfg.get("CONFIG_FILE") or "<config>"
    net, img = cfg.NETWORK, cfg.IMAGE
    if net.DEPTH not in _DEPTHS:
        raise ConfigError(f"{src}: NETWORK.DEPTH must be one of {_DEPTHS}, got {net.DEPTH}")
    if not 0 < net.WIDTH <= 4:
        raise ConfigError(f"{src}: NETWORK.WIDTH must be in (0, 4], got {net.WIDTH}")
    if net.WIDTH != 1 and net.PRETRAINED:
        raise ConfigError(f"{src}: NETWORK.PRETRAINED is an ImageNet ResNet of full width; "
                          f"it does not fit NETWORK.WIDTH {net.WIDTH}")
    if net.NORM not in _NORMS:
        raise ConfigError(f"{src}: NETWORK.NORM must be one of {_NORMS}, got {net.NORM!r}")
    if net.FEAT_CHANNELS % 2:
        raise ConfigError(f"{src}: NETWORK.FEAT_CHANNELS must be even (RPN and R-FCN halves)")
    if net.FEAT_STRIDE != 16:
        raise ConfigError(f"{src}: NETWORK.FEAT_STRIDE must be 16 (res5 dilated backbone)")
    if img.PAD_STRIDE % net.FEAT_STRIDE:
        raise ConfigError(f"{src}: IMAGE.PAD_STRIDE must be a multiple of NETWORK.FEAT_STRIDE")
    if len(net.EMBED_CHANNELS) != 3:
        raise ConfigError(f"{src}: NETWORK.EMBED_CHANNELS must list 3 widths (1x1, 3x3, 1x1)")
    for key in ("RPN_BBOX_STDS", "RCNN_BBOX_STDS"):
        if len(net[key]) != 4:
            raise ConfigError(f"{src}: NETWORK.{key} must have 4 numbers")
    for key in ("MEAN", "STD"):
        if len(img[key]) != 3:
            raise ConfigError(f"{src}: IMAGE.{key} must have 3 numbers (RGB)")
    if not img.SCALES or any(len(s) != 2 for s in img.SCALES):
        raise ConfigError(f"{src}: IMAGE.SCALES must be a list of [short, max_long] pairs")
    tile = img.TRAIN_TILE
    if len(tile.SIZE) != 2 or min(tile.SIZE) < 0 or (min(tile.SIZE) == 0 < max(tile.SIZE)):
        raise ConfigError(f"{src}: IMAGE.TRAIN_TILE.SIZE must be [width, height] > 0, or [0, 0] (off), "
                          f"got {tile.SIZE}")
    if not 0.0 <= tile.OBJECT_PROB <= 1.0 or not 0.0 < tile.MIN_VISIBLE <= 1.0:
        raise ConfigError(f"{src}: IMAGE.TRAIN_TILE needs OBJECT_PROB in [0, 1] and MIN_VISIBLE in (0, 1], "
                          f"got {tile.OBJECT_PROB} and {tile.MIN_VISIBLE}")
    if len(img.TEST_SCALE) != 2:
        raise ConfigError(f"{src}: IMAGE.TEST_SCALE must be [short, max_long]")
    if cfg.TEST.K < 0:
        raise ConfigError(f"{src}: TEST.K must be >= 0, got {cfg.TEST.K}")
    if not 1 <= cfg.TRAIN.MIN_OFFSET <= cfg.TRAIN.MAX_OFFSET:
        raise ConfigError(f"{src}: need 1 <= TRAIN.MIN_OFFSET <= TRAIN.MAX_OFFSET")
    pre = cfg.TRAIN.FLOW_PRETRAIN
    if len(pre.SIZE) != 2 or any(v <= 0 or v % net.FEAT_STRIDE for v in pre.SIZE):
        raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.SIZE must be [width, height], multiples of "
                          f"{net.FEAT_STRIDE}, got {pre.SIZE}")
    if pre.SOURCE not in ("synthetic", "video"):
        raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.SOURCE must be 'synthetic' or 'video', got {pre.SOURCE!r}")
    if len(pre.PATCHES) != 2 or not 0 <= pre.PATCHES[0] <= pre.PATCHES[1]:
        raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.PATCHES must be [min, max] with 0 <= min <= max")
    for key, ok, what in (("ITERS", pre.ITERS >= 0, ">= 0"), ("BATCH", pre.BATCH >= 1, ">= 1"),
                          ("IMAGES", pre.IMAGES >= 1, ">= 1"), ("LR", pre.LR > 0, "> 0"),
                          ("MAX_SHIFT", pre.MAX_SHIFT >= 0, ">= 0"), ("ZOOM", 0 <= pre.ZOOM < 1, "in [0, 1)")):
        if not ok:
            raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.{key} must be {what}, got {pre[key]}")
    if cfg.TEST.CALIB_FRAMES < 1:
        raise ConfigError(f"{src}: TEST.CALIB_FRAMES must be >= 1, got {cfg.TEST.CALIB_FRAMES}")
    for key in ("CALIB_MODE", "FLOW_CALIB_MODE"):
        if cfg.TEST[key] not in ("naive", "entropy"):
            raise ConfigError(f"{src}: TEST.{key} must be 'naive' or 'entropy', got {cfg.TEST[key]!r}")
    if cfg.TEST.QUANTIZE not in ("", "int8"):
        raise ConfigError(f"{src}: TEST.QUANTIZE must be '' (float) or 'int8', got {cfg.TEST.QUANTIZE!r}")
    if cfg.TEST.FLOW_MODE not in ("direct", "chained"):
        raise ConfigError(f"{src}: TEST.FLOW_MODE must be 'direct' or 'chained', got {cfg.TEST.FLOW_MODE!r}")
    if cfg.TEST.SEQ_NMS_RESCORE not in ("avg", "max"):
        raise ConfigError(f"{src}: TEST.SEQ_NMS_RESCORE must be 'avg' or 'max'")
    if cfg.TEST.EVAL_METRIC not in ("auto", "vid", "voc"):
        raise ConfigError(f"{src}: TEST.EVAL_METRIC must be auto, vid or voc")
    if cfg.TRAIN.BATCH_IMAGES < 1:
        raise ConfigError(f"{src}: TRAIN.BATCH_IMAGES must be >= 1")
    return cfg


def get_config(path=None, overrides=None):
    """Load a yaml config (or the defaults when ``path`` is None) and validate it."""
    cfg = load_config(path, copy.deepcopy(DEFAULTS), overrides=overrides, open_keys=OPEN_KEYS)
    return validate(cfg)
