"""lib.losses against numpy reference code, MXNet's smooth_l1, gluoncv's SSDMultiBoxLoss and finite
differences."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from lib.losses import MultiBoxLoss, hard_negative_mask, sigmoid_bce, sigmoid_focal_loss, smooth_l1


# ----------------------------------------------------------------------------- numpy references

def np_smooth_l1(x, sigma):
    s2 = sigma ** 2
    return np.where(np.abs(x) < 1 / s2, 0.5 * s2 * x ** 2, np.abs(x) - 0.5 / s2)


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_bce(x, z):
    p = 1 / (1 + np.exp(-x))
    return -(z * np.log(p) + (1 - z) * np.log(1 - p))


def np_focal(x, z, alpha, gamma):
    p = 1 / (1 + np.exp(-x))
    p_t = np.where(z == 1, p, 1 - p)
    a_t = np.where(z == 1, alpha, 1 - alpha)
    return -a_t * (1 - p_t) ** gamma * np.log(p_t)


def np_targets(labels, columns, background_logit):
    onehot = np.zeros(labels.shape + (columns,))
    for idx in np.ndindex(labels.shape):
        k = labels[idx] if background_logit else labels[idx] - 1
        if labels[idx] >= 0 and 0 <= k < columns:
            onehot[idx + (int(k),)] = 1
    return onehot


def np_multibox(cls_pred, box_pred, cls_t, box_t, kind, ratio=3, loc_w=1.0, cls_w=1.0, sigma=1.0,
                min_neg=0, max_neg=0, alpha=0.25, gamma=2.0, background_logit=True):
    """Loop-per-image reference with explicit sorting of negatives."""
    cls_pred = cls_pred.astype(np.float64)
    total_cls = total_box = 0.0
    num_pos = max(1, int((cls_t > 0).sum()))
    for b in range(cls_pred.shape[0]):
        labels = cls_t[b]
        if kind == "softmax":
            loss = -np_log_softmax(cls_pred[b])[np.arange(len(labels)), np.maximum(labels, 0).astype(int)]
        else:
            z = np_targets(labels, cls_pred.shape[-1], background_logit)
            elem = np_bce(cls_pred[b], z) if kind == "sigmoid" else np_focal(cls_pred[b], z, alpha, gamma)
            loss = elem.sum(-1)
        pos = labels > 0
        neg = labels == 0
        if kind == "focal":
            chosen = pos | neg
        else:
            k = max(ratio * pos.sum(), min_neg)
            if max_neg:
                k = min(k, max_neg)
            neg_idx = np.where(neg)[0]
            hardest = neg_idx[np.argsort(-loss[neg_idx], kind="stable")[:int(k)]]
            chosen = pos.copy()
            chosen[hardest] = True
        total_cls += loss[chosen].sum()
        total_box += np_smooth_l1(box_pred[b][pos] - box_t[b][pos], sigma).sum()
    return cls_w * total_cls / num_pos, loc_w * total_box / num_pos


def random_case(seed, batch=3, anchors=40, classes=4, ignore=True, pos_frac=0.15):
    rng = np.random.RandomState(seed)
    cls_pred = rng.randn(batch, anchors, classes + 1).astype(np.float32) * 2
    box_pred = rng.randn(batch, anchors, 4).astype(np.float32)
    box_t = rng.randn(batch, anchors, 4).astype(np.float32)
    cls_t = np.zeros((batch, anchors), np.float32)
    pos = rng.rand(batch, anchors) < pos_frac
    cls_t[pos] = rng.randint(1, classes + 1, pos.sum())
    if ignore:
        cls_t[(rng.rand(batch, anchors) < 0.1) & ~pos] = -1
    return cls_pred, box_pred, cls_t, box_t


def run(loss, *arrays):
    total, cls_loss, box_loss = loss(*[mx.nd.array(a) for a in arrays])
    return total.asscalar(), cls_loss.asscalar(), box_loss.asscalar()


# ----------------------------------------------------------------------------- elementwise

def test_smooth_l1_matches_numpy_and_mxnet_definition():
    x = np.linspace(-2, 2, 41).astype(np.float32)
    for sigma in (1.0, 3.0):
        ours = smooth_l1(mx.nd, mx.nd.array(x), sigma).asnumpy()
        np.testing.assert_allclose(ours, np_smooth_l1(x.astype(np.float64), sigma), rtol=1e-5, atol=1e-7)
    # sigma 3: quadratic inside |x| < 1/9
    assert smooth_l1(mx.nd, mx.nd.array([0.1]), 3.0).asscalar() == pytest.approx(0.5 * 9 * 0.01)
    assert smooth_l1(mx.nd, mx.nd.array([1.0]), 3.0).asscalar() == pytest.approx(1 - 0.5 / 9)


def test_sigmoid_bce_is_stable_and_matches_numpy():
    x = np.array([-50, -3, -0.5, 0, 0.5, 3, 50], np.float32)
    for z in (0.0, 1.0):
        ours = sigmoid_bce(mx.nd, mx.nd.array(x), mx.nd.full(x.shape, z)).asnumpy()
        ref = np.logaddexp(0, x.astype(np.float64)) - x * z  # log(1+e^x) - x z
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
        assert np.isfinite(ours).all()


def test_focal_loss_values_and_gradient_by_finite_differences():
    rng = np.random.RandomState(0)
    x = rng.randn(30) * 2
    z = (rng.rand(30) < 0.3).astype(np.float64)
    ours = sigmoid_focal_loss(mx.nd, mx.nd.array(x, dtype="float64"), mx.nd.array(z, dtype="float64"))
    np.testing.assert_allclose(ours.asnumpy(), np_focal(x, z, 0.25, 2.0), rtol=1e-10)
    # gamma = 0, alpha = 0.5 reduces to half the BCE
    half = sigmoid_focal_loss(mx.nd, mx.nd.array(x, dtype="float64"), mx.nd.array(z, dtype="float64"),
                              alpha=0.5, gamma=0.0)
    np.testing.assert_allclose(half.asnumpy(), 0.5 * np_bce(x, z), rtol=1e-10)
    xs = mx.nd.array(x, dtype="float64")
    xs.attach_grad()
    with autograd.record():
        out = sigmoid_focal_loss(mx.nd, xs, mx.nd.array(z, dtype="float64")).sum()
    out.backward()
    eps = 1e-6
    numeric = (np_focal(x + eps, z, 0.25, 2) - np_focal(x - eps, z, 0.25, 2)) / (2 * eps)
    np.testing.assert_allclose(xs.grad.asnumpy(), numeric, rtol=1e-5, atol=1e-8)


def test_hard_negative_mask_picks_highest_loss_negatives():
    loss = mx.nd.array([[5, 1, 4, 3, 2, 9, 0.5]])
    positive = mx.nd.array([[0, 0, 0, 0, 0, 1, 0]])
    negative = mx.nd.array([[1, 1, 0, 1, 1, 0, 1]])  # anchor 2 ignored (highest loss among non-pos)
    mask = hard_negative_mask(mx.nd, loss, positive, negative, 3).asnumpy()[0]
    np.testing.assert_array_equal(mask, [1, 0, 0, 1, 1, 0, 0])
    capped = hard_negative_mask(mx.nd, loss, positive, negative, 3, max_negatives=1).asnumpy()[0]
    np.testing.assert_array_equal(capped, [1, 0, 0, 0, 0, 0, 0])
    floor = hard_negative_mask(mx.nd, loss, positive * 0, negative, 3, min_negatives=2).asnumpy()[0]
    np.testing.assert_array_equal(floor, [1, 0, 0, 1, 0, 0, 0])


# ----------------------------------------------------------------------------- MultiBoxLoss

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hybridize", [False, True])
def test_softmax_multibox_matches_gluoncv(seed, hybridize):
    from gluoncv.loss import SSDMultiBoxLoss
    cls_pred, box_pred, cls_t, box_t = random_case(seed, ignore=False)
    sigma = 2.0
    ours = MultiBoxLoss("softmax", sigma=sigma)
    if hybridize:
        ours.hybridize()
    total, cls_loss, box_loss = run(ours, cls_pred, box_pred, cls_t, box_t)
    # gluoncv's rho is the L1/L2 switch point: rho = 1 / sigma^2
    ref_sum, ref_cls, ref_box = SSDMultiBoxLoss(negative_mining_ratio=3, rho=1 / sigma ** 2)(
        mx.nd.array(cls_pred), mx.nd.array(box_pred), mx.nd.array(cls_t), mx.nd.array(box_t))
    assert total == pytest.approx(ref_sum[0].sum().asscalar(), rel=1e-5)
    assert cls_loss == pytest.approx(ref_cls[0].sum().asscalar(), rel=1e-5)
    assert box_loss == pytest.approx(ref_box[0].sum().asscalar(), rel=1e-5)


@pytest.mark.parametrize("kind,kwargs", [
    ("softmax", {}),
    ("softmax", {"negative_ratio": 2, "loc_weight": 2.0, "min_negatives": 5}),
    ("sigmoid", {"loc_weight": 4.0, "cls_weight": 1.0}),
    ("sigmoid", {"background_logit": False, "max_negatives": 4}),
    ("focal", {}),
    ("focal", {"background_logit": False, "sigma": 3.0, "focal_alpha": 0.4, "focal_gamma": 1.5}),
])
def test_multibox_matches_numpy_reference_with_ignored_anchors(kind, kwargs):
    cls_pred, box_pred, cls_t, box_t = random_case(5)
    if kwargs.get("background_logit") is False:
        cls_pred = cls_pred[..., 1:]
    ours = MultiBoxLoss(kind, **kwargs)
    total, cls_loss, box_loss = run(ours, cls_pred, box_pred, cls_t, box_t)
    ref_kwargs = {{"negative_ratio": "ratio", "loc_weight": "loc_w", "cls_weight": "cls_w",
                   "min_negatives": "min_neg", "max_negatives": "max_neg", "focal_alpha": "alpha",
                   "focal_gamma": "gamma"}.get(k, k): v for k, v in kwargs.items()}
    ref_cls, ref_box = np_multibox(cls_pred, box_pred, cls_t, box_t, kind, **ref_kwargs)
    assert cls_loss == pytest.approx(ref_cls, rel=1e-5)
    assert box_loss == pytest.approx(ref_box, rel=1e-5)
    assert total == pytest.approx(ref_cls + ref_box, rel=1e-5)


def test_ignored_anchors_do_not_contribute_and_no_positive_is_safe():
    cls_pred, box_pred, cls_t, box_t = random_case(3)
    loss = MultiBoxLoss("focal")
    base = run(loss, cls_pred, box_pred, cls_t, box_t)
    changed = cls_pred.copy()
    changed[cls_t < 0] += 100.0  # ignored anchors: any prediction
    assert run(loss, changed, box_pred, cls_t, box_t) == pytest.approx(base, rel=1e-6)
    empty = np.zeros_like(cls_t)
    total, cls_loss, box_loss = run(MultiBoxLoss("softmax"), cls_pred, box_pred, empty, box_t)
    assert (total, cls_loss, box_loss) == (0.0, 0.0, 0.0)
    total, cls_loss, _ = run(MultiBoxLoss("softmax", min_negatives=2), cls_pred, box_pred, empty, box_t)
    ref_cls, _ = np_multibox(cls_pred, box_pred, empty, box_t, "softmax", min_neg=2)
    assert cls_loss == pytest.approx(ref_cls, rel=1e-5) and cls_loss > 0


def test_multibox_gradient_only_through_selected_anchors():
    cls_pred, box_pred, cls_t, box_t = random_case(4, batch=1, anchors=30)
    cp = mx.nd.array(cls_pred)
    bp = mx.nd.array(box_pred)
    cp.attach_grad()
    bp.attach_grad()
    with autograd.record():
        total, _, _ = MultiBoxLoss("softmax")(cp, bp, mx.nd.array(cls_t), mx.nd.array(box_t))
    total.backward()
    grad_rows = np.abs(cp.grad.asnumpy()[0]).sum(-1) > 0
    pos = cls_t[0] > 0
    assert grad_rows.sum() == min(4 * pos.sum(), (cls_t[0] >= 0).sum())
    assert not grad_rows[cls_t[0] < 0].any()
    box_rows = np.abs(bp.grad.asnumpy()[0]).sum(-1) > 0
    np.testing.assert_array_equal(box_rows, pos)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cls_loss must be one of"):
        MultiBoxLoss("hinge")
    with pytest.raises(ValueError, match="background logit"):
        MultiBoxLoss("softmax", background_logit=False)
