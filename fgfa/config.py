"""Defaults of FGFA and its R-FCN frame baseline, as a nested dict merged under the yaml configs.

Every number the model, training and testing use lives here (or in a yaml override); the code reads
them from the config. The defaults follow the reference ImageNet VID setup (ResNet-101, 600x1000);
the CPU configs under ``experiments/`` shrink them.
"""
import logging

from lib.config import SHARED_DEFAULTS, SPEC_LIST_KEYS, ConfigError, Schema, extend_schema, load_config
from lib.transforms import build_transforms, lists_transform, transform_name

DEFAULTS = extend_schema(SHARED_DEFAULTS, {
    "NAME": "fgfa_rfcn",
    "OUTPUT_DIR": "output/fgfa_rfcn",
    "CONTEXT": "cpu",                 # 'cpu', 'gpu', 'gpu:1'
    "DATASET": {
        # lib.dataset.load_dataset specs (free-form mappings: FORMAT plus that format's keys)
        # TRAIN / VAL: lists of specs (a single mapping is a list of one); their records are concatenated
        "FRAMES_PER_VIDEO": 0,         # >0: subsample each training video to this many key frames
        "TEST_MAX_FRAMES": 0,          # >0: only the first N frames of each test video (quick runs)
    },
    # keep-ratio input: the shorter side to SHORT_SIDE unless the longer exceeds MAX_SIZE; training
    # scales drawn per sample from TRAIN_SCALES ([] = the test scale)
    "INPUT": {"SHORT_SIDE": 600, "MAX_SIZE": 1000, "MEAN": [123.15, 115.90, 103.06], "STD": [1.0, 1.0, 1.0]},
    "IMAGE": {
        "PAD_STRIDE": 16,              # image padded to a multiple (features, flow align exactly)
        # training crops [width, height] of the resized frames (0 = whole frames): around an object
        # with probability OBJECT_PROB, else anywhere; boxes kept when MIN_VISIBLE of them is inside
        "TRAIN_TILE": {"SIZE": [0, 0], "OBJECT_PROB": 0.7, "MIN_VISIBLE": 0.5},
    },
    "NETWORK": {
        # resnet (v1, res5 dilated; gluoncv:resnet<D>_v1 weights) | efficientnet_lite0 (stride-32 stage at
        # stride 1, dilation 2: 320 channels at stride 16; efficientnet_lite0:imagenet weights)
        "BACKBONE": "resnet",
        "DEPTH": 101,                  # ResNet v1 depth: 18, 34, 50, 101
        "WIDTH": 1.0,                  # channel multiplier of every backbone stage (< 1: thin, from scratch)
        "NORM": "frozen",              # frozen (global stats, needs pretrained) | trainable | group (resnet)
        "GROUPS": 32,                  # GroupNorm groups
        # not trained: 0 none, 1 the stem, 2 the stem + the stride-4 stage (ResNet conv1 + res2,
        # EfficientNet-Lite stem + blocks 0-2), as the reference does with pretrained weights
        "FROZEN_STAGES": 2,
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
        # the flow the aggregation warps with: flownet (the network's) | dis (OpenCV DIS on the CPU,
        # TEST.DIS_*). Set for training, it trains with DIS flow (the FlowNet is not trained); set at test
        # only (--set NETWORK.FLOW=dis), a FlowNet-trained model runs its window with DIS
        "FLOW": "flownet",
        "FLOW_WIDTH": 1.0,             # FlowNetSimple channel multiplier (CPU configs: < 1)
        "FLOW_SCALE": 2.5,             # 20 (FlowNet's flow/20) / 8 (flow at 1/8 of a half image)
        "EMBED_CHANNELS": [512, 512, 2048],
        # the aggregation weights are softmax(AGGREGATE_SCALE * cosine) over the window; the reference's
        # plain cosine (1) caps the key frame's weight (1/(1 + 2/e^2) = 0.79 at K = 1 however dissimilar the
        # neighbours), so the window always blurs the key frame. LEARNED: the scale is a parameter
        # (started at AGGREGATE_SCALE) trained with the embedding
        "AGGREGATE_SCALE": 1.0,
        "AGGREGATE_SCALE_LEARNED": False,
        # a per-pixel logit of each frame's own (a zero-initialised 1x1 of its embedding) added to its cosine:
        # the cosine to the key frame always favours the key frame, blurred or not; this lets a degraded key
        # frame hand its weight to sharp neighbours
        "AGGREGATE_QUALITY": False,
        "FLOW_WEIGHTS": "",            # FlowNet .params to start from (else TRAIN.FLOW_PRETRAIN)
        # a detector of this project to start from (.params, e.g. the R-FCN frame baseline's checkpoint
        # for FGFA): parameters of the same name and shape are loaded, the others keep their init
        "INIT_WEIGHTS": "",
    },
    "TRAIN": {
        "BATCH_SIZE": 1,               # key frames per batch
        # horizontal flip is the augmentation R-FCN / FGFA train with; {name: RandomDegrade, p: P} also
        # degrades frames of a sample, each on its own (lib.transforms.RandomDegrade)
        "AUGMENTATIONS": ["RandomFlip"],
        "MAX_OFFSET": 9,               # neighbours at distinct random offsets in [-MAX, MAX]
        "MIN_OFFSET": 1,
        "AGGREGATE_KEY": False,        # reference: softmax over the two neighbours only
        # learning-rate multiplier of the learned NETWORK.AGGREGATE_SCALE (its log; never weight-decayed): one
        # scalar whose gradient is ~0.02 per step on speedtrap, at the convolutions' rate it moved 1.0 -> 1.02
        # in an epoch
        "AGGREGATE_SCALE_LR_MULT": 100.0,
        "AGGREGATE_QUALITY_LR_MULT": 10.0,   # of NETWORK.AGGREGATE_QUALITY's 1x1 (zero start, small gradient)
        # only the window trains: the embedding (and its quality logit), the FlowNet and the aggregation scale;
        # the detector (backbone, RPN, R-FCN) stays the INIT_WEIGHTS one, so K = 0 is exactly that R-FCN. Needs
        # AGGREGATE_KEY (the key frame in the window, else the weights never choose between it and its neighbours)
        "WINDOW_ONLY": False,
        # FlowNet pre-training on pairs with known flow cut from the training images (fgfa.flow_pretrain):
        # the reference starts from Flying Chairs weights, which cannot be downloaded here. ITERS 0 = off.
        # SOURCE: synthetic (pasted patches with known flow; ZOOM: largest relative scale change of the
        # background, a camera moving forward) or video (training frames MIN..MAX_OFFSET apart with
        # OpenCV's Farneback flow as the target; IMAGES = pairs)
        # dis (OpenCV DIS flow of training frame pairs as the teacher, lib.dataset.teacher_flow: DIS_PRESET
        # ultrafast | fast | medium; IMAGES = pairs at most); PHOTOMETRIC / SMOOTHNESS: weights of the
        # unsupervised terms of lib.flow_losses added to the EPE (0 = off)
        "FLOW_PRETRAIN": {"ITERS": 0, "BATCH": 8, "LR": 0.001, "SOURCE": "synthetic", "MAX_SHIFT": 32.0,
                          "DIS_PRESET": "medium", "PHOTOMETRIC": 0.0, "SMOOTHNESS": 0.0,
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
        "DIS_PRESET": "fast",          # NETWORK.FLOW dis: ultrafast | fast | medium (lib.flow)
        "DIS_SCALE": 1.0,              #   and the share of the input resolution it runs at (0.5: ~3x faster)
        "RPN_PRE_NMS_TOP_N": 6000,
        "RPN_POST_NMS_TOP_N": 300,
        "RPN_NMS": 0.7,
        "RPN_MIN_SIZE": 0,
        "SCORE_THRESH": 0.001,
        "NMS_IOU": 0.3,
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
        # split: the window sees the test split's frames only; video: whole videos of DATASET.VAL
        # without its SPLIT / IMAGE_SET are streamed (true neighbours when a random split leaves gaps)
        # and only the split's frames are reported (ignored without aggregation: same results)
        "CONTEXT": "split",
        "VIS_THRESH": 0.5,
    },
})


def _test_scale(value):
    return {"INPUT.SHORT_SIDE": int(value[0]), "INPUT.MAX_SIZE": int(value[1])}


def _flip(value):
    return {"TRAIN.AUGMENTATIONS": ["RandomFlip"] if value else []}


# keys of earlier releases -> their names in the shared schema (read with a warning)
RENAMES = {
    "TRAIN.BATCH_IMAGES": "TRAIN.BATCH_SIZE",
    "DATASET.TEST": "DATASET.VAL",
    "IMAGE.SCALES": "INPUT.TRAIN_SCALES",
    "IMAGE.TEST_SCALE": _test_scale,
    "IMAGE.MEAN": "INPUT.MEAN",
    "IMAGE.STD": "INPUT.STD",
    "IMAGE.FLIP": _flip,
    "TEST.NMS": "TEST.NMS_IOU",
    "NETWORK.PRETRAINED": "PRETRAINED",
}
SCHEMA = Schema(DEFAULTS, renames=RENAMES, spec_list_keys=SPEC_LIST_KEYS)
# TRAIN.AUGMENTATIONS entries R-FCN / FGFA apply (class names of lib.transforms): the flip is drawn once
# per sample, the per-frame ones act on each frame of a window on its own
PER_FRAME_TRANSFORMS = ("RandomDegrade", "RandomFrameDrop")
SUPPORTED_AUGMENTATIONS = ("RandomFlip",) + PER_FRAME_TRANSFORMS
log = logging.getLogger("fgfa.config")


def input_scale(cfg):
    """(short side, max long side) of the test input."""
    return int(cfg.INPUT.SHORT_SIDE), int(cfg.INPUT.MAX_SIZE)


def training_scales(cfg):
    """The training scales as [short, max long] pairs: INPUT.TRAIN_SCALES factors of the test scale or
    pairs as given; none given = the test scale."""
    short, long_side = input_scale(cfg)
    scales = []
    for value in cfg.INPUT.TRAIN_SCALES:
        if isinstance(value, (list, tuple)):
            scales.append([int(value[0]), int(value[1])])
        else:
            scales.append([int(round(short * float(value))), int(round(long_side * float(value)))])
    return scales or [[short, long_side]]


def flip_enabled(cfg):
    """Whether training flips (TRAIN.AUGMENT and a RandomFlip among TRAIN.AUGMENTATIONS)."""
    return bool(cfg.TRAIN.AUGMENT) and lists_transform(cfg.TRAIN.AUGMENTATIONS, "RandomFlip")


def frame_drop_requested(cfg):
    """Whether training drops frames (TRAIN.AUGMENT and a RandomFrameDrop among TRAIN.AUGMENTATIONS)."""
    return bool(cfg.TRAIN.AUGMENT) and lists_transform(cfg.TRAIN.AUGMENTATIONS, "RandomFrameDrop")


def per_frame_transform(cfg):
    """The RandomDegrade / RandomFrameDrop entries of TRAIN.AUGMENTATIONS, in their order, or None. Each
    acts on each frame of a sample on its own: a blurred or dropped key frame between sharp neighbours,
    or the reverse, is what the aggregation must learn to handle. Parameters are checked by
    lib.transforms (errors name the entry)."""
    specs = [s for s in cfg.TRAIN.AUGMENTATIONS if transform_name(s) in PER_FRAME_TRANSFORMS]
    if not cfg.TRAIN.AUGMENT or not specs:
        return None
    src = cfg.get("CONFIG_FILE") or "<config>"
    try:
        return build_transforms(specs, source=f"{src}: TRAIN.AUGMENTATIONS")
    except ValueError as err:
        raise ConfigError(str(err)) from None


_NORMS = ("frozen", "trainable", "group")
_DEPTHS = (18, 34, 50, 101)
BACKBONES = ("resnet", "efficientnet_lite0")


def validate(cfg):
    """Cross-field checks that the type-level merge cannot express; errors name the key."""
    src = cfg.get("CONFIG_FILE") or "<config>"
    net, img, inp = cfg.NETWORK, cfg.IMAGE, cfg.INPUT
    if net.BACKBONE not in BACKBONES:
        raise ConfigError(f"{src}: NETWORK.BACKBONE must be one of {BACKBONES}, got {net.BACKBONE!r}")
    if net.DEPTH not in _DEPTHS:
        raise ConfigError(f"{src}: NETWORK.DEPTH must be one of {_DEPTHS}, got {net.DEPTH}")
    if net.BACKBONE != "resnet" and net.NORM == "group":
        raise ConfigError(f"{src}: NETWORK.NORM group is for the resnet backbone; {net.BACKBONE} has "
                          f"BatchNorm (frozen | trainable)")
    if not 0 < net.WIDTH <= 4:
        raise ConfigError(f"{src}: NETWORK.WIDTH must be in (0, 4], got {net.WIDTH}")
    if net.WIDTH != 1 and cfg.PRETRAINED:
        raise ConfigError(f"{src}: PRETRAINED holds ImageNet weights of a full-width backbone; "
                          f"it does not fit NETWORK.WIDTH {net.WIDTH}")
    if net.NORM not in _NORMS:
        raise ConfigError(f"{src}: NETWORK.NORM must be one of {_NORMS}, got {net.NORM!r}")
    if net.FEAT_CHANNELS % 2:
        raise ConfigError(f"{src}: NETWORK.FEAT_CHANNELS must be even (RPN and R-FCN halves)")
    if net.FEAT_STRIDE != 16:
        raise ConfigError(f"{src}: NETWORK.FEAT_STRIDE must be 16 (res5 dilated backbone)")
    if img.PAD_STRIDE % net.FEAT_STRIDE:
        raise ConfigError(f"{src}: IMAGE.PAD_STRIDE must be a multiple of NETWORK.FEAT_STRIDE")
    if not (isinstance(net.AGGREGATE_SCALE, (int, float)) and 0 < net.AGGREGATE_SCALE <= 1000):
        raise ConfigError(f"{src}: NETWORK.AGGREGATE_SCALE must be a number in (0, 1000], got {net.AGGREGATE_SCALE!r}")
    if cfg.TRAIN.WINDOW_ONLY and not (net.AGGREGATE and cfg.TRAIN.AGGREGATE_KEY):
        raise ConfigError(f"{src}: TRAIN.WINDOW_ONLY trains the window's weights between the key frame and its "
                          f"neighbours: it needs NETWORK.AGGREGATE: true and TRAIN.AGGREGATE_KEY: true")
    if cfg.TRAIN.WINDOW_ONLY and cfg.TRAIN.TRAINABLE_PATTERNS:
        raise ConfigError(f"{src}: TRAIN.WINDOW_ONLY chooses the trained parameters itself; leave "
                          f"TRAIN.TRAINABLE_PATTERNS empty (got {list(cfg.TRAIN.TRAINABLE_PATTERNS)})")
    if len(net.EMBED_CHANNELS) != 3:
        raise ConfigError(f"{src}: NETWORK.EMBED_CHANNELS must list 3 widths (1x1, 3x3, 1x1)")
    for key in ("RPN_BBOX_STDS", "RCNN_BBOX_STDS"):
        if len(net[key]) != 4:
            raise ConfigError(f"{src}: NETWORK.{key} must have 4 numbers")
    for key in ("MEAN", "STD"):
        if len(inp[key]) != 3:
            raise ConfigError(f"{src}: INPUT.{key} must have 3 numbers (RGB)")
    if inp.SIZE:
        raise ConfigError(f"{src}: INPUT.SIZE: R-FCN / FGFA keep the aspect ratio; give INPUT.SHORT_SIDE and "
                          f"INPUT.MAX_SIZE")
    if inp.SHORT_SIDE < 1 or inp.MAX_SIZE < inp.SHORT_SIDE:
        raise ConfigError(f"{src}: need 1 <= INPUT.SHORT_SIDE <= INPUT.MAX_SIZE, got {inp.SHORT_SIDE} and "
                          f"{inp.MAX_SIZE}")
    for value in inp.TRAIN_SCALES:
        pair = isinstance(value, (list, tuple))
        if (pair and (len(value) != 2 or min(value) < 1)) or (not pair and not (
                isinstance(value, (int, float)) and 0 < float(value) <= 4)):
            raise ConfigError(f"{src}: INPUT.TRAIN_SCALES: {value!r} is neither a factor in (0, 4] of the test "
                              f"scale nor a [short, max_long] pair")
    unknown = [s for s in cfg.TRAIN.AUGMENTATIONS if transform_name(s) not in SUPPORTED_AUGMENTATIONS]
    if unknown:
        log.warning("%s: TRAIN.AUGMENTATIONS: R-FCN / FGFA train with %s only; %s not applied", src,
                    ", ".join(SUPPORTED_AUGMENTATIONS), unknown)
    per_frame_transform(cfg)    # a bad RandomDegrade / RandomFrameDrop entry fails here, not at the first sample
    if frame_drop_requested(cfg) and not net.AGGREGATE:
        raise ConfigError(f"{src}: TRAIN.AUGMENTATIONS: RandomFrameDrop trains a window to detect on a dropped "
                          f"frame from its neighbours; the R-FCN frame baseline (NETWORK.AGGREGATE: false) "
                          f"has none and would learn boxes on blank frames")
    tile = img.TRAIN_TILE
    if len(tile.SIZE) != 2 or min(tile.SIZE) < 0 or (min(tile.SIZE) == 0 < max(tile.SIZE)):
        raise ConfigError(f"{src}: IMAGE.TRAIN_TILE.SIZE must be [width, height] > 0, or [0, 0] (off), "
                          f"got {tile.SIZE}")
    if not 0.0 <= tile.OBJECT_PROB <= 1.0 or not 0.0 < tile.MIN_VISIBLE <= 1.0:
        raise ConfigError(f"{src}: IMAGE.TRAIN_TILE needs OBJECT_PROB in [0, 1] and MIN_VISIBLE in (0, 1], "
                          f"got {tile.OBJECT_PROB} and {tile.MIN_VISIBLE}")
    if cfg.TEST.K < 0:
        raise ConfigError(f"{src}: TEST.K must be >= 0, got {cfg.TEST.K}")
    if not 1 <= cfg.TRAIN.MIN_OFFSET <= cfg.TRAIN.MAX_OFFSET:
        raise ConfigError(f"{src}: need 1 <= TRAIN.MIN_OFFSET <= TRAIN.MAX_OFFSET")
    pre = cfg.TRAIN.FLOW_PRETRAIN
    if len(pre.SIZE) != 2 or any(v <= 0 or v % net.FEAT_STRIDE for v in pre.SIZE):
        raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.SIZE must be [width, height], multiples of "
                          f"{net.FEAT_STRIDE}, got {pre.SIZE}")
    if pre.SOURCE not in ("synthetic", "video", "dis"):
        raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.SOURCE must be synthetic, video or dis, got {pre.SOURCE!r}")
    if pre.DIS_PRESET not in ("ultrafast", "fast", "medium"):
        raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.DIS_PRESET must be ultrafast, fast or medium, "
                          f"got {pre.DIS_PRESET!r}")
    if pre.PHOTOMETRIC < 0 or pre.SMOOTHNESS < 0:
        raise ConfigError(f"{src}: TRAIN.FLOW_PRETRAIN.PHOTOMETRIC / SMOOTHNESS must be >= 0")
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
    if net.FLOW not in ("flownet", "dis"):
        raise ConfigError(f"{src}: NETWORK.FLOW must be flownet or dis, got {net.FLOW!r}")
    if cfg.TEST.DIS_PRESET not in ("ultrafast", "fast", "medium"):
        raise ConfigError(f"{src}: TEST.DIS_PRESET must be ultrafast, fast or medium, got {cfg.TEST.DIS_PRESET!r}")
    if not 0 < cfg.TEST.DIS_SCALE <= 1:
        raise ConfigError(f"{src}: TEST.DIS_SCALE must be in (0, 1], got {cfg.TEST.DIS_SCALE}")
    if cfg.TEST.FLOW_MODE not in ("direct", "chained"):
        raise ConfigError(f"{src}: TEST.FLOW_MODE must be 'direct' or 'chained', got {cfg.TEST.FLOW_MODE!r}")
    if cfg.TEST.SEQ_NMS_RESCORE not in ("avg", "max"):
        raise ConfigError(f"{src}: TEST.SEQ_NMS_RESCORE must be 'avg' or 'max'")
    if cfg.TEST.EVAL_METRIC not in ("auto", "vid", "voc"):
        raise ConfigError(f"{src}: TEST.EVAL_METRIC must be auto, vid or voc")
    if cfg.TRAIN.BATCH_SIZE < 1:
        raise ConfigError(f"{src}: TRAIN.BATCH_SIZE must be >= 1")
    return cfg


def get_config(path=None, overrides=None):
    """Load a yaml config (or the defaults when ``path`` is None) and validate it."""
    cfg = load_config(path, SCHEMA, overrides=overrides)
    return validate(cfg)
