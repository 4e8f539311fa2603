"""The R-FCN frame baseline as the project's standard single-frame artifact (docs/DESIGN.md).

FGFA itself aggregates a window of frames and has no single-frame form; its frame baseline does: padding
to the stride, im_info, features, RPN + proposals + R-FCN (the compiled operators, or MXNet's own with
``builtin_ops``), box decoding, clipping and per-class NMS, all in one graph.
"""
from mxnet import gluon

from lib.bbox import decode_boxes_F
from lib.export import ExportNotSupported, export_block, graph_multiclass_nms, write_meta

from .config import input_scale


class RFCNInference(gluon.HybridBlock):
    """(1,3,H,W) normalised, unpadded -> ids, scores, boxes of the R-FCN baseline.

    Inside the graph: zero padding to a multiple of IMAGE.PAD_STRIDE (as fgfa.data.prepare_image),
    im_info = [H, W, 1] from the input shape, features, RPN + MultiProposal + R-FCN (fgfa's
    InferenceHead), box decoding, clipping and per-class NMS (TEST.NMS_IOU).
    """

    def __init__(self, net, cfg, **kwargs):
        super().__init__(**kwargs)
        self.features, self.head = net.features, net.head
        self.num_classes = net.num_classes
        self.stride = int(cfg.IMAGE.PAD_STRIDE)
        self.stds = tuple(float(v) for v in cfg.NETWORK.RCNN_BBOX_STDS)
        self.score_thresh = float(cfg.TEST.SCORE_THRESH)
        self.nms_iou = float(cfg.TEST.NMS_IOU)
        self.max_per_class = min(int(cfg.TEST.MAX_PER_IMAGE), int(cfg.TEST.RPN_POST_NMS_TOP_N))
        self.max_total = int(cfg.TEST.MAX_PER_IMAGE)

    def hybrid_forward(self, F, x):
        s = self.stride
        # pad right/bottom to a multiple of the stride: pad by s-1, then cut to ceil(H/s)*s
        padded = F.pad(x, mode="constant", constant_value=0.0, pad_width=(0, 0, 0, 0, 0, s - 1, 0, s - 1))
        cells = F.Pooling(x, kernel=(s, s), stride=(s, s), pool_type="max", pooling_convention="full")
        target = F.UpSampling(cells, scale=s, sample_type="nearest")
        padded = F.slice_like(padded, target, axes=(2, 3))
        hw = F.cast(F.slice_axis(F.shape_array(x), axis=0, begin=2, end=4), "float32")      # [H, W]
        im_info = F.reshape(F.concat(hw, F.ones_like(F.slice_axis(hw, axis=0, begin=0, end=1)), dim=0),
                            (1, 3))
        rois, probs, deltas = self.head(self.features(padded), im_info)
        # MultiProposal rois are +1-inclusive: x2 + 1 gives our exclusive corners
        corners = F.slice_axis(rois, axis=1, begin=1, end=5)
        corners = F.broadcast_add(corners, F.reshape(F.concat(F.zeros((1, 2)), F.ones((1, 2)), dim=1), (1, 4)))
        boxes = decode_boxes_F(F, F.expand_dims(F.slice_axis(deltas, axis=1, begin=4, end=8), 0),
                               F.expand_dims(corners, 0), stds=self.stds)
        limit = F.reshape(F.concat(F.reverse(hw, axis=0), F.reverse(hw, axis=0), dim=0), (1, 1, 4))
        boxes = F.broadcast_minimum(F.relu(boxes), limit)
        scores = F.expand_dims(F.slice_axis(probs, axis=-1, begin=1, end=None), 0)
        return graph_multiclass_nms(F, scores, boxes, self.num_classes, self.score_thresh, self.nms_iou,
                                    self.max_per_class, self.max_total)


def export_rfcn(net, cfg, classes, out_dir, onnx=False, builtin_ops=False, ctx=None):
    """Write the R-FCN artifact; ``builtin_ops``: MXNet's own contrib MultiProposal / PSROIPooling in the
    graph instead of the compiled operators, so it runs on a stock mxnet without lib/libdetops.so (slower
    on CPU). ONNX has no form of those operators: ExportNotSupported after the MXNet artifact is written."""
    previous = net.builtin_ops
    net.use_builtin_ops(True if builtin_ops else False)
    short, long_side = input_scale(cfg)
    try:
        paths = export_block(RFCNInference(net, cfg, prefix="rfcn_inference_"), out_dir, (short, long_side), ctx)
    finally:
        net.use_builtin_ops(previous)
    meta = {"detector": "rfcn", "classes": list(classes),
            "input": {"resize": "keep_ratio", "short_side": short, "max_size": long_side,
                      "mean": [float(v) for v in cfg.INPUT.MEAN], "std": [float(v) for v in cfg.INPUT.STD]},
            "ops_library": not builtin_ops, "nms": "hard", "score_threshold": float(cfg.TEST.SCORE_THRESH),
            "nms_iou": float(cfg.TEST.NMS_IOU), "max_per_image": int(cfg.TEST.MAX_PER_IMAGE)}
    paths["meta"] = write_meta(out_dir, meta)
    if onnx:
        raise ExportNotSupported(
            f"rfcn: the MXNet artifact is written to {out_dir}, but its proposal and position-sensitive RoI "
            "pooling operators have no ONNX mapping; run it with --runtime mxnet")
    return paths
