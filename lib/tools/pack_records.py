"""Pack a dataset into MXNet RecordIO (im2rec detection format): PREFIX.rec, .idx, .lst, .json.

    python -m lib.tools.pack_records --data PATH [--format F] [--split S] --out PREFIX [--inspect]

The records are readable by gluoncv.data.RecordFileDetection and by lib.dataset.load_recordio.
--inspect prints the first record read back and the class counts.
"""
import argparse
import sys

from lib.cli import user_errors_exit_2
from lib.dataset import DatasetError, load_recordio, pack_records
from lib.dataset.cli import add_dataset_args, dataset_from_args


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.pack_records", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--out", required=True, help="output prefix (writes PREFIX.rec/.idx/.lst/.json)")
    ap.add_argument("--inspect", action="store_true", help="read back and print the first record")
    args = ap.parse_args(argv)
    try:
        ds = dataset_from_args(args)
        if not len(ds):
            raise DatasetError(f"--data {args.data}: nothing to pack, the dataset has no images"
                               + (f" ({ds.report.summary()})" if ds.report.issues else ""))
        n = pack_records(ds, args.out, progress=True)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"packed {n} records ({sum(r.num_boxes for r in ds)} boxes, {ds.num_classes} classes) into {args.out}.rec")
    if n < len(ds):
        first = ds.report.issues[n - len(ds)]
        print(f"warning: {len(ds) - n} image(s) not packed because they fail to decode (first: {first['file']}: "
              f"{first['message']})", file=sys.stderr)
    if ds.report.issues:
        print(ds.report.summary())
    if args.inspect:
        back = load_recordio(args.out)
        if len(back):
            r = back[0]
            print(f"first record: {r.image_id} {r.width}x{r.height}, labels {r.labels.tolist()}, "
                  f"boxes {[[round(float(v), 2) for v in b] for b in r.boxes]}")
        print("class counts:", back.class_counts())
    return 0


if __name__ == "__main__":
    sys.exit(main())
