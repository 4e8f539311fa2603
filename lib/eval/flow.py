"""Flow quality: end-point error, and whether warping neighbour features with a flow aligns them.

FGFA's aggregation helps only if the flow moves a neighbour's features onto the key frame's: the
check that matters is not the flow itself but the features it warps. ``warp_alignment`` compares,
per pixel, the cosine similarity (over channels) of the key frame's features with the neighbour's
features warped by the flow, and with the neighbour's features as they are (no flow: what an
untrained FlowNet gives). A good flow raises the first above the second. The features are plain
arrays (N, C, h, w): any network's, at any stride; the flow (N, 2, h, w) is in pixels of that map,
in FGFA's convention (lib.flow), so warping is ``lib.ops.flow_warp(neighbour, flow)``.
"""
import mxnet as mx
import numpy as np

from lib import ops


def end_point_error(flow, reference, mask=None, axis=-1):
    """Mean Euclidean distance between two flow fields (the (dx, dy) pair on ``axis``) over the
    positions of ``mask`` (all positions when None); nan when the mask is empty."""
    flow, reference = np.asarray(flow, np.float64), np.asarray(reference, np.float64)
    if flow.shape != reference.shape or flow.shape[axis] != 2:
        raise ValueError(f"flows must have the same shape with 2 components on axis {axis}, "
                         f"got {flow.shape} and {reference.shape}")
    error = np.linalg.norm(flow - reference, axis=axis)
    if mask is None:
        return float(error.mean()) if error.size else float("nan")
    mask = np.broadcast_to(np.asarray(mask, bool), error.shape)
    return float(error[mask].mean()) if mask.any() else float("nan")


def cosine_map(a, b, eps=1e-12):
    """Per-position cosine similarity over the channel axis (1) of two (N, C, h, w) arrays ->
    (N, h, w); 0 where either vector is zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"features must be two (N, C, h, w) arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > eps, (a * b).sum(axis=1) / np.maximum(norms, eps), 0.0)


def warp(features, flow):
    """``features`` (N, C, h, w) warped by ``flow`` (N, 2, h, w) with lib.ops.flow_warp (zeros
    outside the map), as numpy float32."""
    data = features if isinstance(features, mx.nd.NDArray) else mx.nd.array(np.asarray(features, np.float32))
    flow = flow if isinstance(flow, mx.nd.NDArray) else mx.nd.array(np.asarray(flow, np.float32))
    return ops.flow_warp(data, flow).asnumpy()


def inside_map(flow):
    """(N, h, w) bool: positions whose flow samples inside the map (x + dx in [0, w-1], y + dy in
    [0, h-1]); outside, flow_warp reads zeros and the cosine means nothing."""
    flow = np.asarray(flow, np.float64)
    height, width = flow.shape[2:]
    ys, xs = np.mgrid[0:height, 0:width]
    x, y = xs + flow[:, 0], ys + flow[:, 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def warp_alignment(reference, neighbour, flow, mask=None):
    """How well ``flow`` aligns ``neighbour``'s features (N, C, h, w) with ``reference``'s.

    Returns {"cosine_warped", "cosine_unwarped", "gain" (warped - unwarped), "positions"}: mean
    per-position cosine over the positions of ``mask`` (N, h, w) (all when None) where the flow
    samples inside the map, both means over the same positions (nan when there are none)."""
    reference = reference.asnumpy() if isinstance(reference, mx.nd.NDArray) else np.asarray(reference)
    neighbour_np = neighbour.asnumpy() if isinstance(neighbour, mx.nd.NDArray) else np.asarray(neighbour)
    flow_np = flow.asnumpy() if isinstance(flow, mx.nd.NDArray) else np.asarray(flow, np.float32)
    if flow_np.shape != (reference.shape[0], 2) + reference.shape[2:]:
        raise ValueError(f"flow must be (N, 2, h, w) = {(reference.shape[0], 2) + reference.shape[2:]}, "
                         f"got {flow_np.shape}")
    keep = inside_map(flow_np)
    if mask is not None:
        keep &= np.broadcast_to(np.asarray(mask, bool), keep.shape)
    warped = cosine_map(reference, warp(neighbour_np, flow_np))[keep]
    unwarped = cosine_map(reference, neighbour_np)[keep]
    if not keep.any():
        return {"cosine_warped": float("nan"), "cosine_unwarped": float("nan"), "gain": float("nan"), "positions": 0}
    return {"cosine_warped": float(warped.mean()), "cosine_unwarped": float(unwarped.mean()),
            "gain": float(warped.mean() - unwarped.mean()), "positions": int(keep.sum())}
