"""Evaluate detections (COCO results JSON) against a dataset's ground truth.

    python -m lib.tools.evaluate --gt PATH [--format voc|coco|csv|vid|kitti] --dets DETS.json \\
        --metric voc07|voc|vid|coco [--iou T] [--max-height H] [--motion-iou MAT] [--out RESULT.json]
        [--plots DIR] [--md TABLE.md]

DETS.json is a list of {"image_id" or "file_name", "category_id" or "category", "bbox": [x, y, w, h],
"score"} (what lib.tools.infer writes). Prints a per-class table (markdown) and writes a JSON whose
headline number is under "mAP", with the per-class APs and the metric's breakdowns (VID: motion
slow/medium/fast and area small/medium/large; COCO: the 12 pycocotools numbers). --max-height H scores
the small objects only: boxes at least H px high are ignored like VOC "difficult" ones (voc metrics).
Ground truth is loaded with lib.dataset.load_dataset; --set KEY=VALUE adds keys to its spec. Image files
are not needed (only the annotations; an image whose size they lack is left out, and the run says how
many and why). --motion-iou reads the official imagenet_vid_groundtruth_motion_iou.mat of the FGFA
release (with --split VID_val_frames: the paper's exact slow/medium/fast breakdown). A user error is one
'error:' line naming the option or file, exit status 2.
"""
import argparse
import os
import sys

import yaml

from lib.cli import user_errors_exit_2
from lib.dataset import DatasetError, load_dataset
from lib.dataset.cli import guess_format
from lib.eval import (
    METRICS,
    DetectionsFormatError,
    evaluate,
    read_detections,
    save_pr_curves,
    small_objects_only,
    write_results_table,
)
from lib.eval.vid import read_motion_iou_mat

FORMATS = ("voc", "coco", "csv", "vid", "kitti")


class UserError(Exception):
    """A bad command line or input: printed as one 'error:' line, exit status 2."""


def _parse_value(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build_spec(args):
    """The lib.dataset.load_dataset spec for the command line. Image files are not opened
    (CHECK_IMAGES none): the metrics need only the annotations; an image whose size the annotations
    do not give is the one exception (its header is read, and it is skipped when missing)."""
    try:
        fmt = args.format or guess_format(args.gt)
    except DatasetError as err:
        raise UserError(f"--gt {err}") from None
    spec = {"FORMAT": fmt, "CHECK_IMAGES": "none"}
    # folder formats are given by their root, file formats by their annotation file
    spec["ANNOTATIONS" if fmt in ("coco", "csv") else "ROOT"] = os.path.abspath(args.gt)
    if args.split:
        # vid: train / val pick the folder under Annotations/VID, anything else is an image set
        spec["IMAGE_SET" if fmt == "vid" and args.split not in ("train", "val", "test") else "SPLIT"] = args.split
    if args.classes:
        spec["CLASSES"] = args.classes
    for item in args.set or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        spec[key.strip().upper()] = _parse_value(value)
    return spec


def load_ground_truth(spec):
    return load_dataset(spec)


def check_arguments(args):
    """Ranges and combinations of the options, each error naming its flag."""
    if args.iou is not None:
        if args.metric == "coco":
            raise UserError("--iou does not apply to the coco metric (it averages IoU 0.5:0.95)")
        if not 0 < args.iou <= 1:
            raise UserError(f"--iou {args.iou:g}: an IoU threshold must be in (0, 1]")
    if args.max_height is not None:
        if args.metric not in ("voc07", "voc"):
            raise UserError("--max-height applies to the voc and voc07 metrics (they honour difficult boxes)")
        if not args.max_height > 0:
            raise UserError(f"--max-height {args.max_height:g}: must be > 0 (pixels)")
    if args.motion_iou is not None:
        if args.metric != "vid":
            raise UserError("--motion-iou applies to the vid metric only")
        if args.no_motion:
            raise UserError("--motion-iou and --no-motion contradict each other")
        if not os.path.isfile(args.motion_iou):
            raise UserError(f"--motion-iou {args.motion_iou}: no such file")


def skipped_note(dataset):
    """One line saying how many ground-truth images were left out and why (None when none were)."""
    report = getattr(dataset, "report", None)
    if report is None or not report.skipped_images:
        return None
    skipped = [i for i in report.issues if "skipped" in i["message"]]
    first = skipped[0] if skipped else report.issues[0]
    where = f"{first['file']}:{first['line']}" if first.get("line") is not None else first["file"]
    return (f"{report.skipped_images} ground-truth image(s) left out of the evaluation (their annotations "
            f"could not be used), e.g. {where}: {first['message']}")


def run(args):
    check_arguments(args)
    spec = build_spec(args)
    try:
        dataset = load_ground_truth(spec)
    except DatasetError as err:
        raise UserError(f"--gt: {err}") from None
    note = skipped_note(dataset)
    if len(dataset) == 0:
        raise UserError(f"--gt {args.gt} ({spec['FORMAT']}): no image of the ground truth can be evaluated"
                        + (f": {note}" if note else ": the annotations list no images"))
    if note:
        print(f"warning: {note}", file=sys.stderr)
    # detections on ground-truth images that were left out cannot be scored: counted, not an error
    unscored = [] if dataset.report.skipped_images else None
    try:
        detections = read_detections(args.dets, dataset, unknown_images=unscored)
    except (DetectionsFormatError, FileNotFoundError) as err:
        raise UserError(f"--dets: {err}") from None
    if unscored:
        scored = int(sum(len(d[1]) for d in detections))
        if not scored:
            raise UserError(f"--dets: none of its detections is on an image of the ground truth that can be "
                            f"evaluated (e.g. {unscored[0]})")
        print(f"warning: {len(unscored)} detection(s) on images left out of the ground truth are not scored",
              file=sys.stderr)
    kwargs = {}
    if args.iou is not None:
        kwargs["iou"] = args.iou
    if args.metric == "vid" and args.no_motion:
        kwargs["motion"] = False
    if args.motion_iou is not None:
        try:
            kwargs["precomputed_motion_ious"] = read_motion_iou_mat(args.motion_iou, dataset.records)
        except ValueError as err:
            raise UserError(f"--motion-iou: {err}") from None
    if args.max_height is not None:
        dataset.records = small_objects_only(dataset.records, args.max_height)
    results = evaluate(dataset, detections, args.metric, **kwargs)
    if args.max_height is not None:
        results["max_height"] = args.max_height
    results["gt"] = {"spec": spec, "images": len(dataset), "classes": list(dataset.classes),
                     "skipped_images": dataset.report.skipped_images}
    results["dets"] = {"path": os.path.abspath(args.dets), "count": int(sum(len(d[1]) for d in detections)),
                       "unscored": len(unscored or [])}
    text = write_results_table(results, md_path=args.md, json_path=args.out)
    print(text)
    if args.plots:
        paths = save_pr_curves(results, args.plots)
        print(f"PR curves: {len(paths)} PNG files in {args.plots}")
    if args.out:
        print(f"results: {args.out}")
    return results


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.tools.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="DETS.json entries are matched to images by image_id (or file_name) "
                                            "and to classes by category name (or category_id).")
    parser.add_argument("--gt", required=True, help="ground truth: dataset folder or annotation file")
    parser.add_argument("--format", choices=FORMATS, help="ground-truth format (default: guessed from --gt)")
    parser.add_argument("--split", help="split / image set name or list file (passed to the reader; vid: train|val "
                                        "is the folder, anything else an image set such as VID_val_frames)")
    parser.add_argument("--classes", help="class list file (label_map.pbtxt, classes CSV or one name per line)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="extra key for lib.dataset.load_dataset's spec (repeatable)")
    parser.add_argument("--dets", required=True, help="detections, COCO results JSON")
    parser.add_argument("--metric", required=True, choices=METRICS)
    parser.add_argument("--iou", type=float, help="IoU threshold for voc/voc07 (default 0.5) or vid's 0.5 cap")
    parser.add_argument("--no-motion", action="store_true", help="vid: skip the motion-speed breakdown")
    parser.add_argument("--motion-iou", metavar="MAT",
                        help="vid: per-gt motion IoUs from the official imagenet_vid_groundtruth_motion_iou.mat "
                             "(with --split VID_val_frames: the paper's exact slow/medium/fast numbers; default: "
                             "computed from the tracks)")
    parser.add_argument("--max-height", type=float,
                        help="voc/voc07: AP of the boxes lower than this many pixels (taller ones ignored)")
    parser.add_argument("--out", help="write the results JSON here (headline under 'mAP')")
    parser.add_argument("--md", help="write the markdown table here")
    parser.add_argument("--plots", help="write PR curve PNGs into this folder")
    args = parser.parse_args(argv)
    try:
        run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
