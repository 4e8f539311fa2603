"""Command-line plumbing shared by the data tools: turn ``--data PATH [--format F] [--split S]
[--classes FILE] [--snippets G,IOU,BG] [--set KEY=VALUE ...] [--strict]`` into a load_dataset spec."""
import os

import yaml

from . import FORMATS, DatasetError, load_dataset


def add_dataset_args(parser, prefix="", required=True, help_name="dataset"):
    """Add the dataset options (optionally prefixed, e.g. 'in-' gives --in-data, --in-format ...)."""
    p = f"--{prefix}"
    parser.add_argument(f"{p}data", required=required, metavar="PATH",
                        help=f"{help_name}: VOC/KITTI/VID/synthetic folder, COCO .json, CSV .csv, RecordIO "
                             f"prefix or .rec, TFRecord file, or OID boxes .csv")
    parser.add_argument(f"{p}format", choices=FORMATS, default=None,
                        help="format of --data (guessed from the path when left out)")
    parser.add_argument(f"{p}split", default=None,
                        help="split name or list file (VOC/KITTI), image set (VID)")
    parser.add_argument(f"{p}classes", default=None,
                        help="class names: label_map.pbtxt, classes CSV (name,id) or one name per line")
    parser.add_argument(f"{p}snippets", default=None, metavar="MAX_GAP,BREAK_IOU,MIN_BACKGROUND",
                        help="group numbered frames into snippets (VOC), e.g. 3,0.05,5 for speedtrap; "
                             "'-' disables a part")
    parser.add_argument(f"{p}set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra load_dataset key (yaml value), e.g. --set IMAGES_DIR=imgs; repeatable")
    parser.add_argument(f"{p}strict", action="store_true", help="turn dataset warnings into errors")


def guess_format(path):
    """Dataset format from a path."""
    lower = path.lower()
    if lower.endswith(".rec") or (os.path.isfile(path + ".rec") and os.path.isfile(path + ".idx")):
        return "recordio"
    if os.path.isfile(path):
        if lower.endswith(".json"):
            return "coco"
        if lower.endswith(".csv"):
            return "csv"
        if lower.endswith((".record", ".tfrecord")) or ".tfrecord" in lower:
            return "tfrecord"
        raise DatasetError(f"{path}: cannot tell the dataset format of this file; pass --format")
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: no such file or folder")
    names = set(os.listdir(path))
    if os.path.isfile(os.path.join(path, "synthetic.json")):
        return "synthetic"
    if {"Data", "Annotations"} <= names and os.path.isdir(os.path.join(path, "Annotations", "VID")):
        return "vid"
    if "label_2" in names or os.path.isdir(os.path.join(path, "training", "label_2")):
        return "kitti"
    return "voc"


def parse_snippets(text):
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise DatasetError(f"--snippets {text!r}: expected MAX_GAP,BREAK_IOU,MIN_BACKGROUND (e.g. 3,0.05,5)")
    conv = [int, float, int]
    try:
        vals = [None if p.strip() in ("-", "") else c(p) for c, p in zip(conv, parts)]
    except ValueError:
        raise DatasetError(f"--snippets {text!r}: not numbers") from None
    return {"max_gap": vals[0] or 1, "break_iou": vals[1], "min_background": vals[2]}


def dataset_spec(args, prefix=""):
    """The load_dataset spec from parsed arguments (prefix as given to add_dataset_args)."""
    key = prefix.replace("-", "_")
    g = lambda name: getattr(args, key + name)  # noqa: E731
    path = g("data")
    fmt = g("format") or guess_format(path)
    spec = {"FORMAT": fmt}
    if fmt in ("voc", "kitti", "vid", "synthetic"):
        spec["ROOT"] = path
    elif fmt in ("coco", "csv", "oid"):
        spec["ANNOTATIONS"] = path
    elif fmt == "recordio":
        spec["PREFIX"] = path[:-4] if path.endswith(".rec") else path
    elif fmt == "tfrecord":
        spec["PATHS"] = path
        spec["OUT_DIR"] = os.path.splitext(path)[0] + "_images"
    if g("split"):
        spec["IMAGE_SET" if fmt in ("vid", "synthetic") else "SPLIT"] = g("split")
    if g("classes"):
        spec["LABEL_MAP" if fmt == "tfrecord" else "CLASSES"] = g("classes")
    if g("snippets"):
        spec["SNIPPETS"] = parse_snippets(g("snippets"))
    if g("strict"):
        spec["STRICT"] = True
    for item in g("set"):
        if "=" not in item:
            raise DatasetError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        spec[k.strip().upper()] = yaml.safe_load(v)
    return spec


def dataset_from_args(args, prefix=""):
    return load_dataset(dataset_spec(args, prefix))


def empty_dataset_error(spec, dataset, what="--data"):
    """DatasetError for a dataset without images: names the path and format and says why (what the
    reader skipped, or that it found nothing to read)."""
    path = spec.get("ROOT") or spec.get("ANNOTATIONS") or spec.get("PREFIX") or spec.get("PATHS")
    report = getattr(dataset, "report", None)
    if report is not None and report.issues:
        first = report.issues[0]
        where = f"{first['file']}:{first['line']}" if first.get("line") is not None else first["file"]
        why = f"{report.skipped_images} image(s) skipped, e.g. {where}: {first['message']}"
    else:
        why = {"voc": "no .xml annotation file found (or the split lists none)",
               "coco": "the file lists no images", "csv": "the file has no rows",
               "kitti": "no label file found"}.get(spec.get("FORMAT"), "nothing found to read")
    return DatasetError(f"{what} {path} ({spec.get('FORMAT')}): the dataset has no images: {why}")
