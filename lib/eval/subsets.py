"""Frame lists that pick a subset of a test set for a separate score (``TEST.SUBSETS``).

One frame per line, ``<video> <frame>``: the Record's snippet id and its 0-based position in the
snippet, the keys a video method streams by (lstm_ssd's TEST.SUBSETS format, which the synthetic
generator's and ``lib.tools.degrade``'s ``degraded_frames.txt`` / ``intact_frames.txt`` use). A
still image (no video) is listed as ``<image_id> -1``. Frame lists name frames as the dataset is
loaded, so load it with the same settings (e.g. the same SNIPPETS) as the list was written with.
"""
import os

from lib.dataset.io import DatasetError
from lib.eval.voc import voc_ap
from lib.fileio import atomic_write_text


def frame_key(record):
    """(video, frame) of a video frame; (image_id, -1) of a still image."""
    if record.video is not None:
        return str(record.video), int(record.frame)
    return str(record.image_id), -1


def frame_list_text(records):
    """The lines of a frame list for ``records`` (in their order)."""
    lines = []
    for rec in records:
        name, frame = frame_key(rec)
        if not name.strip() or "\n" in name:
            raise DatasetError(f"{rec.image}: no usable frame name ({name!r}) for a frame list")
        lines.append(f"{name} {frame}\n")
    return "".join(lines)


def write_frame_list(path, records):
    """Write the frame list of ``records`` to ``path`` (atomically)."""
    text = frame_list_text(records)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_write_text(path, text)


def read_frame_list(path):
    """frozenset of (name, frame) from a frame list; a bad line is a DatasetError naming file and line.
    The name may contain spaces (the frame number is the last field)."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: frame list not found")
    frames = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.strip().rsplit(maxsplit=1)
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DatasetError(f"{path}:{number}: expected '<video> <frame number>', got {line.strip()!r}")
            frames.add((fields[0], int(fields[1])))
    return frozenset(frames)


def subset_indices(records, frames):
    """Indices of the records whose frame_key is in ``frames`` (a frame list's set)."""
    return [k for k, rec in enumerate(records) if frame_key(rec) in frames]


def subset_scores(records, detections, classes, subsets, iou=0.5):
    """TEST.SUBSETS: {name: frame list path} -> {name: {"mAP", "frames", "boxes"}}, VOC mAP of the
    listed frames alone (the detections come from running on everything, so a video method's window or
    memory still sees every frame). A list that matches no frame is an error naming it: it was
    written for another dataset or with other SNIPPETS settings."""
    out = {}
    for name, path in (subsets or {}).items():
        keep = subset_indices(records, read_frame_list(path))
        if not keep:
            raise DatasetError(f"{path}: subset {name!r} names none of the {len(records)} test frames (written "
                               f"for another dataset, or with other SNIPPETS settings?)")
        picked = [records[k] for k in keep]
        result = voc_ap(picked, [detections[k] for k in keep], classes, iou=iou)
        out[name] = {"mAP": result["mAP"], "frames": len(keep), "boxes": int(sum(r.num_boxes for r in picked))}
    return out
