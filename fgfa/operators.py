"""The three compiled operators FGFA needs, taken from lib.ops (one place that adapts to it).

``lib.ops`` runs our CPU kernels, or MXNet's contrib operators with ``builtin=True`` (GPU, and the
test oracle). ``F`` is mx.nd or mx.sym so every caller stays hybridizable.
"""
from lib import ops as _ops


def multi_proposal(F, cls_prob, bbox_pred, im_info, builtin=None, **attrs):
    """MultiProposal: (N,2A,H,W), (N,4A,H,W), (N,3) -> rois (N*post, 5) [batch, x1, y1, x2, y2] (+1 convention)."""
    return _ops.multi_proposal(cls_prob, bbox_pred, im_info, F=F, builtin=builtin, **attrs)


def psroi_pooling(F, data, rois, builtin=None, **attrs):
    """PSROIPooling: (N, D*G*G, H, W), (R, 5) -> (R, D, P, P)."""
    return _ops.psroi_pooling(data, rois, F=F, builtin=builtin, **attrs)


def flow_warp(F, data, flow, builtin=None):
    """Bilinear warp of ``data`` (N,C,H,W) at (x + flow[:,0], y + flow[:,1]); zeros outside."""
    return _ops.flow_warp(data, flow, F=F, builtin=builtin)
