"""RPN of the reference R-FCN: 1x1 convs on the RPN half of the feature map, no extra 3x3 conv.

Channel layout is MXNet MultiProposal's: scores (N, 2A, H, W) with the A background scores first,
deltas (N, 4A, H, W) with channel a*4+k; anchors enumerate (h, w, a) as lib.anchors.shift_anchors.
"""
from mxnet import init
from mxnet.gluon import nn


class RPN(nn.HybridBlock):
    def __init__(self, num_anchors, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        with self.name_scope():
            self.cls = nn.Conv2D(2 * num_anchors, 1, weight_initializer=init.Normal(0.01))
            self.box = nn.Conv2D(4 * num_anchors, 1, weight_initializer=init.Normal(0.01))

    def hybrid_forward(self, F, x):
        return self.cls(x), self.box(x)


def rpn_cls_prob(F, cls_score):
    """Softmax over (bg, fg) of every anchor, keeping the (N, 2A, H, W) layout."""
    prob = F.softmax(F.reshape(cls_score, shape=(0, 2, -1, 0)), axis=1)
    return F.reshape_like(prob, cls_score)


def denormalize_rpn_deltas(F, box_pred, stds, num_anchors):
    """(N, 4A, H, W) deltas predicted in std units -> raw deltas for MultiProposal."""
    x = F.reshape(box_pred, shape=(0, -4, num_anchors, 4, -2))               # (N,A,4,H,W)
    parts = F.split(x, num_outputs=4, axis=2)
    x = F.concat(*[parts[k] * float(stds[k]) for k in range(4)], dim=2)
    return F.reshape(x, shape=(0, -3, -2))


def rpn_flatten(F, cls_score, box_pred, num_anchors):
    """-> scores (N, H*W*A, 2) and deltas (N, H*W*A, 4) in the (h, w, a) anchor order."""
    scores = F.reshape(cls_score, shape=(0, -4, 2, num_anchors, -2))         # (N,2,A,H,W)
    scores = F.reshape(F.transpose(scores, axes=(0, 3, 4, 2, 1)), shape=(0, -1, 2))
    deltas = F.reshape(box_pred, shape=(0, -4, num_anchors, 4, -2))          # (N,A,4,H,W)
    deltas = F.reshape(F.transpose(deltas, axes=(0, 3, 4, 1, 2)), shape=(0, -1, 4))
    return scores, deltas
