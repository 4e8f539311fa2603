"""Losses of SSD-style detectors (M2Det, LSTM-SSD) as Gluon HybridBlocks and ``F``-generic functions.

Targets follow lib.matching: ``cls_target`` (B,P) holds 0 for background, k+1 for foreground class k,
and a negative value (-1) for anchors to ignore; ``box_target`` (B,P,4) holds encoded offsets (only
read at positive anchors).

``MultiBoxLoss(cls_loss=...)``:
- 'softmax' (SSD / M2Det): softmax cross-entropy over C+1 logits (background = column 0) on positives
  and the hardest ``negative_ratio`` x #positives negatives of EACH image (3:1 hard negative mining),
  plus smooth L1 on positives; both divided by the number of positives in the batch.
- 'sigmoid' (LSTM-SSD / TF Object Detection API): per-class sigmoid cross-entropy summed over the
  classes of an anchor, same per-image hard negative mining (optionally capped by ``max_negatives``),
  weights ``cls_weight`` 1 and ``loc_weight`` 4 in that recipe, divided by the number of matched anchors.
- 'focal' (RetinaNet): sigmoid focal loss (alpha 0.25, gamma 2) on every non-ignored anchor, no
  mining, divided by the number of positives.
For 'sigmoid' and 'focal', ``background_logit=True`` means ``cls_pred`` has C+1 columns and column 0
is a background logit trained like any class (TF-OD's add-background-class layout);
``background_logit=False`` means C columns and a background anchor has an all-zero target
(RetinaNet layout).

The block returns ``(total, cls_loss, box_loss)``, each of shape (1,), with
``total = cls_loss + box_loss`` and the weights already applied.
"""
from mxnet import gluon

CLS_LOSSES = ("softmax", "sigmoid", "focal")


def smooth_l1(F, x, sigma=1.0):
    """Elementwise smooth L1: 0.5 (sigma x)^2 if |x| < 1/sigma^2, else |x| - 0.5/sigma^2.

    sigma = 1 is the Huber loss with delta 1 (SSD, TF-OD); Fast R-CNN / RetinaNet use sigma 3.
    Same definition as MXNet's ``smooth_l1(data, scalar=sigma)``.
    """
    return F.smooth_l1(x, scalar=float(sigma))


def sigmoid_bce(F, logits, targets):
    """Elementwise sigmoid cross-entropy with logits, numerically stable:
    max(x, 0) - x z + log(1 + exp(-|x|))."""
    return F.relu(logits) - logits * targets + F.Activation(-F.abs(logits), act_type="softrelu")


def sigmoid_focal_loss(F, logits, targets, alpha=0.25, gamma=2.0):
    """Elementwise focal loss (Lin et al. 2017): alpha_t (1 - p_t)^gamma * BCE(logits, targets)."""
    p = F.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    modulator = F.square(1 - p_t) if gamma == 2 else F.power(1 - p_t, gamma)  # square is faster
    return alpha_t * modulator * sigmoid_bce(F, logits, targets)


def hard_negative_mask(F, anchor_loss, positive, negative, negative_ratio, min_negatives=0,
                       max_negatives=0):
    """Per image, mark the ``negative_ratio * #positives`` negatives with the highest loss.

    anchor_loss, positive, negative: (B,P). The count is raised to ``min_negatives`` and capped by
    ``max_negatives`` (0 = no cap) and by the negatives available. Returns a (B,P) 0/1 mask
    (no gradient).
    """
    anchor_loss = F.BlockGrad(anchor_loss)
    # Losses are >= 0: non-negatives get -1 so they sort after every negative.
    score = F.where(negative > 0, anchor_loss, F.ones_like(anchor_loss) * -1)
    rank = F.argsort(F.argsort(-score, axis=1), axis=1)
    count = F.sum(positive, axis=1) * negative_ratio
    count = F.maximum(count, F.ones_like(count) * min_negatives)
    if max_negatives and max_negatives > 0:
        count = F.minimum(count, F.ones_like(count) * max_negatives)
    mask = F.broadcast_lesser(rank, F.floor(count).expand_dims(axis=1)) * negative
    return F.BlockGrad(mask)


class MultiBoxLoss(gluon.HybridBlock):
    """SSD multibox loss with softmax / sigmoid / focal classification (see the module docstring).

    Parameters: cls_loss, negative_ratio (3), loc_weight (1), cls_weight (1), sigma (smooth L1, 1),
    min_negatives (0), max_negatives (0 = no cap; TF-OD caps hard examples at 3000 per image),
    focal_alpha (0.25), focal_gamma (2), background_logit (True).
    """

    def __init__(self, cls_loss="softmax", negative_ratio=3.0, loc_weight=1.0, cls_weight=1.0,
                 sigma=1.0, min_negatives=0, max_negatives=0, focal_alpha=0.25, focal_gamma=2.0,
                 background_logit=True, **kwargs):
        super().__init__(**kwargs)
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        if cls_loss == "softmax" and not background_logit:
            raise ValueError("cls_loss 'softmax' needs the background logit (column 0)")
        if negative_ratio < 0 or sigma <= 0:
            raise ValueError(f"need negative_ratio >= 0 and sigma > 0, got {negative_ratio}, {sigma}")
        self.cls_loss = cls_loss
        self.negative_ratio = float(negative_ratio)
        self.loc_weight = float(loc_weight)
        self.cls_weight = float(cls_weight)
        self.sigma = float(sigma)
        self.min_negatives = float(min_negatives)
        self.max_negatives = float(max_negatives)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.background_logit = bool(background_logit)

    def _one_hot(self, F, cls_pred, labels):
        """(B,P) labels in {0..C} -> 0/1 targets shaped like cls_pred."""
        columns = F.contrib.arange_like(cls_pred, axis=-1).reshape((1, 1, -1))
        # With a background logit, label k is column k; without, class k+1 is column k and
        # background (0) matches no column.
        shift = 0 if self.background_logit else 1
        return F.broadcast_equal(labels.expand_dims(axis=-1) - shift, columns)

    def hybrid_forward(self, F, cls_pred, box_pred, cls_target, box_target):
        positive = cls_target > 0
        negative = cls_target == 0
        labels = F.relu(cls_target)  # ignored (-1) -> 0, masked out below
        if self.cls_loss == "softmax":
            anchor_loss = -F.pick(F.log_softmax(cls_pred, axis=-1), labels, axis=-1)
        else:
            targets = self._one_hot(F, cls_pred, labels)
            if self.cls_loss == "sigmoid":
                anchor_loss = F.sum(sigmoid_bce(F, cls_pred, targets), axis=-1)
            else:
                anchor_loss = F.sum(sigmoid_focal_loss(F, cls_pred, targets, self.focal_alpha,
                                                       self.focal_gamma), axis=-1)
        if self.cls_loss == "focal":
            selected = F.BlockGrad(positive + negative)
        else:
            selected = positive + hard_negative_mask(F, anchor_loss, positive, negative,
                                                     self.negative_ratio, self.min_negatives,
                                                     self.max_negatives)
        num_pos = F.maximum(F.sum(positive), F.ones((1,)))
        cls_sum = F.sum(anchor_loss * selected)
        box_elem = smooth_l1(F, box_pred - box_target, self.sigma)
        box_sum = F.sum(F.broadcast_mul(box_elem, positive.expand_dims(axis=-1)))
        cls_loss = self.cls_weight * F.broadcast_div(cls_sum.reshape((1,)), num_pos)
        box_loss = self.loc_weight * F.broadcast_div(box_sum.reshape((1,)), num_pos)
        return cls_loss + box_loss, cls_loss, box_loss
