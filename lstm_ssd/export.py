"""Export each part of a detector separately as symbol + params (and load them back).

Files: ``<prefix>-<part>-symbol.json`` / ``<prefix>-<part>-0000.params`` for extractor_large,
extractor_small, lstm_step_large, lstm_step_small (or project for the frame baseline) and head, plus
``<prefix>-parts.json`` describing the inputs of each part and how to chain them, so a deployment can
run the two extractors independently (which the reference's single frozen graph did not allow):

    feats = extractor_<e>(frame (1,3,S,S) RGB 0..255)
    out, c_new, h_new = lstm_step_<e>(feats, c, h)          # keep (c, h) unchanged after small steps
    cls_logits, box_deltas = head(out)                       # decode with the anchors in parts.json

A residual memory (MODEL.LSTM.RESIDUAL) also writes ``project`` and ``combine``, and parts.json records
TEST.MOTION: with it, (c, h) (and, for PROPAGATE, the last large frame's ``project(feats)``) are warped by
the DIS flow from the current frame to the frame that wrote them before they are read; a propagated small
step is ``head(combine(warped projection, warped h))`` when ``memory_input`` is previous_state
(lstm_ssd.detector.LSTMSSD.step_moved is the reference loop).

    python -m lstm_ssd.export --cfg CFG.yaml --model MODEL.params --output PREFIX

The frame baseline (ssdlite) also exports as the project's standard single-frame artifact
(docs/DESIGN.md, ``export_ssdlite``): decoding, clipping and per-class NMS inside one graph.
"""
import argparse
import json
import os
import sys

import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx
from mxnet import gluon

import lib.anchors  # noqa: F401
from lib.bbox import decode_boxes_F
from lib.cli import user_errors_exit_2
from lib.export import add_onnx, export_block, graph_multiclass_nms, write_meta
from lib.fileio import atomic_write_json

from . import config as lstm_config
from .detector import load_model


class SSDLiteInference(gluon.HybridBlock):
    """(1,3,H,W) RGB 0..255 -> ids, scores, boxes (input pixels) of an SSDLite, decode + NMS inside."""

    def __init__(self, net, post, **kwargs):
        super().__init__(**kwargs)
        self.extractor, self.project, self.head = net.large, net.project, net.head
        self.num_classes = net.num_classes
        self.height, self.width = (float(s) for s in net.image_hw)
        self.stds = tuple(float(s) for s in net.cfg.BOX_STDS)
        self.score_thresh = float(post.SCORE_THRESH)
        self.nms_iou = float(post.NMS_IOU)
        # box_nms keeps the anchor count: at most that many rows per class
        self.max_per_class = min(int(post.MAX_PER_CLASS), int(net.anchors().shape[0]))
        self.max_total = int(post.MAX_PER_IMAGE)
        top_k = int(post.PRE_NMS_TOP_K)
        self.pre_nms_top_k = top_k if 0 < top_k < int(net.anchors().shape[0]) else 0
        with self.name_scope():
            self.anchors = self.params.get_constant("anchors", mx.nd.array(net.anchors()[None]))

    def hybrid_forward(self, F, x, anchors):
        cls, box = self.head(self.project(self.extractor(x)))
        scores = F.sigmoid(F.slice_axis(cls, axis=-1, begin=1, end=None))  # column 0: background logit
        boxes = decode_boxes_F(F, box, anchors, stds=self.stds)
        # normalised corners -> input pixels, each coordinate scaled and clipped by its own axis
        x1, y1, x2, y2 = F.split(boxes, num_outputs=4, axis=-1)
        boxes = F.concat(F.clip(x1 * self.width, 0.0, self.width), F.clip(y1 * self.height, 0.0, self.height),
                         F.clip(x2 * self.width, 0.0, self.width), F.clip(y2 * self.height, 0.0, self.height),
                         dim=-1)
        return graph_multiclass_nms(F, scores, boxes, self.num_classes, self.score_thresh, self.nms_iou,
                                    self.max_per_class, self.max_total, self.pre_nms_top_k)


def export_ssdlite(net, cfg, classes, out_dir, onnx=False, ctx=None):
    """The single-frame artifact of a frame-baseline (ssdlite) model; returns a dict of paths."""
    ctx = ctx or mx.cpu()
    block = SSDLiteInference(net, cfg.TEST, prefix="ssdlite_inference_")
    block.anchors.initialize(ctx=ctx)
    height, width = net.image_hw
    paths = export_block(block, out_dir, (height, width), ctx)
    post = cfg.TEST
    meta = {"detector": "ssdlite", "classes": list(classes),
            "input": {"resize": "fixed", "size": [height, width], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
            "ops_library": False, "nms": "hard", "score_threshold": float(post.SCORE_THRESH),
            "nms_iou": float(post.NMS_IOU), "max_per_class": int(post.MAX_PER_CLASS),
            "max_per_image": int(post.MAX_PER_IMAGE)}
    if onnx:
        add_onnx(paths, meta, (height, width), out_dir)
    paths["meta"] = write_meta(out_dir, meta)
    return paths


def export_parts(net, prefix, ctx=mx.cpu(), motion=None):
    """Write every part; returns {part: (symbol file, params file)}. ``motion``: the TEST.MOTION settings
    the stream should run with, recorded in parts.json; a residual memory also exports ``project`` (the
    large frame's projection) and ``combine`` (frame term, memory input -> level 0), which a propagated
    small step chains itself (lstm_ssd.detector.LSTMSSD.step_moved)."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    h, w = net.image_hw
    frame = mx.nd.zeros((1, 3, h, w), ctx=ctx)
    state = net.zero_state(1, ctx)
    inputs = {}
    parts = dict(net.parts())
    if net.residual:
        parts.update(project=net.project, combine=net.combine_block())
    for part in parts.values():
        part.hybridize(False)
        part.hybridize()       # plain static graph: the portable artefact (MKLDNN fusion happens at load)
    for e in net.extractor_names:
        feats = net.extractor(e)(frame)
        inputs[f"extractor_{e}"] = [[1, 3, h, w]]
        if net.memory is not None:
            out, _, _ = net.memory_step(e)(feats, *state)
            inputs[f"lstm_step_{e}"] = [list(feats.shape), list(state[0].shape), list(state[1].shape)]
        else:
            out = net.project(feats)
            inputs["project"] = [list(feats.shape)]
    net.head(out)
    inputs["head"] = [list(out.shape)]
    if net.residual:
        large = net.large(frame)
        # what the correction reads: the carried h, or the memory's output at this frame
        memory_in = state[1] if net.from_state else net.memory.steps["large"](large, *state)[0]
        key = net.project(large)
        net.combine_block()(key, memory_in)
        inputs["project"] = [list(large.shape)]
        inputs["combine"] = [list(key.shape), list(memory_in.shape)]
    files, described = {}, {}
    for name, part in parts.items():
        base = f"{prefix}-{name}"
        part.export(base, epoch=0)
        files[name] = (base + "-symbol.json", base + "-0000.params")
        sym = mx.sym.load(files[name][0])
        params = set(mx.nd.load(files[name][1]))
        names = [n for n in sym.list_inputs() if f"arg:{n}" not in params and f"aux:{n}" not in params]
        # Gluon names the inputs data0, data1, ... in call order; list_inputs() is topological
        names.sort(key=lambda n: int(n[4:]) if n[4:].isdigit() else -1)
        described[name] = {"symbol": os.path.basename(files[name][0]), "params": os.path.basename(files[name][1]),
                           "inputs": names, "input_shapes": inputs[name]}
    meta = {"model_type": net.type, "image_size": [h, w], "extractors": net.extractor_names,
            "writes_memory": {e: net.writes_memory[e] for e in net.extractor_names},
            "state_shape": list(net.state_shape) if net.memory is not None else None,
            "num_classes": net.num_classes, "box_stds": list(net.cfg.BOX_STDS),
            "input": "RGB 0..255 float32, NCHW, resized to image_size [H, W] (the backbone's input scaling is in the graph)",
            "anchors": net.anchors().tolist(),
            "memory_input": net.cfg.LSTM.RESIDUAL_INPUT if net.residual else None,
            "motion": dict(motion) if motion else None,
            "parts": described}
    atomic_write_json(f"{prefix}-parts.json", meta, sort_keys=False)
    return files


def load_parts(prefix, ctx=mx.cpu()):
    """{part: SymbolBlock} from the files written by export_parts."""
    path = f"{prefix}-parts.json"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: export with lstm_ssd.export first")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    folder = os.path.dirname(os.path.abspath(path))
    out = {}
    for name, d in meta["parts"].items():
        out[name] = mx.gluon.SymbolBlock.imports(os.path.join(folder, d["symbol"]), d["inputs"],
                                                 os.path.join(folder, d["params"]), ctx=ctx)
    return out


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(description="Export each extractor, LSTM step and head separately")
    ap.add_argument("--cfg", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--output", required=True, help="file prefix, e.g. export/lfs")
    args = ap.parse_args(argv)
    cfg = lstm_config.load(args.cfg)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)   # unusable: one error line, first
    net = load_model(cfg, args.model)
    for name, (sym, params) in export_parts(net, args.output, motion=cfg.TEST.MOTION).items():
        print(f"{name}: {sym} {params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
