"""The M2Det inference artifact (docs/DESIGN.md): the network with softmax, decoding, clipping and
per-class NMS in one graph, meta.json, optionally ONNX."""
import logging

import mxnet as mx

from lib.config import size_hw
from lib.export import add_onnx, export_block, write_meta

from .detector import M2DetInference
from .inference import model_at_size


def export_inference_model(net, cfg, classes, out_dir, onnx=False, ctx=None):
    """Write the inference artifact (docs/DESIGN.md): model-symbol.json + model-0000.params with
    decode, clip and NMS inside, meta.json, and optionally model.onnx. Returns a dict of paths.
    It runs at INPUT.SIZE, or at TEST.SIZES[0] when that is given (priors per TEST.PRIOR_SIZES)."""
    ctx = ctx or mx.cpu()
    sizes = list(cfg.TEST.SIZES or [])
    if sizes and size_hw(sizes[0], "TEST.SIZES[0]") != net.input_hw:
        # the artifact runs at the first test size (e.g. a frame upscaled past the training size)
        net, cfg = model_at_size(net, cfg, sizes[0], ctx, cfg.TEST.PRIOR_SIZES)
    if len(sizes) > 1 or cfg.TEST.FLIP:
        logging.getLogger("m2det").warning(
            "TEST.SIZES %s / TEST.FLIP %s (test-time augmentation) are not part of the artifact: it runs "
            "once at %s", sizes, cfg.TEST.FLIP, list(net.input_hw))
    block = M2DetInference(net, cfg.TEST)
    block.priors.initialize(ctx=ctx)
    paths = export_block(block, out_dir, net.input_hw, ctx)
    meta = {"detector": "m2det", "classes": list(classes),
            "input": {"resize": "fixed", "size": list(net.input_hw), "mean": list(cfg.INPUT.MEAN),
                      "std": list(cfg.INPUT.STD)},
            "ops_library": False, "nms": "hard", "score_threshold": float(cfg.TEST.SCORE_THRESH),
            "nms_iou": float(cfg.TEST.NMS_IOU), "max_per_class": int(cfg.TEST.MAX_PER_CLASS),
            "max_per_image": int(cfg.TEST.MAX_PER_IMAGE), "backbone": cfg.MODEL.BACKBONE}
    if onnx:
        add_onnx(paths, meta, net.input_hw, out_dir)
    paths["meta"] = write_meta(out_dir, meta)
    return paths
