"""Compiled detection operators for MXNet: MultiProposal, PSROIPooling, flow warp, FGFA aggregation,
depth_to_space and a channels-last concat on CPU.

The C++ sources in ``operator_cxx/`` are built by ``sh init.sh`` (or ``python
operator_cxx/build.py``) into ``lib/libdetops.so``, which :func:`load` plugs into the stock
mxnet 1.9.1 wheel with ``mx.library.load``. Loading registers six operators, available as
``mx.nd.<name>``, ``mx.sym.<name>`` and ``F.<name>`` (inputs positional, attributes as keywords):

==========================  ===============================================================
registered name             equals (MXNet built-in)
==========================  ===============================================================
``detops_multi_proposal``   ``mx.nd.contrib.MultiProposal`` (same attributes, any batch N)
``detops_psroi_pooling``    ``mx.nd.contrib.PSROIPooling`` (gradient to data)
``detops_flow_warp``        ``BilinearSampler(data, GridGenerator(flow, transform_type='warp'))``
``detops_flow_aggregate``   FGFA's warp + cosine weights + softmax + weighted sum, fused
                            (inference only; no MXNet equivalent, the composite graph is
                            its oracle)
``detops_depth_to_space``   ``mx.nd.depth_to_space`` (~25x faster on CPU)
``detops_channels_last``    ``transpose(concat(x_0, .., dim=1), axes=(0, 2, 3, 1))``
==========================  ===============================================================

Use the Python wrappers below rather than the raw names: they load the library on first use,
take ``F`` (``mx.nd`` or ``mx.sym``, inferred from the inputs when omitted) so they work inside
``HybridBlock.hybrid_forward`` before and after ``hybridize()``, and can switch to MXNet's
built-in operators (``builtin=True``). The built-ins are used automatically for NDArrays on a GPU
(the compiled kernels are CPU only); for hybridized models on a GPU call
``set_builtin_default(True)`` (or set ``VIDEODET_BUILTIN_OPS=1``) before building the graph.

Threads: the kernels use OpenMP with the project's thread count (``lib.runtime.threads()``, set
at load; change it with :func:`set_num_threads`), and one thread in forked worker processes.

Gradients are written, never accumulated: ``grad_req='add'`` is not supported by MXNet's
extension API for these operators. multi_proposal's gradients are zero, psroi_pooling's gradient
to rois is zero (as in MXNet).

An exported model (``HybridBlock.export``) that contains these operators needs the library in
the importing process: call :func:`load` before ``SymbolBlock.imports`` (or use
:func:`import_block`).
"""
import ctypes
import os
import runpy
import threading

import mxnet as mx
from mxnet import gluon

from . import runtime

LIBRARY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libdetops.so")
BUILD_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "operator_cxx", "build.py")
OP_NAMES = {
    "multi_proposal": "detops_multi_proposal",
    "psroi_pooling": "detops_psroi_pooling",
    "flow_warp": "detops_flow_warp",
    "flow_aggregate": "detops_flow_aggregate",
    "depth_to_space": "detops_depth_to_space",
    "channels_last": "detops_channels_last",
}

_lock = threading.Lock()
_loaded_path = None
_handle = None
_builtin_default = os.environ.get("VIDEODET_BUILTIN_OPS", "0").strip().lower() in ("1", "true", "yes")


class OperatorLibraryError(RuntimeError):
    """The operator library is missing, stale or cannot be loaded."""


def _expected_hash():
    """Hash of the current sources, or None when the sources are not available (installed copy)."""
    if not os.path.exists(BUILD_SCRIPT):
        return None
    return runpy.run_path(BUILD_SCRIPT)["source_hash"]()


def _check_library(path):
    if not os.path.exists(path):
        raise OperatorLibraryError(
            f"operator library {path} not found: build it with `sh init.sh` "
            "(or `python operator_cxx/build.py`)")
    try:
        handle = ctypes.CDLL(path)
        hash_func = handle.detops_source_hash
    except (OSError, AttributeError) as err:
        raise OperatorLibraryError(f"{path} is not a usable operator library ({err}): "
                                   "rebuild it with `sh init.sh`") from err
    hash_func.restype = ctypes.c_char_p
    built = hash_func().decode()
    expected = _expected_hash()
    if expected is not None and built != expected:
        raise OperatorLibraryError(
            f"operator library {path} is stale: operator_cxx/ (or mxnet) changed since it was "
            "built. Rebuild it with `sh init.sh` (or `python operator_cxx/build.py`)")
    return handle


def load(path=None):
    """Load the operator library into MXNet once per process; return its absolute path.

    Raises OperatorLibraryError when the library is missing or older than its sources.
    Loading again (or from a forked child of a process that loaded it) is a no-op.
    """
    global _loaded_path, _handle
    if _loaded_path is not None:
        return _loaded_path
    with _lock:
        if _loaded_path is not None:
            return _loaded_path
        path = os.path.abspath(path or LIBRARY_PATH)
        handle = _check_library(path)
        if not hasattr(mx.nd, OP_NAMES["flow_warp"]):   # not yet registered (e.g. by lib.tools.infer)
            mx.library.load(path, False)
        _handle = handle
        _loaded_path = path
        set_num_threads(runtime.threads())
    return _loaded_path


def is_loaded():
    """True once :func:`load` succeeded in this process."""
    return _loaded_path is not None


def set_num_threads(n):
    """OpenMP threads of the compiled kernels (n <= 0: OpenMP's default). Loads the library."""
    load()
    _handle.detops_set_num_threads(ctypes.c_int(int(n)))


def get_num_threads():
    """Threads the kernels use now (1 inside a forked child process)."""
    load()
    return int(_handle.detops_get_num_threads())


def set_builtin_default(flag):
    """Use MXNet's built-in operators instead of the compiled ones when ``builtin`` is not given.

    Needed for hybridized models on a GPU; NDArrays on a GPU pick the built-ins by themselves.
    """
    global _builtin_default
    _builtin_default = bool(flag)


def builtin_default():
    """Current default of ``builtin`` (see :func:`set_builtin_default`)."""
    return _builtin_default


def _namespace(F, x):
    if F is not None:
        return F
    return mx.sym if isinstance(x, mx.sym.Symbol) else mx.nd


def uses_builtin(x, builtin=None):
    """Whether an operator on ``x`` runs MXNet's built-in kernel: ``builtin`` when given, else the
    default (:func:`set_builtin_default`, ``VIDEODET_BUILTIN_OPS``), else True for NDArrays on a GPU."""
    return _use_builtin(None, x, builtin)


def _use_builtin(F, x, builtin):
    if builtin is not None:
        return bool(builtin)
    if _builtin_default:
        return True
    if isinstance(x, mx.nd.NDArray) and x.context.device_type != "cpu":
        return True
    return False


def _op(F, kind):
    load()
    return getattr(F, OP_NAMES[kind])


def _named(name):
    return {} if name is None else {"name": name}


def multi_proposal(cls_prob, bbox_pred, im_info, rpn_pre_nms_top_n=6000, rpn_post_nms_top_n=300,
                   threshold=0.7, rpn_min_size=16, scales=(4, 8, 16, 32), ratios=(0.5, 1, 2),
                   feature_stride=16, output_score=False, iou_loss=False, F=None, builtin=None,
                   name=None):
    """RPN proposals for a batch, exactly like ``mx.nd.contrib.MultiProposal``.

    cls_prob (N, 2A, H, W) softmax scores (background first A channels, object last A),
    bbox_pred (N, 4A, H, W) deltas (dx, dy, dw, dh per anchor), im_info (N, 3) rows of
    [height, width, scale] of each (unpadded) image; A = len(scales) * len(ratios).
    Anchors are ratio-major from a feature_stride x feature_stride base box, laid out (h, w, a);
    boxes use MXNet's +1 pixel convention. Proposals outside the unpadded area or smaller than
    rpn_min_size * scale score -1; the best rpn_pre_nms_top_n (<= 0: all; ties by anchor index)
    go through NMS with IoU > threshold suppressing, keeping rpn_post_nms_top_n (repeated
    cyclically when fewer survive).

    Returns rois (N * rpn_post_nms_top_n, 5) of [batch_index, x1, y1, x2, y2], and with
    output_score=True also scores (N * rpn_post_nms_top_n, 1). Not differentiable (zero grads).
    F: mx.nd or mx.sym (default: from cls_prob). builtin: True for MXNet's op, None for auto.
    """
    F = _namespace(F, cls_prob)
    attrs = dict(rpn_pre_nms_top_n=int(rpn_pre_nms_top_n),
                 rpn_post_nms_top_n=int(rpn_post_nms_top_n), threshold=float(threshold),
                 rpn_min_size=int(rpn_min_size), scales=tuple(float(s) for s in scales),
                 ratios=tuple(float(r) for r in ratios), feature_stride=int(feature_stride),
                 output_score=bool(output_score), iou_loss=bool(iou_loss))
    if _use_builtin(F, cls_prob, builtin):
        return F.contrib.MultiProposal(cls_prob=cls_prob, bbox_pred=bbox_pred, im_info=im_info,
                                       **attrs, **_named(name))
    return _op(F, "multi_proposal")(cls_prob, bbox_pred, im_info, **attrs, **_named(name))


def psroi_pooling(data, rois, spatial_scale, output_dim, pooled_size, group_size=0, F=None,
                  builtin=None, name=None):
    """Position-sensitive RoI average pooling, exactly like ``mx.nd.contrib.PSROIPooling``.

    data (N, output_dim * group_size^2, H, W); rois (R, 5) rows [batch_index, x1, y1, x2, y2] in
    image pixels. Roi coordinates are rounded, the end gets +1, both are scaled by spatial_scale
    (in (0, 1], e.g. 1/16); the roi is split into pooled_size x pooled_size bins, and output
    (r, c, i, j) is the mean of channel (c * group_size + gi) * group_size + gj over bin (i, j)
    (gi = floor(i * group_size / pooled_size)); empty bins give 0. group_size 0 means
    pooled_size. Returns (R, output_dim, pooled_size, pooled_size); gradient flows to data.

    Stricter than MXNet: data must have exactly output_dim * group_size^2 channels and every
    batch_index must name an image of data (else MXNetError).
    """
    F = _namespace(F, data)
    attrs = dict(spatial_scale=float(spatial_scale), output_dim=int(output_dim),
                 pooled_size=int(pooled_size), group_size=int(group_size))
    if _use_builtin(F, data, builtin):
        return F.contrib.PSROIPooling(data=data, rois=rois, **attrs, **_named(name))
    return _op(F, "psroi_pooling")(data, rois, **attrs, **_named(name))


def flow_warp(data, flow, F=None, builtin=None, name=None):
    """Warp data (N, C, H, W) by flow (N, 2, H, W): bilinear sample at (x + dx, y + dy).

    Equals ``BilinearSampler(data, GridGenerator(flow, transform_type='warp'))`` (zeros outside
    the map, same normalisation round trip); flow channel 0 is dx, 1 is dy, in pixels of data.
    Gradients flow to data and flow (at sample points exactly on integer pixels the flow gradient
    is the one-sided derivative MXNet also uses). Maps of width or height 1 sample at x + dx
    directly (MXNet's normalisation divides by zero there).
    """
    F = _namespace(F, data)
    if _use_builtin(F, data, builtin):
        grid = F.GridGenerator(flow, transform_type="warp")
        return F.BilinearSampler(data, grid, **_named(name))
    return _op(F, "flow_warp")(data, flow, **_named(name))


def channels_last(arrays, F=None, builtin=None, name=None):
    """Concat of ``arrays`` (each (N, C_i, H, W)) on channels, as (N, H, W, sum C_i): the cache layout of
    ``flow_aggregate(..., channels_last=True)``, in one pass (gradient: split back)."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("channels_last needs at least one array")
    F = _namespace(F, arrays[0])
    if _use_builtin(F, arrays[0], builtin):
        return F.transpose(F.concat(*arrays, dim=1), axes=(0, 2, 3, 1), **_named(name))
    return _op(F, "channels_last")(*arrays, num_args=len(arrays), **_named(name))


def flow_aggregate(key_cache, caches, flows, feat_channels, channels_last=False, scale=1.0, quality=False, F=None,
                   name=None):
    """FGFA's flow-guided aggregation of a window in one fused pass (inference only, CPU).

    key_cache (N, C+E, h, w) = concat(feature, embedding) of the key frame; ``caches``: list of T
    such arrays (the window, key frame included where it takes part), ``flows``: list of T flows
    (N, 2, h, w) from the key frame to each (zeros for the key frame itself);
    ``feat_channels`` = C. Returns (aggregated feature (N, C, h, w), weights (N, T, h, w)), equal to
    ``fgfa.aggregation.FlowAggregator``: each cache warped with flow_warp, per-pixel cosine
    similarity of its L2-normalised embedding with the key's, softmax over the T frames, weighted
    sum of the warped features; ``scale`` multiplies the cosines before the softmax (1: the reference);
    ``quality``: the caches' last channel is a logit added to the frame's (warped with it; the cosine runs
    over the channels between).
    It never builds the warped window (T x (C+E) channels), which the
    composite graph does several times over. No gradient (MXNetError on backward).

    ``channels_last=True``: key_cache and caches are (N, h, w, C+E) (:func:`channels_last`); each
    corner's channels are then one contiguous vector (the planar kernel gathers them plane by plane;
    ~2x faster at ImageNet VID size, ``python -m bench.ops``). Same results (the embedding dot
    products are summed in another order).
    """
    caches, flows = list(caches), list(flows)
    if len(caches) != len(flows) or not caches:
        raise ValueError(f"flow_aggregate needs as many flows as caches (>= 1), got {len(caches)} "
                         f"caches and {len(flows)} flows")
    F = _namespace(F, key_cache)
    return _op(F, "flow_aggregate")(key_cache, *caches, *flows, feat_channels=int(feat_channels),
                                    num_frames=len(caches), channels_last=bool(channels_last),
                                    scale=float(scale), quality=bool(quality), **_named(name))


def depth_to_space(data, block_size, F=None, builtin=None, name=None):
    """``mx.nd.depth_to_space``: (N, C, H, W) -> (N, C / b^2, H b, W b), output (n, c, y b + i, x b + j)
    = data (n, (i b + j) C / b^2 + c, y, x). Same values and gradient; MXNet's CPU kernel is ~20x
    slower than ours, ~25x on the FlowNet decoder's maps (operator_cxx/depth_to_space.cc)."""
    F = _namespace(F, data)
    if _use_builtin(F, data, builtin):
        return F.depth_to_space(data, block_size=int(block_size), **_named(name))
    return _op(F, "depth_to_space")(data, block_size=int(block_size), **_named(name))


def import_block(symbol_file, input_names, param_file=None, ctx=None):
    """``gluon.SymbolBlock.imports`` for exported models that contain these operators."""
    load()
    return gluon.SymbolBlock.imports(symbol_file, input_names, param_file, ctx)
