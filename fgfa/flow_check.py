"""Does the FlowNet follow the motion of your footage? A check against a classical optical flow.

FGFA's gain depends on the warp: neighbour features moved by a wrong flow blur the key frame's
objects instead of sharpening them. No ground-truth flow exists for real video, so this compares the
FlowNet with a classical estimate on real frame pairs (``--reference``: OpenCV's DIS, the default,
or Farneback): for pairs ``offset`` frames apart in the same snippet, both flows are taken at the
feature stride (feature pixels) and the end-point error (EPE) of the FlowNet against the reference is
set beside that of zero flow (the identity warp an untrained FlowNet gives). Only cells where the
reference's forward and backward flows agree are scored (its flow is unreliable in textureless or
occluded regions); object cells (inside the key frame's ground-truth boxes) are scored separately,
since they are what aggregation must get right.

With a detector checkpoint (``--model``) the check also looks at what the flow is for: the cosine
similarity (over channels, per cell) of the neighbour's features warped by the FlowNet's flow to the
key frame's features, beside that of the unwarped neighbour and of the neighbour warped by the
reference flow (lib.eval.flow.warp_alignment): a flow that helps aggregation raises it.

    python -m fgfa.flow_check --cfg experiments/fgfa_rfcn/cfgs/fgfa_rfcn_speedtrap_cpu.yaml \
        [--model CKPT | --flownet PARAMS] [--pretrain] [--offsets 1,2,3] [--pairs 30] [--out DIR] [--split-only]
        [--reference dis|farneback]

Weights: a detector checkpoint (``--model``), FlowNet parameters (``--flownet``), else
OUTPUT_DIR/flownet_pretrained.params (written by training's FlowNet pre-training; ``--pretrain`` runs
that pre-training first when it is missing, and training reuses the result). Writes flow_check.json
and flow_check.png (key frame, FlowNet flow, Farneback flow, colour-coded) to ``--out``.
"""
import argparse
import os
import sys
from types import SimpleNamespace

import cv2
import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx
import numpy as np
import tqdm

from lib.cli import user_errors_exit_2
from lib.config import ConfigError, project_path
from lib.fileio import atomic_write_json
from lib.dataset import whole_videos_spec
from lib.dataset.flow_pairs import FARNEBACK, consistent_mask, farneback_flow
from lib.dataset.io import DatasetError, read_image
from lib.dataset.specs import load_datasets
from lib.eval.flow import warp_alignment
from lib.flow import DISFlow
from lib.runtime import configure_threads, get_context
from lib.train import setup_logger
from lib.viz import save_image

from .config import get_config, input_scale
from .data import normalize_pad, resize_image
from .flow_pretrain import PRETRAINED_FILE, pretrain_flownet
from .flownet import FlowNetSimple
from .test import load_model
from .train import load_train_set, output_dir


def to_cells(array, stride):
    """Mean over stride x stride cells of the top-left whole cells of an (H,W,...) array."""
    h, w = (array.shape[0] // stride) * stride, (array.shape[1] // stride) * stride
    cropped = array[:h, :w].astype(np.float32)
    return cropped.reshape(h // stride, stride, w // stride, stride, *array.shape[2:]).mean(axis=(1, 3))


def box_cells(boxes, scale, shape, stride):
    """(h, w) bool: cells whose centre lies inside a box (boxes in original pixels, ``scale`` to the
    network input)."""
    rows, cols = shape
    cy = (np.arange(rows) + 0.5) * stride
    cx = (np.arange(cols) + 0.5) * stride
    mask = np.zeros(shape, bool)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32) * scale:
        mask[np.ix_((cy >= y1) & (cy < y2), (cx >= x1) & (cx < x2))] = True
    return mask


def farneback_reference(first, second, tolerance):
    forward, backward = farneback_flow(first, second), farneback_flow(second, first)
    return forward, consistent_mask(forward, backward, tolerance)


REFERENCES = {"farneback": lambda: farneback_reference, "dis": lambda: DISFlow("medium").with_mask}
REFERENCE_NAMES = {"farneback": "Farneback", "dis": "DIS"}


def compare_pair(first, second, predict, stride, boxes=(), scale=1.0, reference_flow=farneback_reference):
    """One pair of RGB uint8 frames -> per-cell arrays (reference flow, predicted flow, valid mask,
    object mask), flows in feature pixels. ``predict(first, second)`` returns (h, w, 2) feature-pixel
    flow on the stride grid (cells beyond the whole ones are cropped); ``reference_flow(first, second,
    tolerance)`` -> (flow (H, W, 2) in pixels, consistent pixels (H, W) bool)."""
    forward, consistent = reference_flow(first, second, 0.5 * stride)
    valid = to_cells(consistent.astype(np.float32), stride) > 0.5
    reference = to_cells(forward, stride) / stride
    predicted = np.asarray(predict(first, second), np.float32)
    rows, cols = reference.shape[:2]
    if predicted.shape[0] < rows or predicted.shape[1] < cols or predicted.shape[2] != 2:
        raise ValueError(f"predicted flow of shape {predicted.shape} does not cover the {rows}x{cols} grid")
    predicted = predicted[:rows, :cols]
    return reference, predicted, valid, box_cells(boxes, scale, (rows, cols), stride)


def summarize(pairs):
    """[(reference, predicted, valid, objects)] -> EPE of the prediction and of zero flow (feature px)
    on the valid cells and on the valid object cells (zero flow's EPE is Farneback's mean motion)."""
    out = {}
    for region in ("all", "objects"):
        ref, pred = [], []
        for reference, predicted, valid, objects in pairs:
            keep = valid & objects if region == "objects" else valid
            ref.append(reference[keep])
            pred.append(predicted[keep])
        ref = np.concatenate(ref) if ref else np.zeros((0, 2), np.float32)
        pred = np.concatenate(pred) if pred else np.zeros((0, 2), np.float32)
        if not len(ref):
            out[region] = {"cells": 0}
            continue
        epe = float(np.linalg.norm(pred - ref, axis=1).mean())
        zero = float(np.linalg.norm(ref, axis=1).mean())
        out[region] = {"cells": int(len(ref)), "epe_flownet": epe, "epe_zero_flow": zero,
                       "error_removed": (1.0 - epe / zero) if zero > 0 else None}
    total = sum(p[2].size for p in pairs)
    out["valid_fraction"] = float(sum(p[2].sum() for p in pairs) / total) if total else 0.0
    return out


def flow_color(flow, max_norm):
    """(h,w,2) flow -> RGB uint8, hue = direction, value = speed (saturating at ``max_norm``)."""
    magnitude, angle = cv2.cartToPolar(np.ascontiguousarray(flow[..., 0]), np.ascontiguousarray(flow[..., 1]))
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (angle * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / max(max_norm, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def sample_pairs(dataset, offsets, count, rng):
    """{offset: [(first record, second record)]}: up to ``count`` pairs per offset, drawn evenly over
    the snippets' frames (both frames from the same snippet)."""
    snippets = [recs for recs in dataset.snippets().values() if len(recs) > 1]
    if not snippets:
        raise DatasetError(f"{dataset.name}: no snippet with two or more frames to take pairs from")
    chosen = {}
    for offset in offsets:
        candidates = [(recs[i], recs[i + offset]) for recs in snippets for i in range(len(recs) - offset)]
        if not candidates:
            continue
        picks = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
        chosen[offset] = [candidates[i] for i in sorted(picks)]
    return chosen


def load_flownet(cfg, model_path, flownet_path, pretrain, ctx):
    """The FlowNet to check, from a detector checkpoint, FlowNet params, or the run's pre-training."""
    if model_path:
        model, _ = load_model(cfg, checkpoint=model_path, ctx=ctx)
        return model.flownet, project_path(model_path)
    flownet = FlowNetSimple(cfg.NETWORK.FLOW_WIDTH, cfg.NETWORK.FLOW_SCALE, prefix="flownet_")
    path = project_path(flownet_path) if flownet_path else os.path.join(output_dir(cfg), PRETRAINED_FILE)
    if not os.path.isfile(path):
        if flownet_path or not pretrain:
            raise FileNotFoundError(f"FlowNet weights not found: {path} (give --model or --flownet, or "
                                    f"--pretrain to run the config's FlowNet pre-training)")
        flownet.initialize(ctx=ctx)
        # pretrain_flownet trains ``model.flownet``
        pretrain_flownet(SimpleNamespace(flownet=flownet), cfg, load_train_set(cfg), output_dir(cfg), ctx,
                         setup_logger(output_dir(cfg), "flow_check"), progress=cfg.TRAIN.PROGRESS)
        return flownet, path
    flownet.load_parameters(path, ctx=ctx)
    return flownet, path


def feature_alignment(features, first, second, flows, stride, valid):
    """warp_alignment of the second frame's features with the first's for each flow (name -> (h, w, 2)
    feature-pixel flow) and without one, over the reference's valid cells -> {name: cosine, "unwarped": ...}."""
    key, neighbour = features(first), features(second)
    rows, cols = valid.shape
    key, neighbour = key[:, :, :rows, :cols], neighbour[:, :, :rows, :cols]
    out = {}
    for name, flow in flows.items():
        grid = np.asarray(flow, np.float32)[:rows, :cols].transpose(2, 0, 1)[None]
        result = warp_alignment(key, neighbour, grid, valid[None])
        out[name] = result["cosine_warped"]
        out["unwarped"] = result["cosine_unwarped"] if name == "flownet" else out.get("unwarped")
    return out


def run(cfg, model_path="", flownet_path="", pretrain=False, offsets=(1, 2, 3), count=30, out_dir=None,
        seed=0, progress=True, split_only=False, reference="dis"):
    ctx = get_context(cfg.CONTEXT)
    source = cfg.get("CONFIG_FILE") or "config"
    # pairs need consecutive frames: the whole videos of a sparse (random) split's frames, unless the
    # split holds whole snippets out (then only they are scored: frames the FlowNet never saw)
    specs = [spec if split_only else whole_videos_spec(spec) or spec for spec in cfg.DATASET.VAL]
    dataset = load_datasets(specs, source=source, key="DATASET.VAL")
    flownet, weights = load_flownet(cfg, model_path, flownet_path, pretrain, ctx)
    flownet.hybridize()
    if reference not in REFERENCES:
        raise ValueError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    reference_flow = REFERENCES[reference]()
    features = None
    if model_path:
        detector, _ = load_model(cfg, checkpoint=model_path, ctx=ctx)
        features = lambda image: detector.features(mx.nd.array(    # noqa: E731
            normalize_pad(image, cfg.INPUT.MEAN, cfg.INPUT.STD, cfg.IMAGE.PAD_STRIDE)[None], ctx=ctx)).asnumpy()
    short, max_long = input_scale(cfg)
    stride = int(cfg.NETWORK.FEAT_STRIDE)
    inp, pad = cfg.INPUT, cfg.IMAGE.PAD_STRIDE

    def predict(first, second):
        cur = mx.nd.array(normalize_pad(first, inp.MEAN, inp.STD, pad)[None], ctx=ctx)
        ref = mx.nd.array(normalize_pad(second, inp.MEAN, inp.STD, pad)[None], ctx=ctx)
        return flownet(cur, ref)[0].asnumpy().transpose(1, 2, 0)

    chosen = sample_pairs(dataset, offsets, count, np.random.RandomState(seed))
    result = {"config": source, "weights": weights, "dataset": dataset.name, "reference": reference,
              "farneback": FARNEBACK, "stride": stride, "test_scale": [short, max_long], "offsets": {}}
    example = None
    for offset, pairs in chosen.items():
        scored, aligned = [], []
        for first_rec, second_rec in tqdm.tqdm(pairs, desc=f"offset {offset}", disable=not progress, leave=False):
            try:
                first, scale = resize_image(read_image(first_rec.image), short, max_long)
                second, _ = resize_image(read_image(second_rec.image), short, max_long)
            except DatasetError as err:
                print(f"skipped pair: {err}", file=sys.stderr)
                continue
            scored.append(compare_pair(first, second, predict, stride, first_rec.boxes, scale, reference_flow))
            if features is not None:
                reference_grid, flownet_grid, valid = scored[-1][:3]
                aligned.append(feature_alignment(features, first, second,
                                                 {"flownet": flownet_grid, reference: reference_grid}, stride, valid))
            # the picture: the first pair with an object at the largest offset (else the very first pair)
            rank = (offset == max(chosen), len(first_rec.boxes) > 0)
            if example is None or rank > example[0]:
                example = (rank, offset, first, scored[-1], first_rec.image, second_rec.image)
        result["offsets"][str(offset)] = dict(summarize(scored), pairs=len(scored))
        if aligned:
            result["offsets"][str(offset)]["feature_cosine"] = {
                name: float(np.nanmean([a[name] for a in aligned])) for name in aligned[0]}
    out_dir = out_dir or os.path.join(output_dir(cfg), "flow_check")
    os.makedirs(out_dir, exist_ok=True)
    if example is not None:
        _, offset, frame, (reference, predicted, valid, _), first_path, second_path = example
        size = (frame.shape[1] // 2, frame.shape[0] // 2)
        norm = float(np.percentile(np.linalg.norm(reference, axis=2), 95)) or 1.0
        panels = [cv2.resize(frame, size)]
        for flow in (predicted, reference):
            colored = flow_color(flow, norm)
            colored[~valid] //= 3      # dim the cells the check does not score
            panels.append(cv2.resize(colored, size, interpolation=cv2.INTER_NEAREST))
        canvas = np.concatenate(panels, axis=1)
        for i, text in enumerate(("key frame", "FlowNet", f"{reference} (offset {offset})")):
            cv2.putText(canvas, text, (i * size[0] + 8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        save_image(os.path.join(out_dir, "flow_check.png"), canvas)
        result["example"] = [first_path, second_path]
    atomic_write_json(os.path.join(out_dir, "flow_check.json"), result, sort_keys=False)
    return result, out_dir


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True, help="FGFA yaml config")
    parser.add_argument("--model", default="", help="detector checkpoint (.params or checkpoint .json)")
    parser.add_argument("--flownet", default="", help="FlowNet parameters (e.g. OUTPUT_DIR/flownet_pretrained.params)")
    parser.add_argument("--pretrain", action="store_true",
                        help="run the config's FlowNet pre-training when its result is missing")
    parser.add_argument("--offsets", default="1,2,3", help="frame distances to test, comma-separated")
    parser.add_argument("--pairs", type=int, default=30, help="pairs per offset")
    parser.add_argument("--out", default=None, help="output folder (default OUTPUT_DIR/flow_check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-only", action="store_true",
                        help="pairs from DATASET.VAL's frames only (a snippet hold-out), not its whole videos")
    parser.add_argument("--reference", choices=sorted(REFERENCES), default="dis",
                        help="the classical flow the FlowNet is compared with (default: OpenCV DIS)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    configure_threads()
    try:
        offsets = [int(v) for v in args.offsets.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--offsets must be comma-separated integers, got {args.offsets!r}")
    if not offsets or min(offsets) < 1:
        parser.error("--offsets must be positive frame distances")
    try:
        cfg = get_config(args.cfg, args.set)
        result, out_dir = run(cfg, args.model, args.flownet, args.pretrain, offsets, args.pairs, args.out, args.seed,
                              split_only=args.split_only, reference=args.reference)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"FlowNet vs {REFERENCE_NAMES[result['reference']]} (EPE in feature pixels, stride {result['stride']}; {result['weights']})")
    print("offset  pairs  scored cells  EPE FlowNet  EPE zero flow  | object cells  EPE FlowNet  EPE zero flow")
    for offset, r in result["offsets"].items():
        a, o = r["all"], r["objects"]
        obj = (f"{o['cells']:12d}  {o['epe_flownet']:11.2f}  {o['epe_zero_flow']:13.2f}"
               if o.get("cells") else "           -")
        if a.get("cells"):
            print(f"{offset:>6}  {r['pairs']:5d}  {a['cells']:12d}  {a['epe_flownet']:11.2f}  "
                  f"{a['epe_zero_flow']:13.2f}  | {obj}")
    cosines = {o: r["feature_cosine"] for o, r in result["offsets"].items() if "feature_cosine" in r}
    if cosines:
        print("feature cosine to the key frame (neighbour warped by the FlowNet / the reference flow / unwarped)")
        for offset, c in cosines.items():
            print(f"{offset:>6}  FlowNet {c['flownet']:.3f}  {result['reference']} {c[result['reference']]:.3f}  "
                  f"unwarped {c['unwarped']:.3f}")
    print(f"written: {out_dir}/flow_check.json, flow_check.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
