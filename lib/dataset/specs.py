"""Dataset specs from configs: one way to resolve their relative paths, one way to load a list of them.

A config's DATASET.TRAIN / DATASET.VAL is a ``load_dataset`` spec or a list of them; relative paths in
a spec are relative to the project root (as every path of a config). ``load_datasets`` concatenates
the list (same classes), and a spec ``{FORMAT: background, IMAGES_DIR: folder}`` adds every image of a
folder as a frame without boxes (what cuts false positives on footage without the object).
"""
import os

from lib.config import ConfigError, project_path

from . import load_dataset
from .io import DatasetError, image_size
from .record import DetectionDataset, Record
from .video import list_frames

# the spec keys that hold paths (files or folders), in every format
PATH_KEYS = ("ROOT", "ANNOTATIONS", "IMAGES_DIR", "ANNOTATIONS_DIR", "LABELS_DIR", "BASE_DIR", "PREFIX",
             "DESCRIPTIONS", "OUT_DIR", "LABEL_MAP", "PATHS", "CLASSES", "SPLIT")
BACKGROUND = "background"


def resolve_spec(spec, base=None, out_dir=None):
    """Upper-case keys, relative paths made absolute against ``base`` (the project root by default).

    SPLIT is a path only when it looks like one (a split name such as ``train`` stays as it is); CLASSES
    is a path when it is a string (a list of names stays as it is). A TF-OD ``PATH`` (what lib.tools.import_tf_pipeline writes) becomes PATHS, and
    its images go to ``out_dir``/tfrecord_images unless OUT_DIR is given."""
    out = {str(k).upper(): v for k, v in dict(spec).items()}
    if "PATH" in out and str(out.get("FORMAT", "")).lower() == "tfrecord":
        out["PATHS"] = out.pop("PATH")
        if out_dir:
            out.setdefault("OUT_DIR", os.path.join(out_dir, "tfrecord_images"))
    if out.get("LABEL_MAP") is None:
        out.pop("LABEL_MAP", None)
    for key in PATH_KEYS:
        value = out.get(key)
        if key == "SPLIT" and isinstance(value, str) and not (os.sep in value or value.endswith(".txt")):
            continue   # a split name, not a file
        if isinstance(value, str) and value:
            out[key] = project_path(value, base)
        elif isinstance(value, list) and key == "PATHS":
            out[key] = [project_path(v, base) for v in value]
    return out


def background_dataset(images_dir, classes, name=BACKGROUND):
    """Records without boxes for every image of a folder (frames with nothing to detect)."""
    records = []
    for path in list_frames(images_dir):
        width, height = image_size(path)
        records.append(Record(image=os.path.abspath(path), width=width, height=height,
                              image_id=os.path.splitext(os.path.basename(path))[0]))
    return DetectionDataset(records, list(classes), name)


def spec_list(specs):
    """None / {} -> [], one mapping -> [mapping], a list as it is."""
    if not specs:
        return []
    return [specs] if isinstance(specs, dict) else list(specs)


def load_datasets(specs, classes=None, source="config", key="DATASET", base=None, out_dir=None):
    """A spec or a list of specs -> one DetectionDataset (records concatenated, classes checked), or
    None when there is no spec. Errors are ConfigError naming ``source`` and ``key[index]``."""
    specs = spec_list(specs)
    if not specs:
        return None
    classes = list(classes) if classes else None
    sets = []
    for k, spec in enumerate(specs):
        where = f"{source}: {key}[{k}]" if len(specs) > 1 else f"{source}: {key}"
        spec = resolve_spec(spec, base, out_dir)
        if str(spec.get("FORMAT", "")).lower() == BACKGROUND:
            if "IMAGES_DIR" not in spec:
                raise ConfigError(f"{where}: FORMAT background needs IMAGES_DIR")
            sets.append(spec)     # loaded once the classes are known
            continue
        if classes is not None and "CLASSES" not in spec:
            spec["CLASSES"] = classes
        try:
            ds = load_dataset(spec)
        except (DatasetError, FileNotFoundError) as err:
            raise ConfigError(f"{where} {spec}: {err}") from None
        classes = classes or list(ds.classes)
        if list(ds.classes) != classes:
            raise ConfigError(f"{where} has classes {list(ds.classes)}, expected {classes}")
        sets.append(ds)
    if classes is None:
        raise ConfigError(f"{source}: {key}: background images alone need the class list (CLASSES)")
    sets = [background_dataset(s["IMAGES_DIR"], classes) if isinstance(s, dict) else s for s in sets]
    if len(sets) == 1:
        return sets[0]
    merged = DetectionDataset([r for ds in sets for r in ds.records], classes, "+".join(ds.name for ds in sets))
    video_info = {}
    for ds in sets:
        video_info.update(getattr(ds, "video_info", None) or {})
    merged.video_info = video_info
    return merged
