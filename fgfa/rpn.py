"""RPN of the reference R-FCN: 1x1 convs on the RPN half of the feature map, no extra 3x3 conv.

Channel layout is MXNet MultiProposal's: scores (N, 2A, H, W) with the A background scores first,
deltas (N, 4A, H, W) with channel a*4+k; anchors enumerate (h, w, a) as lib.anchors.shift_anchors.
"""
import mxnet as mx
import numpy as np
from mxnet import init
from mxnet.gluon import nn

from lib.matching import rpn_targets


class RPN(nn.HybridBlock):
    def __init__(self, num_anchors, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        with self.name_scope():
            self.cls = nn.Conv2D(2 * num_anchors, 1, weight_initializer=init.Normal(0.01))
            self.box = nn.Conv2D(4 * num_anchors, 1, weight_initializer=init.Normal(0.01))

    def hybrid_forward(self, F, x):
        return self.cls(x), self.box(x)

    def loss(self, cls_score, box_pred, anchors, gt_boxes, im_info, train, stds, rng):
        """RPN losses of a batch (inside autograd.record): softmax cross-entropy over the sampled anchors
        and smooth L1 on the positives' deltas (normalised by RPN_BATCH_SIZE per image).

        ``anchors`` (H*W*A, 4) in MultiProposal's +1 convention; ``gt_boxes`` per image (G,4) resized
        pixels; ``im_info`` (N,3); ``train``: the TRAIN config (RPN_* keys); ``stds``: RPN_BBOX_STDS.
        Targets are drawn image by image with ``rng``. Returns (cls_loss, box_loss)."""
        ctx = cls_score.context
        n_img = cls_score.shape[0]
        labels_all, targets_all, weights_all = [], [], []
        for n in range(n_img):
            hw = (float(im_info[n][0]), float(im_info[n][1]))
            lab, tgt, wgt = rpn_targets(anchors, gt_boxes[n], hw, pos_iou=train.RPN_POS_IOU,
                                        neg_iou=train.RPN_NEG_IOU, batch_size=train.RPN_BATCH_SIZE,
                                        fg_fraction=train.RPN_FG_FRACTION,
                                        allowed_border=train.RPN_ALLOWED_BORDER,
                                        stds=tuple(stds), rng=rng, offset=1)
            labels_all.append(lab)
            targets_all.append(tgt)
            weights_all.append(wgt)
        labels = mx.nd.array(np.stack(labels_all), ctx=ctx)
        targets = mx.nd.array(np.stack(targets_all), ctx=ctx)
        weights = mx.nd.array(np.stack(weights_all), ctx=ctx)
        scores_flat, deltas_flat = rpn_flatten(mx.nd, cls_score, box_pred, self.num_anchors)
        valid = labels >= 0
        logp = mx.nd.log_softmax(scores_flat, axis=-1)
        ce = -mx.nd.pick(logp, mx.nd.maximum(labels, 0), axis=-1) * valid
        cls_loss = ce.sum() / mx.nd.maximum(valid.sum(), 1)
        box_loss = (mx.nd.smooth_l1(deltas_flat - targets, scalar=train.RPN_SMOOTH_L1_SIGMA)
                    * weights).sum() / (n_img * train.RPN_BATCH_SIZE)
        return cls_loss, box_loss


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
