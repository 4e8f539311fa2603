"""Convert a dataset between formats.

    python -m lib.tools.convert --data PATH [--format F] [--split S] --to voc|coco|csv|kitti|recordio|tfrecord
        --out PATH [--images copy|link|reference] [--label-map OUT.pbtxt]

--out is a folder for voc and kitti, a file for coco (.json), csv (.csv; the classes file is written
next to it as <name>_classes.csv), tfrecord, and a prefix for recordio. Samples the reader had to skip
are reported; with --strict any problem stops the conversion.
"""
import argparse
import os
import sys

from lib.cli import user_errors_exit_2
from lib.dataset import (
    DatasetError,
    export_tfrecord,
    pack_records,
    write_coco,
    write_csv,
    write_kitti,
    write_label_map,
    write_voc,
)
from lib.dataset.cli import add_dataset_args, dataset_from_args

TARGETS = ("voc", "coco", "csv", "kitti", "recordio", "tfrecord")


def convert(ds, to, out, images="copy", split_name="all"):
    """Write ``ds`` in format ``to``. Returns the number of images written (recordio and tfrecord
    decode-check every image and leave out the ones that fail, reported in ds.report)."""
    if to == "recordio":
        return pack_records(ds, out, progress=True)
    if to == "tfrecord":
        return export_tfrecord(ds, out)
    if to == "voc":
        write_voc(ds, out, split=split_name, images=images)
    elif to == "coco":
        write_coco(ds, out)
    elif to == "csv":
        write_csv(ds, out, classes_path=os.path.splitext(out)[0] + "_classes.csv")
    elif to == "kitti":
        write_kitti(ds, os.path.join(out, "label_2"))
    else:
        raise ValueError(f"unknown target format {to!r}")
    return len(ds)


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.convert", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--to", required=True, choices=TARGETS, help="output format")
    ap.add_argument("--out", required=True, help="output folder / file / prefix (see above)")
    ap.add_argument("--images", choices=("copy", "link", "reference"), default="copy",
                    help="VOC output: copy images, symlink them, or only reference their path")
    ap.add_argument("--label-map", default=None, help="also write a TF OD label_map.pbtxt here")
    args = ap.parse_args(argv)
    try:
        ds = dataset_from_args(args)
        if not len(ds):
            raise DatasetError(f"--data {args.data}: nothing to convert, the dataset has no images"
                               + (f" ({ds.report.summary()})" if ds.report.issues else ""))
        skipped_before = ds.report.skipped_images
        written = convert(ds, args.to, args.out, images=args.images,
                          split_name=os.path.splitext(os.path.basename(args.split))[0] if args.split else "all")
        if args.label_map:
            write_label_map(args.label_map, ds.classes)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    left_out = ds.report.skipped_images - skipped_before
    print(f"{written} images, {sum(r.num_boxes for r in ds)} boxes, classes {ds.classes} -> {args.to} {args.out}")
    if left_out:
        first = ds.report.issues[-left_out]
        print(f"warning: {left_out} image(s) left out because they fail to decode (first: {first['file']}: "
              f"{first['message']})", file=sys.stderr)
    if ds.report.issues:
        print(ds.report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
