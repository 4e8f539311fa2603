"""Evaluate detections (COCO results JSON) against a dataset's ground truth.

    python -m lib.tools.evaluate --gt PATH [--format voc|coco|csv|vid|kitti] --dets DETS.json \\
        --metric voc07|voc|vid|coco [--max-height H] [--out RESULT.json] [--plots DIR] [--md TABLE.md]

DETS.json is a list of {"image_id" or "file_name", "category_id" or "category", "bbox": [x, y, w, h],
"score"} (what lib.tools.infer writes). Prints a per-class table (markdown) and writes a JSON whose
headline number is under "mAP", with the per-class APs and the metric's breakdowns (VID: motion
slow/medium/fast and area small/medium/large; COCO: the 12 pycocotools numbers). --max-height H scores
the small objects only: boxes at least H px high are ignored like VOC "difficult" ones (voc metrics).
Ground truth is loaded with lib.dataset.load_dataset; --set KEY=VALUE adds keys to its spec.
"""
import argparse
import os
import sys

import yaml

from lib.dataset import load_dataset
from lib.eval import (
    METRICS,
    DetectionsFormatError,
    evaluate,
    read_detections,
    save_pr_curves,
    small_objects_only,
    write_results_table,
)

FORMATS = ("voc", "coco", "csv", "vid", "kitti")


def guess_format(path):
    """Dataset format from the path: .json -> coco, .csv -> csv, a folder by its layout."""
    lower = path.lower()
    if os.path.isfile(path):
        if lower.endswith(".json"):
            return "coco"
        if lower.endswith(".csv"):
            return "csv"
        raise SystemExit(f"--gt {path}: cannot tell the format of this file; pass --format")
    if not os.path.isdir(path):
        raise SystemExit(f"--gt {path}: no such file or folder")
    names = set(os.listdir(path))
    if {"Data", "Annotations"} <= names and os.path.isdir(os.path.join(path, "Annotations", "VID")):
        return "vid"
    if "label_2" in names or os.path.isdir(os.path.join(path, "training", "label_2")):
        return "kitti"
    return "voc"


def _parse_value(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build_spec(args):
    """The lib.dataset.load_dataset spec for the command line."""
    fmt = args.format or guess_format(args.gt)
    spec = {"FORMAT": fmt}
    # folder formats are given by their root, file formats by their annotation file
    spec["ANNOTATIONS" if fmt in ("coco", "csv") else "ROOT"] = os.path.abspath(args.gt)
    if args.split:
        spec["SPLIT"] = args.split
    if args.classes:
        spec["CLASSES"] = args.classes
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        spec[key.strip()] = _parse_value(value)
    return spec


def load_ground_truth(spec):
    return load_dataset(spec)


def run(args):
    spec = build_spec(args)
    dataset = load_ground_truth(spec)
    if len(dataset) == 0:
        raise SystemExit(f"--gt {args.gt}: the dataset has no images ({spec})")
    try:
        detections = read_detections(args.dets, dataset)
    except (DetectionsFormatError, FileNotFoundError) as err:
        raise SystemExit(f"--dets: {err}")
    kwargs = {}
    if args.iou is not None:
        if args.metric == "coco":
            raise SystemExit("--iou does not apply to the coco metric (it averages IoU 0.5:0.95)")
        kwargs["iou"] = args.iou
    if args.metric == "vid" and args.no_motion:
        kwargs["motion"] = False
    if args.max_height is not None:
        if args.metric not in ("voc07", "voc"):
            raise SystemExit("--max-height applies to the voc and voc07 metrics (they honour difficult boxes)")
        if args.max_height <= 0:
            raise SystemExit(f"--max-height {args.max_height}: must be > 0 (pixels)")
        dataset.records = small_objects_only(dataset.records, args.max_height)
    results = evaluate(dataset, detections, args.metric, **kwargs)
    if args.max_height is not None:
        results["max_height"] = args.max_height
    results["gt"] = {"spec": spec, "images": len(dataset), "classes": list(dataset.classes)}
    results["dets"] = {"path": os.path.abspath(args.dets), "count": int(sum(len(d[1]) for d in detections))}
    text = write_results_table(results, md_path=args.md, json_path=args.out)
    print(text)
    if args.plots:
        paths = save_pr_curves(results, args.plots)
        print(f"PR curves: {len(paths)} PNG files in {args.plots}")
    if args.out:
        print(f"results: {args.out}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.tools.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="DETS.json entries are matched to images by image_id (or file_name) "
                                            "and to classes by category name (or category_id).")
    parser.add_argument("--gt", required=True, help="ground truth: dataset folder or annotation file")
    parser.add_argument("--format", choices=FORMATS, help="ground-truth format (default: guessed from --gt)")
    parser.add_argument("--split", help="split / image set name or list file (passed to the reader)")
    parser.add_argument("--classes", help="class list file (label_map.pbtxt, classes CSV or one name per line)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="extra key for lib.dataset.load_dataset's spec (repeatable)")
    parser.add_argument("--dets", required=True, help="detections, COCO results JSON")
    parser.add_argument("--metric", required=True, choices=METRICS)
    parser.add_argument("--iou", type=float, help="IoU threshold for voc/voc07 (default 0.5) or vid's 0.5 cap")
    parser.add_argument("--no-motion", action="store_true", help="vid: skip the motion-speed breakdown")
    parser.add_argument("--max-height", type=float,
                        help="voc/voc07: AP of the boxes lower than this many pixels (taller ones ignored)")
    parser.add_argument("--out", help="write the results JSON here (headline under 'mAP')")
    parser.add_argument("--md", help="write the markdown table here")
    parser.add_argument("--plots", help="write PR curve PNGs into this folder")
    args = parser.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
