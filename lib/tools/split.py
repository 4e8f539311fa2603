"""Split a dataset into train/test lists, at random or by snippet.

    python -m lib.tools.split --data PATH [--format F] [--snippets 3,0.05,5] --out DIR
        [--by random|snippet] [--test-fraction 0.2] [--seed 0] [--names train,test]

--by snippet keeps every snippet (run of consecutive frames, see lib.dataset.detect_snippets; for VID
the videos) on one side, so no near-duplicate frames land in both train and test; still images are
split at random. Writes DIR/<train>.txt and DIR/<test>.txt (one id per line: the annotation/image
file stem, what load_voc's SPLIT reads) and DIR/split.json (counts, snippets on each side).
"""
import argparse
import json
import os
import sys

import numpy as np

from lib.cli import user_errors_exit_2
from lib.dataset import DatasetError, load_dataset
from lib.dataset.cli import add_dataset_args, dataset_spec, empty_dataset_error


def split_dataset(dataset, by="random", test_fraction=0.2, seed=0):
    """Indices (train, test). 'snippet': whole snippets (Record.video) go to one side; test gets
    snippets (in a seeded random order) until it holds >= test_fraction of the frames."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    n = len(dataset)
    target = int(round(test_fraction * n))
    if by == "random":
        order = rng.permutation(n)
        return sorted(order[target:].tolist()), sorted(order[:target].tolist())
    if by != "snippet":
        raise ValueError(f"by must be random|snippet, got {by!r}")
    groups = {}
    for i, rec in enumerate(dataset):
        groups.setdefault(rec.video if rec.video is not None else f"__still_{i}", []).append(i)
    names = sorted(groups)
    order = rng.permutation(len(names))
    test = []
    for k in order:
        if len(test) >= target:
            break
        test += groups[names[k]]
    test_set = set(test)
    return [i for i in range(n) if i not in test_set], sorted(test)


def _list_id(rec):
    return os.path.splitext(os.path.basename(rec.image_id))[0]


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.split", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--out", required=True, help="folder for the list files")
    ap.add_argument("--by", choices=("random", "snippet"), default="random")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--names", default="train,test", help="names of the two lists (default train,test)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.names.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        print(f"error: --names {args.names!r}: needs two different comma-separated names", file=sys.stderr)
        return 2
    if not 0 < args.test_fraction < 1:
        print(f"error: --test-fraction {args.test_fraction:g}: must be between 0 and 1 (exclusive)", file=sys.stderr)
        return 2
    try:
        spec = dataset_spec(args)
        ds = load_dataset(spec)
        if not len(ds):
            raise empty_dataset_error(spec, ds)
        if args.by == "snippet" and all(r.video is None for r in ds):
            raise DatasetError("--by snippet: no snippets in this dataset (give --snippets for numbered frames)")
        train, test = split_dataset(ds, args.by, args.test_fraction, args.seed)
        for name, side in zip(names, (train, test)):
            if not side:
                raise DatasetError(f"--test-fraction {args.test_fraction:g} of {len(ds)} image(s)"
                                   + (f" in {len({r.video for r in ds})} snippet(s)" if args.by == "snippet" else "")
                                   + f" leaves the {name} list empty")
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    # VOC/KITTI lists hold file stems; VID lists hold the frame path inside Data/VID
    vid = spec["FORMAT"] in ("vid", "synthetic")
    ids = [r.image_id.split("Data/VID/", 1)[-1] if vid else _list_id(r) for r in ds]
    summary = {"by": args.by, "seed": args.seed, "test_fraction": args.test_fraction}
    for name, idx in zip(names, (train, test)):
        with open(os.path.join(args.out, name + ".txt"), "w", encoding="utf-8") as f:
            f.write("".join(ids[i] + "\n" for i in idx))
        summary[name] = {"images": len(idx), "boxes": int(sum(ds[i].num_boxes for i in idx)),
                         "snippets": sorted({ds[i].video for i in idx if ds[i].video is not None})}
    with open(os.path.join(args.out, "split.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"{names[0]}: {len(train)} images, {names[1]}: {len(test)} images ({args.by}, seed {args.seed}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
