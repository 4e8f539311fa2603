"""Losses for training a flow network (FGFA's FlowNet) on teacher flow, plus unsupervised terms.

All take and return MXNet NDArrays (imperative training under ``autograd.record``, as FGFA's FlowNet
pre-training); flows are (B, 2, h, w) in pixels of their own grid (FGFA's convention, lib.flow).

- ``epe_loss``: end-point error against a teacher flow (lib.dataset.teacher_flow) over the masked
  cells: the supervised term, at feature resolution.
- ``photometric_loss``: the second image warped by the flow (lib.ops.flow_warp) should look like the
  first; robust Charbonnier penalty ``((d)^2 + eps^2)^alpha`` (alpha 0.45, as in unsupervised flow
  work such as UnFlow), averaged over the channels and the positions whose sample lands inside the
  image. Images at a finer resolution than the flow are average-pooled to it first.
- ``smoothness_loss``: first-order smoothness, mean |flow difference| between neighbouring cells,
  optionally edge-aware (weighted by exp(-edge_weight * mean-over-channels |image difference|), so
  the flow may jump at image edges).
- ``flow_loss``: epe + photometric_weight * photometric + smoothness_weight * smoothness.
"""
import mxnet as mx

from lib import ops


def epe_loss(pred, target, mask):
    """Mean Euclidean distance between ``pred`` and ``target`` (B, 2, h, w) over the cells of
    ``mask`` (B, h, w); (1,) NDArray (0 when the mask is empty)."""
    error = mx.nd.sqrt(mx.nd.sum(mx.nd.square(pred - target), axis=1) + 1e-8)
    return (error * mask).sum() / mx.nd.maximum(mask.sum(), 1.0)


def charbonnier(x, alpha=0.45, eps=1e-3):
    """Elementwise (x^2 + eps^2)^alpha."""
    return mx.nd.power(mx.nd.square(x) + eps * eps, alpha)


def pool_to_grid(images, factor):
    """(B, C, H, W) -> (B, C, ceil(H/f), ceil(W/f)): the mean of each factor x factor cell (partial
    cells: the mean of the pixels present)."""
    factor = int(factor)
    if factor == 1:
        return images
    return mx.nd.Pooling(images, kernel=(factor, factor), stride=(factor, factor), pool_type="avg",
                         pooling_convention="full", count_include_pad=False)


def inside_mask(flow):
    """(B, h, w) float32 NDArray, 1 where (x + dx, y + dy) lies inside the map (no gradient)."""
    flow = flow.detach()
    height, width = flow.shape[2:]
    xs = mx.nd.arange(width, ctx=flow.context).reshape((1, 1, width))
    ys = mx.nd.arange(height, ctx=flow.context).reshape((1, height, 1))
    x = mx.nd.broadcast_add(flow[:, 0], xs)
    y = mx.nd.broadcast_add(flow[:, 1], ys)
    return (x >= 0) * (x <= width - 1) * (y >= 0) * (y <= height - 1)


def _to_flow_grid(images, flow):
    height, width = images.shape[2:]
    rows, cols = flow.shape[2:]
    factor = -(-height // rows)
    if -(-height // factor) != rows or -(-width // factor) != cols:
        raise ValueError(f"images of {width}x{height} do not pool to the flow's {cols}x{rows} grid by a whole factor")
    return pool_to_grid(images, factor)


def photometric_loss(first, second, flow, mask=None, alpha=0.45, eps=1e-3):
    """Charbonnier distance between ``first`` and ``second`` warped by ``flow`` (images (B, C, H, W)
    at the flow's resolution or a whole multiple of it, pooled down), averaged over the channels and
    the positions of ``mask`` (B, h, w; all when None) whose sample lands inside; (1,) NDArray."""
    first, second = _to_flow_grid(first, flow), _to_flow_grid(second, flow)
    warped = ops.flow_warp(second, flow)
    per_position = mx.nd.mean(charbonnier(first - warped, alpha, eps), axis=1)
    weight = inside_mask(flow) if mask is None else inside_mask(flow) * mask
    return (per_position * weight).sum() / mx.nd.maximum(weight.sum(), 1.0)


def smoothness_loss(flow, image=None, edge_weight=10.0):
    """Mean |difference| of ``flow`` (B, 2, h, w) between horizontal and between vertical neighbours
    (the two means added); with ``image`` (B, C, H, W), each difference is weighted by
    exp(-edge_weight * mean over channels |image difference|) at the flow's resolution; (1,) NDArray."""
    dx = mx.nd.abs(flow[:, :, :, 1:] - flow[:, :, :, :-1])
    dy = mx.nd.abs(flow[:, :, 1:, :] - flow[:, :, :-1, :])
    if image is not None:
        image = _to_flow_grid(image, flow).detach()
        edges_x = mx.nd.mean(mx.nd.abs(image[:, :, :, 1:] - image[:, :, :, :-1]), axis=1, keepdims=True)
        edges_y = mx.nd.mean(mx.nd.abs(image[:, :, 1:, :] - image[:, :, :-1, :]), axis=1, keepdims=True)
        wx, wy = mx.nd.exp(-edge_weight * edges_x), mx.nd.exp(-edge_weight * edges_y)
        dx, dy = mx.nd.broadcast_mul(dx, wx), mx.nd.broadcast_mul(dy, wy)
    return dx.mean().reshape((1,)) + dy.mean().reshape((1,))


def flow_loss(pred, target, mask, first=None, second=None, photometric_weight=0.0, smoothness_weight=0.0,
              edge_weight=10.0):
    """epe_loss + photometric_weight * photometric_loss(first, second, pred) + smoothness_weight *
    smoothness_loss(pred, first); returns (total (1,) NDArray, {"epe", "photometric", "smoothness": float})
    (the unsupervised terms are left out, and reported as 0, when their weight is 0)."""
    total = epe_loss(pred, target, mask)
    parts = {"epe": float(total.asscalar()), "photometric": 0.0, "smoothness": 0.0}
    if photometric_weight:
        if first is None or second is None:
            raise ValueError("the photometric term needs both images")
        term = photometric_loss(first, second, pred)
        parts["photometric"] = float(term.asscalar())
        total = total + photometric_weight * term
    if smoothness_weight:
        term = smoothness_loss(pred, first, edge_weight)
        parts["smoothness"] = float(term.asscalar())
        total = total + smoothness_weight * term
    return total, parts
