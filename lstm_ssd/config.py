"""Defaults of the LSTM-SSD / Looking-Fast-and-Slow configs (yaml files override these, strictly).

Layout after the PyTorch LSTM-SSD port (MODEL / TRAIN / TEST / DATASET / PHASE), with every number
of the reference configs in one place. ``load(path)`` = ``lib.config.load_config(path, DEFAULTS)``.
"""
from lib.config import SHARED_DEFAULTS, SPEC_LIST_KEYS, Schema, extend_schema, load_config

DEFAULTS = extend_schema(SHARED_DEFAULTS, {
    "PHASE": ["train", "test"],
    "OUTPUT_DIR": "output/lstm_ssd/default",
    "CONTEXT": "cpu",
    "MODEL": {
        # lstm_ssd (A) | ssdlite (frame baseline, no memory) | fast_slow (B, interleaved extractors)
        "TYPE": "lstm_ssd",
        "NUM_CLASSES": 30,
        "LARGE": {"NET": "mobilenet_v1", "WIDTH": 1.0, "NUM_BLOCKS": -1, "OUTPUT_STRIDE": 32,
                  "MIN_DEPTH": 8, "INPUT_SIZE": 0},  # INPUT_SIZE: 0 = INPUT.SIZE, else S or [H, W]
        # NET large: the large extractor's architecture on frames at INPUT_SIZE, its features resized to
        # the large grid, through the large memory cell (WIDTH, NUM_BLOCKS, OUTPUT_STRIDE unused); SHARE:
        # its very weights and projection (no training), else copies of them where MODEL.WEIGHTS gives
        # none, to fit to the smaller frames (TRAIN.OBJECTIVE distill_small)
        "SMALL": {"NET": "mobilenet_v2", "WIDTH": 0.35, "NUM_BLOCKS": -1, "OUTPUT_STRIDE": 16,
                  "MIN_DEPTH": 8, "INPUT_SIZE": 160, "SHARE": True},
        "LSTM": {"UNITS": 256, "GROUPS": 1, "CLIP": 0.0, "FORGET_BIAS": 1.0, "OUTPUT_BOTTLENECK": False,
                 "KERNEL": 3,
                 # level 0 = frame projection + zero-initialised 1x1 of the memory output: starts as the
                 # frame baseline (warm start from an SSDLite checkpoint); False = the paper's cell
                 "RESIDUAL": False,
                 # with RESIDUAL: level 0 = projection + g * mix, g = sigmoid of a zero-initialised 1x1 conv
                 # of both, one value per cell: a sharp frame can learn to ignore the memory, a degraded one
                 # to lean on it; still exactly the frame baseline before training
                 "RESIDUAL_GATE": False,
                 # with RESIDUAL: what the mix reads. output: the memory's output at this frame (it has seen
                 # the frame); previous_state: h as carried in from earlier frames only, so whatever the
                 # memory adds is evidence from the past by construction (a zero state adds nothing)
                 "RESIDUAL_INPUT": "output"},
        "PYRAMID": {"DEPTHS": [512, 256, 256, 128]},   # levels after level 0 (the memory output)
        "ANCHORS": {"MIN_SCALE": 0.2, "MAX_SCALE": 0.95, "ASPECT_RATIOS": [1.0, 2.0, 0.5, 3.0, 0.3333],
                    "REDUCE_LOWEST": True},
        "BOX_STDS": [0.1, 0.1, 0.2, 0.2],               # = TF-OD box coder scales (10, 10, 5, 5)
        "BN_MOMENTUM": 0.997,                            # running-statistics decay (TF-OD batch norm)
        # initial class probability of every anchor (RetinaNet's prior): the class logits' bias starts at
        # log(p / (1 - p)), the background logit's at -that, so training starts from "background
        # everywhere" instead of 0.5 everywhere; 0 = zero bias (the paper's SSD)
        "CLS_PRIOR": 0.0,
        "WEIGHTS": "",                                   # params to load before training (fine-tuning)
    },
    "MATCHER": {"IOU": 0.5},
    "LOSS": {"CLS_WEIGHT": 1.0, "LOC_WEIGHT": 4.0, "NEG_RATIO": 3, "MAX_NEGATIVES": 3000},
    # network input: S (square) or [H, W] (e.g. [360, 640] for 16:9 video); scaling to [-1, 1] is in the graph
    "INPUT": {"SIZE": 256},
    "INTERLEAVE": {
        "POLICY": "fixed",         # fixed | adaptive | large | small | async
        "TAU": 9,                  # fixed: large every TAU + 1 frames
        # fixed: the large steps fall on frames PHASE, PHASE + TAU + 1, ... (and on a stream's first
        # frame); scoring every phase 0..TAU averages out which frames happen to be large steps
        "PHASE": 0,
        "SMALL_PROB": 0.5,         # training: chance of the small extractor at each step
    },
    "POLICY_NET": {"HISTORY": 20, "HIDDEN": 64, "GAMMA": 0.9, "SPEED_BONUS": 0.05, "LR": 0.001,
                   "EPSILON_START": 1.0, "EPSILON_END": 0.05, "EPSILON_STEPS": 500, "REPLAY": 2000,
                   "BATCH": 32, "TARGET_UPDATE": 50, "STEPS": 200, "WEIGHTS": ""},
    # lib.train.fit keys (see lib/train/loop.py) with the reference's values, plus the clip keys
    "TRAIN": {
        "OPTIMIZER": "rmsprop", "LR": 0.002, "MOMENTUM": 0.9, "RMSPROP_DECAY": 0.9, "EPSILON": 1.0,
        "WD": 4e-5, "LR_SCHEDULE": "periodic", "LR_DECAY_PERIOD": 200000.0, "LR_STEP_UNIT": "iter",
        "LR_FACTOR": 0.95, "CLIP_GRAD_NORM": 10.0, "EPOCHS": 10, "PROGRESS": False, "LOG_EVERY": 10,
        "BATCH_SIZE": 8,           # sequences per batch
        "UNROLL": 4,               # frames per sequence (truncated BPTT length)
        "CARRY_STATE": True,       # consecutive segments of a video, state carried (else random clips;
                                   # ssdlite, having no state, always takes random clips)
        "AUGMENT": True,           # AUGMENTATIONS below, drawn once per clip (same for all its frames)
        "AUGMENTATIONS": ["RandomFlip", "SSDRandomCrop"],   # lib.transforms specs (build_transforms)
        "STILL_IMAGES": "pseudo",  # pseudo (crop-and-shift pseudo-video) | repeat | skip
        # a lane's memory state zeroed before a training frame with this probability (drawn per lane and
        # frame from the data seed): the head also learns to work without the memory's correction, and the
        # memory cannot lean on long histories of the training videos
        "STATE_DROPOUT": 0.0,
        # the state moved along DIS flow inside a training clip as TEST.MOTION moves it at test time (its
        # PRESET and SCALE): each step reads the state warped from the frame that wrote it to its own frame.
        # Without it the memory learns to carry evidence where it was, which the next frame has moved from.
        # A clip's first step reads the state carried in from the lane's last clip as it is (that clip's
        # crop and flip may differ)
        "MOVE_STATE": False,
        # detection | distill_small (fast_slow: the small extractor and its projection learn to give
        # the large extractor's projected features, frame by frame, before interleaved training)
        "OBJECTIVE": "detection",
    },
    "TEST": {
        # post-processing: per class the PRE_NMS_TOP_K best candidates enter NMS (0 = all)
        "SCORE_THRESH": 0.01, "NMS_IOU": 0.5, "MAX_PER_CLASS": 100, "MAX_PER_IMAGE": 100, "PRE_NMS_TOP_K": 400,
        "DRAW_THRESH": 0.3,        # for drawn images
        "PRINT_IMAGES": False,     # save annotated test images (as the port's TEST.PRINT_IMAGES)
        "MAX_IMAGES": 0,           # 0 = all test records
        # results table a test appends its row to ("" = OUTPUT_DIR/results.md + .csv); another .md path
        # (relative to the project root) collects the rows of several runs in one table
        "RESULTS_TABLE": "",
        "QUANTIZE": "",            # int8: extractors and head in int8 on CPU (MKLDNN), the LSTM in float
        # carry: the memory state flows from frame to frame (the method); reset: a zero state before every
        # frame, the same weights -- the ablation that tells what the memory carries over time from what
        # its layers add to a single frame
        "MEMORY": "carry",
        # the memory state moved along the motion since the frame that wrote it (streaming; in training
        # with TRAIN.MOVE_STATE). FLOW dis: OpenCV DIS flow (PRESET, at SCALE of the input size)
        # from each frame to the memory's frame, on the feature grid, warps c and h before the step.
        # PROPAGATE (fast_slow, LSTM.RESIDUAL): a small step's frame term is the last large frame's
        # projection moved the same way (Deep Feature Flow) instead of the small extractor's projection
        "MOTION": {"FLOW": "", "PRESET": "ultrafast", "SCALE": 0.5, "PROPAGATE": False},
        # fast_slow: the small steps run no network; the last frame's detections move along DIS flow
        # between the frames (lib.flow.BoxTracker: PRESET at SCALE of the frame's resolution, scores
        # times DECAY per tracked frame, a box dropped when under MIN_VISIBLE of it stays in the frame).
        # MEMORY: what a large step after tracked frames reads: carry, the state the last large step wrote
        # (moved along the flow with MOTION); reset, a zero state, since the memory skipped those frames
        "TRACK": {"ENABLED": False, "PRESET": "ultrafast", "SCALE": 0.5, "DECAY": 1.0, "MIN_VISIBLE": 0.3,
                  "MEMORY": "carry",
                  # while no tracked box scores CONFIDENT or more (nothing found yet, or it left the view),
                  # a large step comes after SEARCH_TAU small ones instead of waiting for the fixed
                  # schedule's next one (which still runs); -1: off
                  "SEARCH_TAU": -1, "CONFIDENT": 0.5},
    },
})

SIZE_KEYS = ("INPUT.SIZE", "MODEL.LARGE.INPUT_SIZE", "MODEL.SMALL.INPUT_SIZE")   # S or [H, W]
# keys of earlier releases -> their names in the shared schema (read with a warning)
RENAMES = {
    "MODEL.IMAGE_SIZE": "INPUT.SIZE",
    "POST_PROCESS.SCORE_THRESHOLD": "TEST.SCORE_THRESH",
    "POST_PROCESS.IOU_THRESHOLD": "TEST.NMS_IOU",
    "POST_PROCESS.MAX_PER_CLASS": "TEST.MAX_PER_CLASS",
    "POST_PROCESS.MAX_TOTAL": "TEST.MAX_PER_IMAGE",
    "POST_PROCESS.PRE_NMS_TOP_K": "TEST.PRE_NMS_TOP_K",
    "TEST.SCORE_THRESHOLD": "TEST.DRAW_THRESH",
    "DATASET.TEST": "DATASET.VAL",
}
SCHEMA = Schema(DEFAULTS, size_keys=SIZE_KEYS, renames=RENAMES, spec_list_keys=SPEC_LIST_KEYS)


def load(path=None, overrides=None):
    return load_config(path, SCHEMA, overrides=overrides)

