"""Datasets: the Record type, readers/writers of every format, video tools, samplers, synthetic data.

``load_dataset(spec)`` dispatches on ``spec["FORMAT"]``; keys (upper case, as in yaml configs; lower
case accepted too). Common optional keys: CLASSES (list or label_map.pbtxt / classes file), STRICT
(warnings become errors), CHECK_IMAGES (none|exists|intact|header|decode; default intact: a missing,
empty or truncated image file is reported and skipped), ALLOW_EMPTY, NAME.

- voc:       ROOT, SPLIT (name, list file or list), ANNOTATIONS_DIR, IMAGES_DIR, KEEP_DIFFICULT,
             SNIPPETS (dict of detect_snippets arguments: max_gap, break_iou, min_background)
- coco:      ANNOTATIONS (json), IMAGES_DIR
- csv:       ANNOTATIONS (csv), CLASSES (classes csv, name,id), BASE_DIR
- kitti:     ROOT, LABELS_DIR, IMAGES_DIR, SPLIT (list file)
- vid:       ROOT, IMAGE_SET (name in ImageSets/ or path), SPLIT (train|val, when no IMAGE_SET),
             KIND (auto|vid|det), WNIDS
- oid:       ANNOTATIONS (boxes csv), DESCRIPTIONS (class descriptions csv), IMAGES_DIR, LABELS_FILTER
- tfrecord:  PATHS (file or list), OUT_DIR (where images are written), LABEL_MAP
- recordio:  PREFIX (path without .rec/.idx)
- synthetic: ROOT (generated there when missing), SEED, NUM_VIDEOS, NUM_FRAMES, WIDTH, HEIGHT,
             NUM_CLASSES, MAX_OBJECTS, FAST_FRACTION, DEGRADED_FRACTION, SPLIT, IMAGE_SET

Example (the speedtrap set, snippets as its README lists them):
    {"FORMAT": "voc", "ROOT": "data/speedtrap", "SPLIT": "train",
     "SNIPPETS": {"max_gap": 3, "break_iou": 0.05, "min_background": 5}}
"""

from .coco import coco_dict, load_coco, write_coco
from .csv_format import load_csv, write_csv
from .io import (
    CHECK_MODES,
    DEFAULT_CHECK,
    DatasetError,
    DatasetReport,
    ImageReadError,
    check_image,
    decode_image_bytes,
    image_is_complete,
    image_size,
    read_image,
    read_image_or_fallback,
    verify_images,
)
from .kitti import load_kitti, write_kitti
from .labelmap import load_classes_file, read_classes_csv, read_label_map, write_classes_csv, write_label_map
from .oid import load_oid
from .record import DetectionDataset, Record, spread_indices
from .recordio import load_recordio, pack_records
from .sampling import ClipSampler, NeighborSampler, crop_and_shift_windows, load_clip, sample_neighbors
from .synthetic import ensure_synthetic, load_synthetic
from .tfrecord_import import export_tfrecord, import_tfrecord
from .vid import VID_CLASSES, VID_WNIDS, load_vid, read_image_set
from .video import (
    Snippet,
    assign_snippets,
    detect_snippets,
    extract_frames,
    frame_number,
    list_frames,
    video_frames,
    video_info,
)
from .voc import load_voc, parse_voc_xml, write_voc

SPEEDTRAP_SNIPPETS = {"max_gap": 3, "break_iou": 0.05, "min_background": 5}

FORMATS = ("voc", "coco", "csv", "kitti", "vid", "tfrecord", "recordio", "synthetic", "oid")

_KEYS = {
    "voc": {"ROOT", "SPLIT", "ANNOTATIONS_DIR", "IMAGES_DIR", "KEEP_DIFFICULT", "SNIPPETS"},
    "coco": {"ANNOTATIONS", "IMAGES_DIR"},
    "csv": {"ANNOTATIONS", "BASE_DIR"},
    "kitti": {"ROOT", "LABELS_DIR", "IMAGES_DIR", "SPLIT"},
    "vid": {"ROOT", "IMAGE_SET", "SPLIT", "KIND", "WNIDS"},
    "oid": {"ANNOTATIONS", "DESCRIPTIONS", "IMAGES_DIR", "LABELS_FILTER"},
    "tfrecord": {"PATHS", "OUT_DIR", "LABEL_MAP"},
    "recordio": {"PREFIX"},
    "synthetic": {"ROOT", "SEED", "NUM_VIDEOS", "NUM_FRAMES", "WIDTH", "HEIGHT", "NUM_CLASSES",
                  "MAX_OBJECTS", "FAST_FRACTION", "DEGRADED_FRACTION", "SPLIT", "IMAGE_SET"},
}
_COMMON = {"FORMAT", "CLASSES", "STRICT", "CHECK_IMAGES", "ALLOW_EMPTY", "NAME"}
_REQUIRED = {"voc": ["ROOT"], "coco": ["ANNOTATIONS"], "csv": ["ANNOTATIONS"], "kitti": ["ROOT"],
             "vid": ["ROOT"], "oid": ["ANNOTATIONS", "DESCRIPTIONS", "IMAGES_DIR"],
             "tfrecord": ["PATHS", "OUT_DIR"], "recordio": ["PREFIX"], "synthetic": ["ROOT"]}


# the key that picks a subset of a format's frames (a split list, an image set)
_SUBSET_KEYS = {"voc": "SPLIT", "kitti": "SPLIT", "vid": "IMAGE_SET", "synthetic": "IMAGE_SET"}


def whole_videos_spec(spec):
    """The spec of the same images without the subset of frames it picks (voc/kitti SPLIT,
    vid/synthetic IMAGE_SET); None when it picks no subset (the videos are whole already)."""
    spec = {str(k).upper(): v for k, v in dict(spec).items()}
    key = _SUBSET_KEYS.get(str(spec.get("FORMAT", "")).lower())
    if key is None or spec.get(key) in (None, ""):
        return None
    return {k: v for k, v in spec.items() if k != key}


def load_dataset(spec):
    """Load a dataset from a config mapping (see the module docstring for the keys of each FORMAT).
    Unknown keys and missing required keys are errors naming the key."""
    spec = {str(k).upper(): v for k, v in dict(spec).items()}
    fmt = str(spec.get("FORMAT", "")).lower()
    if fmt not in FORMATS:
        raise DatasetError(f"dataset FORMAT must be one of {'|'.join(FORMATS)}, got {spec.get('FORMAT')!r}")
    unknown = set(spec) - _KEYS[fmt] - _COMMON
    if unknown:
        raise DatasetError(f"unknown key(s) {sorted(unknown)} for FORMAT {fmt}; allowed: "
                           f"{sorted(_KEYS[fmt] | _COMMON)}")
    missing = [k for k in _REQUIRED[fmt] if k not in spec]
    if missing:
        raise DatasetError(f"FORMAT {fmt} needs key(s) {missing}")
    g = spec.get
    if g("CHECK_IMAGES", DEFAULT_CHECK) not in CHECK_MODES:
        raise DatasetError(f"dataset CHECK_IMAGES must be one of {'|'.join(CHECK_MODES)}, got {g('CHECK_IMAGES')!r}")
    common = {"strict": bool(g("STRICT", False)), "name": g("NAME")}
    check = {"check_images": g("CHECK_IMAGES", DEFAULT_CHECK)}
    empty = {"allow_empty": g("ALLOW_EMPTY", True)}
    if fmt == "voc":
        return load_voc(g("ROOT"), split=g("SPLIT"), classes=g("CLASSES"), annotations_dir=g("ANNOTATIONS_DIR"),
                        images_dir=g("IMAGES_DIR"), keep_difficult=g("KEEP_DIFFICULT", True),
                        snippets=g("SNIPPETS"), **check, **empty, **common)
    if fmt == "coco":
        return load_coco(g("ANNOTATIONS"), images_dir=g("IMAGES_DIR"), classes=g("CLASSES"), **check, **empty,
                         **common)
    if fmt == "csv":
        return load_csv(g("ANNOTATIONS"), classes=g("CLASSES"), base_dir=g("BASE_DIR"), **check, **empty, **common)
    if fmt == "kitti":
        return load_kitti(g("ROOT"), classes=g("CLASSES"), labels_dir=g("LABELS_DIR"), images_dir=g("IMAGES_DIR"),
                          split=g("SPLIT"), **check, **empty, **common)
    if fmt == "vid":
        return load_vid(g("ROOT"), image_set=g("IMAGE_SET"), split=g("SPLIT", "train"), classes=g("CLASSES"),
                        wnids=g("WNIDS"), kind=g("KIND", "auto"), **check, **empty, **common)
    if fmt == "oid":
        return load_oid(g("ANNOTATIONS"), g("DESCRIPTIONS"), g("IMAGES_DIR"), labels_filter=g("LABELS_FILTER"),
                        **check, **common)
    if fmt == "tfrecord":
        return import_tfrecord(g("PATHS"), g("OUT_DIR"), label_map=g("LABEL_MAP"), **common)
    if fmt == "recordio":
        return load_recordio(g("PREFIX"), classes=g("CLASSES"), **common)
    root, split = g("ROOT"), g("SPLIT", "train")
    try:
        params = {"seed": int(g("SEED", 0)), "num_videos": int(g("NUM_VIDEOS", 4)),
                  "num_frames": int(g("NUM_FRAMES", 30)), "width": int(g("WIDTH", 320)),
                  "height": int(g("HEIGHT", 240)), "num_classes": int(g("NUM_CLASSES", 4)),
                  "max_objects": int(g("MAX_OBJECTS", 3)), "fast_fraction": float(g("FAST_FRACTION", 0.3)),
                  "degraded_fraction": float(g("DEGRADED_FRACTION", 0.0)), "split": str(split)}
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"synthetic dataset {root}: a numeric key has a non-numeric value ({exc})") from None
    given = {"SEED", "NUM_VIDEOS", "NUM_FRAMES", "WIDTH", "HEIGHT", "NUM_CLASSES", "MAX_OBJECTS", "FAST_FRACTION",
             "DEGRADED_FRACTION", "SPLIT"} & set(spec)
    ensure_synthetic(root, params, checked=[k.lower() for k in given])
    return load_synthetic(root, split, image_set=g("IMAGE_SET"), **check, strict=common["strict"])
