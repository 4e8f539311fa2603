"""Shared pieces of the exported inference artifact (docs/DESIGN.md "Exported inference artifact").

Each family builds its own inference graph (its network, decoding, clipping); what they share is here:
the per-class NMS inside the graph, the ``meta.json`` writer, the MXNet-symbol export and the ONNX
export with its fix-ups. ``lib.tools.export`` asks the family registry which family a run is and calls
that family's ``export``.
"""
import json
import os

import mxnet as mx
import numpy as np

from lib.fileio import atomic_write_json

META_FILE = "meta.json"


class ExportNotSupported(RuntimeError):
    """This family cannot be written as the standard single-frame artifact (the message says why)."""


def graph_multiclass_nms(F, scores, boxes, num_classes, score_thresh, nms_iou, max_per_class, max_total,
                         pre_nms_top_k=0):
    """Per-class hard NMS inside a graph -> ids (B,K,1), scores (B,K,1), boxes (B,K,4), -1 padded.

    ``scores`` (B,P,C) foreground class scores, ``boxes`` (B,P,4) shared by the classes. Each class runs
    its own ``box_nms`` (keeps scores > ``score_thresh``, the best ``pre_nms_top_k`` candidates when > 0,
    suppresses IoU > ``nms_iou`` and moves suppressed rows, all -1, to the end), keeps ``max_per_class``
    rows; with several classes the rows are then sorted by score (a box_nms with IoU threshold 1, which
    suppresses nothing) and the best ``max_total`` kept. K = min(max_total, C * max_per_class).
    """
    top_k = int(pre_nms_top_k) if int(pre_nms_top_k) > 0 else -1
    per_class = []
    for c in range(num_classes):
        score = F.slice_axis(scores, axis=-1, begin=c, end=c + 1)
        dets = F.concat(F.ones_like(score) * c, score, boxes, dim=-1)
        dets = F.contrib.box_nms(dets, overlap_thresh=float(nms_iou), valid_thresh=float(score_thresh), topk=top_k,
                                 coord_start=2, score_index=1, id_index=-1, force_suppress=True)
        per_class.append(F.slice_axis(dets, axis=1, begin=0, end=int(max_per_class)))
    # axis -2, not 1: MXNet int8 quantization leaves negative-axis concats in float (a quantized
    # concat would round the scores to the coarse uint8 grid of the box coordinates)
    dets = F.concat(*per_class, dim=-2) if len(per_class) > 1 else per_class[0]
    if num_classes > 1:
        dets = F.contrib.box_nms(dets, overlap_thresh=1.0, valid_thresh=float(score_thresh), topk=-1,
                                 coord_start=2, score_index=1, id_index=-1, force_suppress=True)
    dets = F.slice_axis(dets, axis=1, begin=0, end=min(int(max_total), num_classes * int(max_per_class)))
    return (F.slice_axis(dets, axis=-1, begin=0, end=1), F.slice_axis(dets, axis=-1, begin=1, end=2),
            F.slice_axis(dets, axis=-1, begin=2, end=6))


def export_block(block, out_dir, input_hw, ctx=None):
    """Hybridize ``block``, run it once on a zero (1,3,H,W) input and write model-symbol.json +
    model-0000.params into ``out_dir``; returns {"symbol", "params"}."""
    os.makedirs(out_dir, exist_ok=True)
    block.hybridize()
    height, width = (int(v) for v in input_hw)
    block(mx.nd.zeros((1, 3, height, width), ctx=ctx or mx.cpu()))
    prefix = os.path.join(out_dir, "model")
    block.export(prefix, epoch=0)
    return {"symbol": prefix + "-symbol.json", "params": prefix + "-0000.params"}


def write_meta(out_dir, meta):
    """meta.json of the artifact (atomic); returns its path."""
    return atomic_write_json(os.path.join(out_dir, META_FILE), meta, sort_keys=False)


def record_fusion(meta_path, settings):
    """Add a run's checked TEST.FUSE settings (``lib.streaming.checked_fusion_settings``; None: the run
    does not fuse, nothing to add) to a written meta.json as "fuse" (atomic): ``lib.tools.infer`` then
    streams the artifact's frames through it."""
    if settings is None:
        return meta_path
    with open(meta_path, "r", encoding="utf-8") as f:
        meta = json.load(f)
    meta["fuse"] = settings
    return atomic_write_json(meta_path, meta, sort_keys=False)


def add_onnx(paths, meta, input_hw, out_dir):
    """Export ``paths``' symbol to model.onnx and record the graph's output names in ``meta``."""
    paths["onnx"] = export_onnx(paths["symbol"], paths["params"], input_hw, os.path.join(out_dir, "model.onnx"))
    with open(paths["symbol"], "r", encoding="utf-8") as f:
        graph = json.load(f)
    meta["onnx_outputs"] = [graph["nodes"][h[0]]["name"] for h in graph["heads"]]
    return paths


def export_onnx(symbol_path, params_path, size, onnx_path):
    """ONNX export of the exported symbol with mx.onnx, NMS included (box_nms maps to ONNX
    NonMaxSuppression with per-class suppression identical here because each class runs its own
    box_nms). ``size``: S or (H, W) of the input ``data``.

    MXNet 1.9's exporter targets the installed onnx's newest opset but writes ``Split`` without the
    ``num_outputs`` attribute that opset >= 18 requires; the fix-up below adds it (the number of
    outputs of each such node), which is what the node meant.
    """
    import onnx
    height, width = (size, size) if np.isscalar(size) else size
    mx.onnx.export_model(symbol_path, params_path, in_shapes=[(1, 3, int(height), int(width))],
                         in_types=[np.float32], onnx_file_path=onnx_path, verbose=False)
    model = onnx.load(onnx_path)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    changed = False
    for node in model.graph.node:
        if node.op_type == "Split" and opset >= 18 and len(node.input) < 2 and \
                not any(a.name == "num_outputs" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("num_outputs", len(node.output)))
            changed = True
    if changed:
        onnx.save(model, onnx_path)
    onnx.checker.check_model(onnx_path)
    return onnx_path
