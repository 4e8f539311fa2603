"""R-FCN head: position-sensitive score and box maps, PSROIPooling, 7x7 average voting.

Box regression is class-agnostic as in the reference: 8 channels = (background, object) x 4.
"""
from mxnet import init
from mxnet.gluon import nn

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


def rfcn_vote(F, cls_map, box_map, rois, num_classes, group, feat_stride, builtin_ops=None):
    """Position-sensitive maps + rois -> cls (R, classes), box (R, 8): PSROIPooling, then the average
    over the group x group bins (the head's parameter-free part; int8 inference runs the maps apart)."""
    attrs = dict(spatial_scale=1.0 / feat_stride, pooled_size=group, group_size=group)
    cls = psroi_pooling(F, cls_map, rois, builtin=builtin_ops, output_dim=num_classes, **attrs)
    box = psroi_pooling(F, box_map, rois, builtin=builtin_ops, output_dim=8, **attrs)
    return F.mean(cls, axis=(2, 3)), F.mean(box, axis=(2, 3))
