"""Degrade a seeded share of a dataset's frames (motion blur, defocus, partial occlusion; boxes kept).

    python -m lib.tools.degrade --data PATH --format FMT [--split LIST] --fraction 0.25 --seed S --out DIR
        [--snippets 3,0.05,5] [--classes FILE] [--set KEY=VALUE]

The probe for what temporal methods are for: a frame detector fails on a blurred or occluded frame
whose neighbours are sharp; FGFA and LSTM-SSD should not. Writes DIR, a dataset of the same format
with the same annotations, in which round(fraction x N) of the N frames (of --split when given; a
seeded choice) are degraded as lib.dataset.degrade describes (kind and strength drawn per frame from
the seed), and every other image file is copied byte for byte. With --split, the frames of the split
are the ones degraded and listed, and the whole videos (snippets) they belong to are written, so a
video method still sees their neighbours; the split itself is written as a list too.

Also in DIR: ``degraded_frames.txt`` and ``intact_frames.txt`` (the split's frames, one
``<video> <frame>`` per line, ``<image_id> -1`` for a still image: the TEST.SUBSETS format of
lib.eval.subsets, naming the frames as DIR loads with the same --snippets), and ``degrade.json``
(seed, fraction, ranges and, per degraded frame, its kind and parameters in pixels).

Output layout per format (load it with lib.dataset.load_dataset; pass the same SNIPPETS for VOC):
  voc       Annotations/ JPEGImages/ ImageSets/Main/{all,<split>,degraded,intact}.txt, classes.txt
  coco      annotations.json, images/          csv    annotations.csv, classes.csv, images/
  kitti     label_2/ image_2/ splits/{<split>,degraded,intact}.txt, classes.txt
  recordio  data.rec/.idx/.lst/.json           tfrecord  data.tfrecord, label_map.pbtxt
DIR is built beside itself and moved into place when complete; an existing DIR is replaced only
when it is an earlier output of this tool. VID and synthetic data have no writer (the synthetic
generator degrades frames itself: DEGRADED_FRACTION); convert them first.
"""
import argparse
import json
import math
import os
import shutil
import sys

import cv2
import numpy as np
from tqdm import tqdm

from lib.cli import user_errors_exit_2
from lib.dataset import (
    DatasetError,
    DetectionDataset,
    Record,
    export_tfrecord,
    load_dataset,
    pack_records,
    whole_videos_spec,
    write_coco,
    write_csv,
    write_kitti,
    write_label_map,
    write_voc,
)
from lib.dataset.cli import add_dataset_args, dataset_spec
from lib.dataset.degrade import KINDS, RANGES, apply_degradation, draw_degradation
from lib.dataset.io import decode_image_bytes
from lib.dataset.recordio import read_record_image
from lib.eval.subsets import frame_key, write_frame_list

WRITABLE = ("voc", "coco", "csv", "kitti", "recordio", "tfrecord")
IMAGES_DIR = {"voc": "JPEGImages", "coco": "images", "csv": "images", "kitti": "image_2"}
RECORD_FILE = "degrade.json"
DEGRADED_LIST, INTACT_LIST = "degraded_frames.txt", "intact_frames.txt"
JPEG_QUALITY = 95


def degraded_count(fraction, total):
    """round(fraction * total), halves up."""
    return int(math.floor(fraction * total + 0.5))


def choose_degraded(count, fraction, seed):
    """Sorted indices of the degraded frames among ``count`` (a seeded choice without replacement)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(count, size=degraded_count(fraction, count), replace=False))


def frame_params(seed, index, record):
    """The degradation of the ``index``-th frame of the split: its own generator, so a frame's draw
    does not depend on which other frames were chosen."""
    return draw_degradation(np.random.default_rng([int(seed), int(index)]), record.width, record.height, record.boxes)


def image_bytes(path):
    """The encoded bytes of an image file, or of an image stored in a RecordIO file ('<file>.rec#<i>')."""
    if ".rec#" in path and not os.path.isfile(path):
        return read_record_image(path)
    with open(path, "rb") as f:
        return f.read()


def _extension(path, data):
    ext = os.path.splitext(path)[1]
    if ext and ".rec#" not in path:
        return ext
    return ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"


def encode_image(rgb, ext, where):
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise DatasetError(f"{where}: OpenCV cannot encode a {ext} image")
    return buf.tobytes()


def output_names(records):
    """A unique file name per record that keeps its frame number: the source file name, or the
    image_id with '/' as '__' when file names repeat (frames of several videos) or the images are
    inside a RecordIO file."""
    exts = [_extension(rec.image, image_bytes(rec.image)[:8] if ".rec#" in rec.image else b"") for rec in records]
    names = [os.path.splitext(os.path.basename(rec.image))[0] if ".rec#" not in rec.image else None
             for rec in records]
    if None in names or len(set(names)) != len(names):
        names = [rec.image_id.replace("/", "__").replace("\\", "__") for rec in records]
    if len(set(names)) != len(names):
        raise DatasetError("image ids are not unique; cannot name the output files")
    return [n + e for n, e in zip(names, exts)]


def output_spec(fmt, root, source_spec, staging):
    """The load_dataset spec of the output folder ``root``."""
    keep = {k: source_spec[k] for k in ("SNIPPETS", "KEEP_DIFFICULT") if k in source_spec and fmt == "voc"}
    if fmt == "voc":
        return {"FORMAT": "voc", "ROOT": root, "CLASSES": os.path.join(root, "classes.txt"), **keep}
    if fmt == "coco":
        return {"FORMAT": "coco", "ANNOTATIONS": os.path.join(root, "annotations.json")}
    if fmt == "csv":
        return {"FORMAT": "csv", "ANNOTATIONS": os.path.join(root, "annotations.csv"),
                "CLASSES": os.path.join(root, "classes.csv")}
    if fmt == "kitti":
        return {"FORMAT": "kitti", "ROOT": root, "CLASSES": os.path.join(root, "classes.txt")}
    if fmt == "recordio":
        return {"FORMAT": "recordio", "PREFIX": os.path.join(root, "data")}
    return {"FORMAT": "tfrecord", "PATHS": os.path.join(root, "data.tfrecord"), "OUT_DIR": staging,
            "LABEL_MAP": os.path.join(root, "label_map.pbtxt")}


def write_annotations(fmt, dataset, root, final_root):
    """Write ``dataset`` (images already under ``root``) with the format's writer. VOC records its
    images' final paths (``final_root``) in <path>; the other writers store relative paths or bytes."""
    if fmt == "voc":
        final = DetectionDataset([_moved(r, root, final_root) for r in dataset], dataset.classes, dataset.name)
        write_voc(final, root, split="all", images="reference")
        _write_lines(os.path.join(root, "classes.txt"), dataset.classes)
    elif fmt == "coco":
        write_coco(dataset, os.path.join(root, "annotations.json"))
    elif fmt == "csv":
        write_csv(dataset, os.path.join(root, "annotations.csv"), classes_path=os.path.join(root, "classes.csv"))
    elif fmt == "kitti":
        write_kitti(dataset, os.path.join(root, "label_2"))
        _write_lines(os.path.join(root, "classes.txt"), dataset.classes)
    elif fmt == "recordio":
        pack_records(dataset, os.path.join(root, "data"))
    else:
        export_tfrecord(dataset, os.path.join(root, "data.tfrecord"))
        write_label_map(os.path.join(root, "label_map.pbtxt"), dataset.classes)


def _moved(rec, root, final_root):
    image = os.path.join(final_root, os.path.relpath(rec.image, root))
    return Record(image=image, width=rec.width, height=rec.height, boxes=rec.boxes, labels=rec.labels,
                  difficult=rec.difficult, track_ids=rec.track_ids, video=rec.video, frame=rec.frame,
                  image_id=rec.image_id)


def _write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _same_path(a, b):
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def match_reloaded(fmt, written, reloaded):
    """For each written record, the reloaded one (by image path; by order for the formats that keep
    images inside their files). A missing or changed record is a bug of a writer: RuntimeError."""
    if len(reloaded) != len(written):
        raise RuntimeError(f"the {fmt} output reads back {len(reloaded)} images, {len(written)} were written")
    if fmt in ("recordio", "tfrecord"):
        pairs = list(zip(written, reloaded.records))
    else:
        by_path = {os.path.normcase(os.path.abspath(r.image)): r for r in reloaded}
        pairs = [(w, by_path.get(os.path.normcase(os.path.abspath(w.image)))) for w in written]
    for w, r in pairs:
        if r is None or r.boxes.shape != w.boxes.shape or not np.allclose(r.boxes, w.boxes, atol=0.01) \
                or not np.array_equal(r.labels, w.labels):
            raise RuntimeError(f"{w.image}: the {fmt} output does not read back with the boxes written")
    return [r for _, r in pairs]


def degrade_dataset(spec, out, fraction, seed, progress=True):
    """Write the degraded copy of the dataset of ``spec`` (a load_dataset spec) to ``out``; returns
    the summary written to degrade.json."""
    fmt = str(spec.get("FORMAT", "")).lower()
    if fmt not in WRITABLE:
        raise DatasetError(f"--format {fmt}: no writer for this format (writable: {', '.join(WRITABLE)}); "
                           f"convert it first (python -m lib.tools.convert)")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--fraction must be in [0, 1], got {fraction}")
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):     # it would be replaced by the output folder
        raise DatasetError(f"--out {out}: is a file, and a folder is needed here")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, RECORD_FILE)):
        raise DatasetError(f"{out}: exists and is not an output of lib.tools.degrade (no {RECORD_FILE}); "
                           f"choose another --out")
    for key in ("ROOT", "ANNOTATIONS", "PREFIX", "PATHS"):
        source = spec.get(key)
        if isinstance(source, str) and os.path.exists(source):
            source = os.path.abspath(source)
            if _same_path(source, out) or source.startswith(out + os.sep) or out.startswith(source + os.sep):
                raise DatasetError(f"--out {out}: must not contain, or lie inside, the source {source}")
    split = load_dataset(spec)
    if not len(split):
        raise DatasetError(f"{spec.get('ROOT') or spec.get('ANNOTATIONS') or spec.get('PREFIX')}: no image to degrade")
    whole_spec = whole_videos_spec(spec)
    whole = load_dataset(whole_spec) if whole_spec else split
    # the split's frames, and the whole videos they belong to (neighbours for the video methods)
    eligible = {_key(r): k for k, r in enumerate(split)}
    videos = {r.video for r in split if r.video is not None}
    records = [r for r in whole if r.video in videos or _key(r) in eligible]
    missing = set(eligible) - {_key(r) for r in records}
    if missing:
        raise DatasetError(f"{sorted(missing)[0]}: frame of the split not found among the dataset's frames")
    chosen = set(choose_degraded(len(split), fraction, seed))
    names = output_names(records)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out}.partial{os.getpid()}"
    staging = os.path.join(tmp, ".staging")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        images_dir = os.path.join(tmp, IMAGES_DIR.get(fmt, ".staging"))
        os.makedirs(images_dir, exist_ok=True)
        os.makedirs(staging, exist_ok=True)
        written, frames = [], []
        bar = tqdm(records, desc="degrade", unit="img", disable=not progress, dynamic_ncols=True)
        for n, rec in enumerate(bar):
            data = image_bytes(rec.image)
            index = eligible.get(_key(rec))
            path = os.path.join(images_dir, names[n])
            if index in chosen:
                params = frame_params(seed, index, rec)
                image = decode_image_bytes(data, rec.image)
                if image.shape[:2] != (rec.height, rec.width):
                    raise DatasetError(f"{rec.image}: image is {image.shape[1]}x{image.shape[0]}, its annotation "
                                       f"says {rec.width}x{rec.height}")
                data = encode_image(apply_degradation(image, params), os.path.splitext(names[n])[1], rec.image)
                frames.append({"index": index, "source": rec.image, "file": names[n], **params})
            with open(path, "wb") as f:
                f.write(data)
            written.append(Record(image=path, width=rec.width, height=rec.height, boxes=rec.boxes, labels=rec.labels,
                                  difficult=rec.difficult, track_ids=rec.track_ids, video=rec.video, frame=rec.frame,
                                  image_id=os.path.splitext(names[n])[0] if fmt in ("voc", "kitti") else rec.image_id))
        dataset = DetectionDataset(written, whole.classes, f"{whole.name}_degraded")
        for attr in ("category_ids",):   # COCO category ids carry over
            if hasattr(whole, attr):
                setattr(dataset, attr, getattr(whole, attr))
        write_annotations(fmt, dataset, tmp, out)
        reloaded = match_reloaded(fmt, written, load_dataset(output_spec(fmt, tmp, spec, staging)))
        # (position in the split, reloaded record, output file) of the split's frames, in split order
        in_split = sorted((eligible[_key(src)], r, names[k]) for k, (r, src) in enumerate(zip(reloaded, records))
                          if _key(src) in eligible)
        degraded = [(r, name) for index, r, name in in_split if index in chosen]
        intact = [(r, name) for index, r, name in in_split if index not in chosen]
        write_frame_list(os.path.join(tmp, DEGRADED_LIST), [r for r, _ in degraded])
        write_frame_list(os.path.join(tmp, INTACT_LIST), [r for r, _ in intact])
        split_name = _split_name(spec)
        if fmt in ("voc", "kitti"):    # the same lists as split files (file stems), for SPLIT
            list_dir = os.path.join(tmp, "ImageSets", "Main") if fmt == "voc" else os.path.join(tmp, "splits")
            lists = {"degraded": degraded, "intact": intact}
            if split_name:
                lists[split_name] = [(r, name) for _, r, name in in_split]
            for list_name, entries in lists.items():
                _write_lines(os.path.join(list_dir, list_name + ".txt"), [os.path.splitext(n)[0] for _, n in entries])
        by_file = {f["file"]: f for f in frames}
        for r, name in degraded:
            video, number = frame_key(r)
            by_file[name].update({"image_id": r.image_id, "video": video if number >= 0 else None, "frame": number})
        summary = {"tool": "lib.tools.degrade", "source": {k: v for k, v in spec.items()}, "format": fmt,
                   "seed": int(seed), "fraction": float(fraction), "kinds": list(KINDS), "ranges": RANGES,
                   "jpeg_quality": JPEG_QUALITY, "split_frames": len(split), "degraded": len(degraded),
                   "intact": len(intact), "context_frames": len(records) - len(split), "split_list": split_name,
                   "frames": sorted(frames, key=lambda f: f["index"])}
        with open(os.path.join(tmp, RECORD_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        shutil.rmtree(staging, ignore_errors=True)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _key(rec):
    return os.path.abspath(rec.image) if ".rec#" not in rec.image else rec.image


def _split_name(spec):
    key = "SPLIT" if "SPLIT" in spec else None
    value = spec.get(key) if key else None
    if not value or not isinstance(value, str):
        return None
    return os.path.splitext(os.path.basename(value))[0]


def _swap_into_place(tmp, out):
    """Move the finished folder to ``out``; an earlier output there is removed only once the new one is in place."""
    if not os.path.exists(out):
        os.replace(tmp, out)
        return
    old = f"{out}.old{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.degrade", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--fraction", type=float, default=0.25, help="share of the (split's) frames degraded")
    ap.add_argument("--seed", type=int, default=0, help="seed of the choice of frames and of each degradation")
    ap.add_argument("--out", required=True, help="output folder (a dataset of the same format)")
    args = ap.parse_args(argv)
    try:
        spec = dataset_spec(args)
        summary = degrade_dataset(spec, args.out, args.fraction, args.seed)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:           # dataset_spec's path / option errors
        if isinstance(exc.code, int) or exc.code is None:
            raise
        print(f"error: {exc.code}", file=sys.stderr)
        return 2
    counts = {kind: sum(f["kind"] == kind for f in summary["frames"]) for kind in KINDS}
    print(f"{summary['degraded']} of {summary['split_frames']} frames degraded "
          f"({', '.join(f'{n} {k}' for k, n in counts.items())}), {summary['intact']} intact, "
          f"{summary['context_frames']} context frames copied -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
