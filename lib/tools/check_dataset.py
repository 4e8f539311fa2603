"""Check a dataset before training: what is broken, what is there.

    python -m lib.tools.check_dataset --data PATH [--format F] [--split S] [--snippets 3,0.05,5]
        [--compare-split OTHER] [--out DIR] [--fail-on-problems]

Reports images without annotations and annotations without images, malformed files, invalid or
out-of-image boxes, unknown classes (each naming the file and line), class counts, box sizes, and
the snippets found; with --compare-split, the snippets (near-duplicate frames) shared with another
split. With --out, writes DIR/check.json and DIR/box_sizes.png (histograms of box width,
height and sqrt(area) in pixels). Exit code 1 with --fail-on-problems when anything was wrong.
"""
import argparse
import json
import os
import sys

import numpy as np

from lib.cli import user_errors_exit_2
from lib.dataset import DatasetError, detect_snippets, frame_number, load_dataset
from lib.dataset.cli import add_dataset_args, dataset_spec, empty_dataset_error
from lib.dataset.io import IMAGE_EXTENSIONS


def unannotated_images(dataset, spec):
    """Image files next to the dataset's images that no record uses (only for whole folders, not splits)."""
    if spec.get("SPLIT") or spec.get("IMAGE_SET") or spec["FORMAT"] in ("recordio", "tfrecord"):
        return None
    used = {os.path.abspath(r.image) for r in dataset}
    folders = {os.path.dirname(p) for p in used}
    if spec["FORMAT"] == "voc" and not dataset.records:
        return None
    out = []
    exts = tuple(e.lower() for e in IMAGE_EXTENSIONS)
    for folder in sorted(folders):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.lower().endswith(exts) and path not in used:
                out.append(path)
    return out


def box_statistics(dataset):
    boxes = np.concatenate([r.boxes for r in dataset]) if len(dataset) else np.zeros((0, 4), np.float32)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    stats = {"boxes": int(len(boxes))}
    if len(boxes):
        side = np.sqrt(w * h)
        stats.update({"width": _summary(w), "height": _summary(h), "sqrt_area": _summary(side),
                      "small_lt_32": int((side < 32).sum()), "medium_32_96": int(((side >= 32) & (side < 96)).sum()),
                      "large_ge_96": int((side >= 96).sum())})
    return stats, w, h


def _summary(v):
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def save_box_histogram(path, w, h, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, values, name in zip(axes, (w, h, np.sqrt(w * h)), ("width", "height", "sqrt(area)")):
        ax.hist(values, bins=30 if len(values) else 1, color="#3b7dd8")
        ax.set_xlabel(f"box {name} (px)")
        ax.set_ylabel("boxes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def check(spec):
    ds = load_dataset(spec)
    report = ds.report
    stats, w, h = box_statistics(ds)
    unannotated = unannotated_images(ds, spec)
    groups = ds.snippets()
    detail = getattr(ds, "snippet_list", None) or []
    rule = "dataset" if groups else None
    if not groups:  # numbered frames without snippet info: show what plain frame-number gaps give
        numbered = [(r, frame_number(r.image)) for r in ds]
        numbered = [(r, n) for r, n in numbered if n is not None]
        if len(numbered) > 1 and len({n for _, n in numbered}) == len(numbered):
            detail = detect_snippets([n for _, n in numbered], [r.boxes for r, _ in numbered], max_gap=1)
            groups = {s.name: [numbered[i][0] for i in s.indices] for s in detail}
            rule = "gaps"
    order = [s.name for s in detail if s.name in groups] + sorted(set(groups) - {s.name for s in detail})
    snippets = {name: {"frames": len(groups[name]), "boxes": int(sum(r.num_boxes for r in groups[name]))}
                for name in order}
    for s in detail:
        if s.name in snippets:
            snippets[s.name].update({"first": s.first, "last": s.last, "background": s.background})
    result = {
        "dataset": ds.name, "format": spec["FORMAT"], "images": len(ds),
        "images_without_boxes": int(sum(r.num_boxes == 0 for r in ds)),
        "classes": ds.classes, "class_counts": ds.class_counts(), "box_sizes": stats,
        "problems": report.issues, "skipped_images": report.skipped_images, "dropped_boxes": report.dropped_boxes,
        "clipped_boxes": report.clipped_boxes,
        "annotations_without_images": [i["file"] for i in report.issues if "not found" in i["message"]
                                       and "image" in i["message"]],
        "images_without_annotations": unannotated, "snippets": snippets, "snippet_rule": rule,
    }
    return ds, result, w, h


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.check_dataset", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--out", default=None, help="folder for check.json and box_sizes.png")
    ap.add_argument("--check-images", choices=("exists", "intact", "header", "decode"), default="header",
                    help="how much of each image to read: intact finds truncated files, header also reads the "
                         "size (default), decode reads every pixel as training does (slower)")
    ap.add_argument("--compare-split", default=None, metavar="SPLIT",
                    help="another split of the same data: report snippets (near-duplicate frames) found in both")
    ap.add_argument("--fail-on-problems", action="store_true", help="exit 1 when a problem was found")
    args = ap.parse_args(argv)
    try:
        spec = dataset_spec(args)
        if spec["FORMAT"] not in ("recordio", "tfrecord"):
            spec.setdefault("CHECK_IMAGES", args.check_images)
        ds, result, w, h = check(spec)
        if not len(ds):  # nothing checked is not a pass
            raise empty_dataset_error(spec, ds)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result['dataset']} ({result['format']}): {result['images']} images, {result['box_sizes']['boxes']} "
          f"boxes, {result['images_without_boxes']} images without boxes")
    print("class counts: " + ", ".join(f"{k}: {v}" for k, v in result["class_counts"].items()))
    if result["box_sizes"]["boxes"]:
        s = result["box_sizes"]
        print(f"box sqrt(area) px: min {s['sqrt_area']['min']:.1f}, median {s['sqrt_area']['median']:.1f}, "
              f"max {s['sqrt_area']['max']:.1f}; small(<32) {s['small_lt_32']}, medium {s['medium_32_96']}, "
              f"large(>=96) {s['large_ge_96']}")
    if result["images_without_annotations"]:
        print(f"{len(result['images_without_annotations'])} image(s) without annotations:")
        for p in result["images_without_annotations"][:20]:
            print(f"  {p}")
    if not result["box_sizes"]["boxes"]:
        result["problems"].append({"file": result["dataset"], "line": None,
                                   "message": f"none of the {result['images']} images has a box: a detector "
                                              f"cannot learn from it (class names not matching the classes "
                                              f"file?)"})
    print(f"{len(result['problems'])} problem(s):")
    for i in result["problems"][:50]:
        where = f"{i['file']}:{i['line']}" if i["line"] is not None else i["file"]
        print(f"  {where}: {i['message']}")
    fg = {k: v for k, v in result["snippets"].items() if not v.get("background")}
    if result["snippets"]:
        how = " (frame-number gaps only; --snippets also splits on box jumps)" if result["snippet_rule"] == "gaps" else ""
        print(f"snippets: {len(fg)} + {len(result['snippets']) - len(fg)} background{how}")
        for name, v in result["snippets"].items():
            rng = f" frames {v['first']}-{v['last']}" if "first" in v else ""
            print(f"  {name}: {v['frames']} frames, {v['boxes']} boxes{rng}")
    if args.compare_split:
        other_spec = dict(spec)
        other_spec["IMAGE_SET" if "IMAGE_SET" in spec else "SPLIT"] = args.compare_split
        try:
            other = load_dataset(other_spec)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        mine = {r.video for r in ds if r.video is not None}
        theirs = {r.video for r in other if r.video is not None}
        shared = sorted(mine & theirs)
        same_images = sorted({r.image for r in ds} & {r.image for r in other})
        result["compare_split"] = {"split": args.compare_split, "shared_snippets": shared,
                                   "shared_images": len(same_images)}
        if not mine:
            print(f"compare with {args.compare_split}: no snippets known (give --snippets for numbered frames)")
        else:
            print(f"compare with {args.compare_split}: {len(shared)} snippet(s) in both splits"
                  + (" -> near-duplicate frames on both sides; hold out whole snippets (lib.tools.split --by "
                     "snippet)" if shared else "") + f"; {len(same_images)} image(s) in both")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "check.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        save_box_histogram(os.path.join(args.out, "box_sizes.png"), w, h, f"{result['dataset']}: box sizes")
        print(f"wrote {os.path.join(args.out, 'check.json')} and box_sizes.png")
    problems = bool(result["problems"]) or bool(result["images_without_annotations"]) or bool(
        result.get("compare_split", {}).get("shared_images"))
    return 1 if problems and args.fail_on_problems else 0


if __name__ == "__main__":
    sys.exit(main())
