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
        attrs = dict(spatial_scale=1.0 / self.feat_stride, pooled_size=self.group, group_size=self.group)
        cls = psroi_pooling(F, self.cls(feat), rois, builtin=self.builtin_ops,
                            output_dim=self.num_classes, **attrs)
        box = psroi_pooling(F, self.box(feat), rois, builtin=self.builtin_ops, output_dim=8, **attrs)
        return F.mean(cls, axis=(2, 3)), F.mean(box, axis=(2, 3))
