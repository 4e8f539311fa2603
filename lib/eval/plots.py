"""Precision/recall curves as PNG and result tables as markdown / JSON."""
import json
import os
import re

import numpy as np

from lib.fileio import atomic_write_text


def _safe_name(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "class"


def save_pr_curves(results, out_dir, title=None):
    """One PNG per class (``pr_<class>.png``) plus ``pr_all.png`` with every class; returns the paths.

    ``results`` is what voc_ap / vid_ap / coco_ap return (their "curves" and "per_class" entries).
    Classes without ground truth are skipped.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    title = title or results.get("metric", "")
    paths = []
    overview, ax_all = plt.subplots(figsize=(7, 6))
    used = set()
    for name, curve in results.get("curves", {}).items():
        ap = results["per_class"].get(name, {}).get("ap")
        if ap is None or not curve.get("recall"):
            continue
        recall = np.asarray(curve["recall"])
        precision = np.asarray(curve["precision"])
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot(recall, precision, lw=1.5, label="precision")
        # the envelope the AP integrates (non-increasing precision)
        envelope = np.maximum.accumulate(np.clip(precision, 0, None)[::-1])[::-1]
        ax.plot(recall, envelope, "--", lw=1, alpha=0.7, label="envelope")
        ax.legend(loc="lower left", fontsize=8)
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{title} {name}: AP {100 * ap:.1f}")
        ax.grid(alpha=0.3)
        base = _safe_name(name)
        while base in used:
            base += "_"
        used.add(base)
        path = os.path.join(out_dir, f"pr_{base}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
        ax_all.plot(recall, precision, lw=1, label=f"{name} ({100 * ap:.1f})")
    ax_all.set_xlim(0, 1.0)
    ax_all.set_ylim(0, 1.02)
    ax_all.set_xlabel("recall")
    ax_all.set_ylabel("precision")
    m = results.get("mAP")
    ax_all.set_title(f"{title} mAP {100 * m:.1f}" if m is not None else title)
    ax_all.grid(alpha=0.3)
    if paths:
        ax_all.legend(fontsize=7, loc="lower left", ncol=1 + len(paths) // 15)
    path = os.path.join(out_dir, "pr_all.png")
    overview.tight_layout()
    overview.savefig(path, dpi=90)
    plt.close(overview)
    paths.append(path)
    return paths


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(results):
    """Markdown: per-class table, then the headline and any breakdowns."""
    metric = results.get("metric", "")
    has_ap50 = any("ap50" in v for v in results["per_class"].values())
    header = "| class | AP" + (" | AP50" if has_ap50 else "") + " | gt | detections |"
    lines = [f"## {metric} results", "", header,
             "| --- | ---: |" + (" ---: |" if has_ap50 else "") + " ---: | ---: |"]
    for name, v in results["per_class"].items():
        row = f"| {name} | {_pct(v.get('ap'))}"
        if has_ap50:
            row += f" | {_pct(v.get('ap50'))}"
        lines.append(row + f" | {v.get('num_gt', '-')} | {v.get('num_det', '-')} |")
    lines += ["", f"**mAP ({metric}): {_pct(results.get('mAP'))}**"]
    for group in ("motion", "area"):
        if group in results:
            lines += ["", f"| {group} | range | mAP | gt |", "| --- | --- | ---: | ---: |"]
            for name, v in results[group].items():
                lo, hi = v["range"]
                rng = f"[{lo:g}, {hi:g}]" if group == "motion" else f"[{np.sqrt(lo):g}^2, {np.sqrt(hi):g}^2]"
                lines.append(f"| {name} | {rng} | {_pct(v['mAP'])} | {v['num_gt']} |")
    if results.get("motion_skipped"):
        lines += ["", f"motion breakdown skipped: {results['motion_skipped']}"]
    if "stats" in results:
        lines += ["", "| COCO stat | value |", "| --- | ---: |"]
        lines += [f"| {k} | {_pct(v)} |" for k, v in results["stats"].items()]
    return "\n".join(lines) + "\n"


def results_for_json(results, include_curves=False):
    """The results dict without the bulky curves (unless asked) and the pycocotools text."""
    skip = {"summary"} | (set() if include_curves else {"curves"})
    return {k: v for k, v in results.items() if k not in skip}


def write_results_table(results, md_path=None, json_path=None, include_curves=False):
    """Write the markdown table and/or the JSON results; returns the markdown text."""
    text = format_table(results)
    if md_path:
        _atomic_write(md_path, text)
    if json_path:
        _atomic_write(json_path, json.dumps(results_for_json(results, include_curves), indent=2) + "\n")
    return text


def _atomic_write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(str(path), text)
