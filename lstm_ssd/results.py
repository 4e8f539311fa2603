"""The experiments table: one row per experiment (config, mAP, fps, params, MACs, ...).

Rows are appended to a CSV file (the source of truth) and the markdown table next to it is rewritten
from the CSV, so both stay in step, as the PyTorch port's results spreadsheet did.
"""
import csv
import os

from lib.fileio import atomic_open, atomic_write_text

COLUMNS = ["date", "config", "model", "policy", "dataset", "frames", "mAP", "fps", "params", "macs_large",
           "macs_small", "large_share", "train_iters", "train_seconds", "subsets", "note"]


def append_result(row, md_path):
    """Append ``row`` (dict, unknown keys rejected) to <md_path stem>.csv and rewrite md_path."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"results row has unknown columns {sorted(unknown)}; allowed: {COLUMNS}")
    csv_path = os.path.splitext(md_path)[0] + ".csv"
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    _upgrade_header(csv_path)
    new = not os.path.isfile(csv_path)
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k, "")) for k in COLUMNS})
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = ["# LSTM-SSD / Looking Fast and Slow experiments", "",
             "Appended by `experiments/lstm_ssd/train_test.py` (source: the CSV next to this file). fps: "
             "streaming test frames per second on this machine (batch 1, post-processing included); MACs per "
             "frame of each extractor step.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r.get(k, "") for k in COLUMNS) + " |" for r in rows]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path


def _upgrade_header(csv_path):
    """Rewrite a CSV written with an older column list under the current one (new columns empty)."""
    if not os.path.isfile(csv_path):
        return
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames == COLUMNS:
            return
        unknown = set(reader.fieldnames or []) - set(COLUMNS)
        if unknown:
            raise ValueError(f"{csv_path}: columns {sorted(unknown)} are not results columns {COLUMNS}")
        rows = list(reader)
    with atomic_open(csv_path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
