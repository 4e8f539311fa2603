"""R-FCN head: position-sensitive score and box maps, PSROIPooling, 7x7 average voting.

Box regression is class-agnostic as in the reference: 8 channels = (background, object) x 4.
"""
import mxnet as mx
import numpy as np
from mxnet import init
from mxnet.gluon import nn

from lib.matching import sample_rois

from .operators import psroi_pooling


class RFCNHead(nn.HybridBlock):
    """(feat (N,C,H,W), rois (R,5) [batch, x1, y1, x2, y2] inclusive) -> cls (R, classes), box (R, 8)."""

    def __init__(self, num_classes, group=7, feat_stride=16, builtin_ops=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.group, self.feat_stride = num_classes, group, feat_stride
        self.builtin_ops = builtin_ops
        with self.name_scope():
            self.cls = nn.Conv2D(group * group * num_classes, 1, weight_initializer=init.Normal(0.01))
            self.box = nn.Conv2D(group * group * 8, 1, weight_initializer=init.Normal(0.001))

    def hybrid_forward(self, F, feat, rois):
        return rfcn_vote(F, self.cls(feat), self.box(feat), rois, self.num_classes, self.group, self.feat_stride,
                         self.builtin_ops)

    def loss(self, feat, proposals, gt_boxes, gt_labels, train, stds, rng):
        """R-FCN losses of a batch (inside autograd.record): every proposal and gt box sampled into
        foreground / background RoIs with targets, softmax cross-entropy + smooth L1 per RoI, and OHEM
        (per image the TRAIN.OHEM_ROIS RoIs of highest loss kept). ``proposals`` (R,5) [image, x1, y1,
        x2, y2] in MultiProposal's +1 convention (numpy); ``gt_boxes`` / ``gt_labels`` per image; ``stds``:
        RCNN_BBOX_STDS. Returns (cls_loss, box_loss)."""
        ctx = feat.context
        n_img = feat.shape[0]
        roi_list, lab_list, tgt_list, wgt_list = [], [], [], []
        for n in range(n_img):
            # +1-inclusive proposals -> our corners; sample_rois appends the gt boxes itself
            props = proposals[proposals[:, 0] == n, 1:5] + np.array([0, 0, 1, 1], np.float32)
            r, lab, tgt, wgt = sample_rois(props, gt_boxes[n], gt_labels[n], batch_size=-1,
                                           fg_iou=train.RCNN_FG_IOU, bg_iou=tuple(train.RCNN_BG_IOU),
                                           stds=tuple(stds), rng=rng)
            r = np.asarray(r, np.float32) - np.array([0, 0, 1, 1], np.float32)   # back to +1 convention
            roi_list.append(np.concatenate([np.full((len(r), 1), n, np.float32), r], axis=1))
            lab_list.append(np.asarray(lab))
            tgt_list.append(np.asarray(tgt, np.float32))
            wgt_list.append(np.asarray(wgt, np.float32))
        rois = mx.nd.array(np.concatenate(roi_list), ctx=ctx)
        cls, box = self(feat, rois)
        labels = mx.nd.array(np.concatenate(lab_list).astype(np.float32), ctx=ctx)
        targets = mx.nd.array(np.concatenate(tgt_list), ctx=ctx)
        weights = mx.nd.array(np.concatenate(wgt_list), ctx=ctx)
        roi_ce = -mx.nd.pick(mx.nd.log_softmax(cls, axis=-1), labels, axis=-1)
        roi_l1 = (mx.nd.smooth_l1(box[:, 4:8] - targets, scalar=train.RCNN_SMOOTH_L1_SIGMA) * weights).sum(axis=1)
        # OHEM: per image keep the RoIs with the highest (cls + box) loss
        per_roi = (roi_ce + roi_l1).asnumpy()
        keep = np.zeros(len(per_roi), np.float32)
        offset = 0
        for n in range(n_img):
            count = len(lab_list[n])
            order = np.argsort(-per_roi[offset:offset + count], kind="stable")[:train.OHEM_ROIS]
            keep[offset + order] = 1.0
            offset += count
        keep_nd = mx.nd.array(keep, ctx=ctx)
        norm = float(max(keep.sum(), 1.0))
        return (roi_ce * keep_nd).sum() / norm, (roi_l1 * keep_nd).sum() / norm


def rfcn_vote(F, cls_map, box_map, rois, num_classes, group, feat_stride, builtin_ops=None):
    """Position-sensitive maps + rois -> cls (R, classes), box (R, 8): PSROIPooling, then the average
    over the group x group bins (the head's parameter-free part; int8 inference runs the maps apart)."""
    attrs = dict(spatial_scale=1.0 / feat_stride, pooled_size=group, group_size=group)
    cls = psroi_pooling(F, cls_map, rois, builtin=builtin_ops, output_dim=num_classes, **attrs)
    box = psroi_pooling(F, box_map, rois, builtin=builtin_ops, output_dim=8, **attrs)
    return F.mean(cls, axis=(2, 3)), F.mean(box, axis=(2, 3))
