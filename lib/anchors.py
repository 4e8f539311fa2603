"""Anchors and priors as corner boxes.

- ``rpn_base_anchors`` / ``shift_anchors``: Faster R-CNN / R-FCN anchors in pixels, identical in
  values and order to what ``mx.nd.contrib.MultiProposal`` generates internally (MXNet's +1
  convention: x2/y2 inclusive, width = x2 - x1 + 1; ratios outer loop, scales inner; positions
  laid out (h, w, a)).
- ``ssd_priors``: SSD / M2Det prior boxes, normalised to [0, 1], in the official order
  (layer, y, x, k) with k = [min, sqrt(min*max), then (ar, 1/ar) for each aspect ratio].
- ``multiscale_anchors``: TF Object Detection API ``create_ssd_anchors`` (LSTM-SSD), normalised,
  order (layer, y, x, k).
"""
import math

import numpy as np


def rpn_base_anchors(base_size=16, scales=(8, 16, 32), ratios=(0.5, 1, 2)):
    """The A = len(ratios) * len(scales) anchors at position (0, 0), float32 (A, 4).

    Same arithmetic as MultiProposal: base box [0, 0, base_size-1, base_size-1]; for each ratio
    (outer) and scale (inner): w = round(sqrt(floor(area / ratio))) * scale,
    h = round(w / scale * ratio) * scale (round = floor(x + 0.5)), centred on (base_size-1)/2.
    """
    if base_size <= 0 or not len(scales) or not len(ratios):
        raise ValueError("rpn_base_anchors needs base_size > 0 and non-empty scales and ratios, got %r, %r, %r"
                         % (base_size, scales, ratios))
    # MultiProposal computes in float32: mirror that so the anchors match bit for bit.
    f32 = np.float32
    width = f32(base_size)
    centre = f32(0.5) * (width - f32(1))
    area = width * width
    anchors = []
    for ratio in ratios:
        for scale in scales:
            size_ratio = np.floor(area / f32(ratio))
            new_w = np.floor(np.sqrt(size_ratio) + f32(0.5)) * f32(scale)
            new_h = np.floor(new_w / f32(scale) * f32(ratio) + f32(0.5)) * f32(scale)
            half_w = f32(0.5) * (new_w - f32(1))
            half_h = f32(0.5) * (new_h - f32(1))
            anchors.append([centre - half_w, centre - half_h, centre + half_w, centre + half_h])
    return np.asarray(anchors, dtype=np.float32)


def shift_anchors(base, feat_h, feat_w, stride):
    """Anchors over a feature map: (feat_h * feat_w * A, 4), ordered (h, w, a) like MultiProposal,
    i.e. row ``(h * feat_w + w) * A + a`` is ``base[a] + (w, h, w, h) * stride``."""
    base = np.asarray(base, dtype=np.float32)
    if base.ndim != 2 or base.shape[1] != 4:
        raise ValueError("shift_anchors base must be (A, 4), got %s" % (base.shape,))
    shift_x = np.arange(feat_w, dtype=np.float32) * np.float32(stride)
    shift_y = np.arange(feat_h, dtype=np.float32) * np.float32(stride)
    sx, sy = np.meshgrid(shift_x, shift_y)  # (H, W)
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(feat_h * feat_w, 1, 4)
    return (shifts + base[None, :, :]).reshape(-1, 4)


def _pair(value, name):
    if np.isscalar(value):
        return float(value), float(value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError("%s must be a number or an (h, w) pair, got %r" % (name, value))
    return float(value[0]), float(value[1])


def sizes_from_pattern(image_size, size_pattern):
    """M2Det's prior sizes: min_sizes = pattern[:-1] * image_size, max_sizes = pattern[1:] * image_size."""
    pattern = [float(p) * image_size for p in size_pattern]
    return pattern[:-1], pattern[1:]


def ssd_priors(image_size, feature_sizes, steps, min_sizes, max_sizes, aspect_ratios, clip=True):
    """SSD / M2Det priors as normalised corners (P, 4), float32, order (layer, y, x, k).

    image_size: int (square) or (h, w); feature_sizes[l]: int or (h, w); steps[l]: pixels per cell;
    min_sizes / max_sizes in pixels; aspect_ratios: per layer, a list like [2, 3] (each adds ar and
    1/ar), or one flat list used for every layer. Per cell: min size, sqrt(min*max), then for each
    ar: (min*sqrt(ar), min/sqrt(ar)) and (min/sqrt(ar), min*sqrt(ar)).
    ``clip=True`` clamps the centre-size form (cx, cy, w, h) to [0, 1] before conversion, exactly
    as the official SSD / M2Det PriorBox (so corners of border priors may lie outside [0, 1]).
    """
    num_layers = len(feature_sizes)
    if not (len(steps) == len(min_sizes) == len(max_sizes) == num_layers):
        raise ValueError("ssd_priors: feature_sizes, steps, min_sizes, max_sizes need one entry per layer, "
                         "got %d, %d, %d, %d" % (num_layers, len(steps), len(min_sizes), len(max_sizes)))
    if aspect_ratios and np.isscalar(aspect_ratios[0]):
        aspect_ratios = [aspect_ratios] * num_layers
    if len(aspect_ratios) != num_layers:
        raise ValueError("ssd_priors: aspect_ratios needs one list per layer (%d), got %d"
                         % (num_layers, len(aspect_ratios)))
    im_h, im_w = _pair(image_size, "image_size")
    layers = []
    for layer in range(num_layers):
        fh, fw = (int(v) for v in _pair(feature_sizes[layer], "feature_sizes[%d]" % layer))
        step_h, step_w = _pair(steps[layer], "steps[%d]" % layer)
        s_min, s_max = float(min_sizes[layer]), float(max_sizes[layer])
        s_prime = math.sqrt(s_min * s_max)
        shapes = [(s_min, s_min), (s_prime, s_prime)]
        for ar in aspect_ratios[layer]:
            r = math.sqrt(float(ar))
            shapes += [(s_min * r, s_min / r), (s_min / r, s_min * r)]
        shapes = np.asarray(shapes)  # (K, 2) pixel (w, h)
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step_h / im_h, (np.arange(fw) + 0.5) * step_w / im_w,
                             indexing="ij")
        k = len(shapes)
        centre_form = np.empty((fh, fw, k, 4))
        centre_form[..., 0] = cx[:, :, None]
        centre_form[..., 1] = cy[:, :, None]
        centre_form[..., 2] = shapes[None, None, :, 0] / im_w
        centre_form[..., 3] = shapes[None, None, :, 1] / im_h
        layers.append(centre_form.reshape(-1, 4))
    priors = np.concatenate(layers) if layers else np.zeros((0, 4))
    if clip:
        priors = np.clip(priors, 0.0, 1.0)
    corners = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], axis=1)
    return corners.astype(np.float32)


def multiscale_anchors(feature_sizes, min_scale=0.2, max_scale=0.95, aspect_ratios=(1.0, 2.0, 0.5, 3.0, 1.0 / 3),
                       reduce_lowest=True, interpolated_scale_aspect_ratio=1.0, image_size=None):
    """TF Object Detection API SSD anchors (``create_ssd_anchors`` + ``MultipleGridAnchorGenerator``).

    Layer l of L has scale s_l = min_scale + (max_scale - min_scale) * l / (L - 1) (s_L = 1). The
    lowest layer, if ``reduce_lowest``, has 3 anchors (0.1 @ 1, s_0 @ 2, s_0 @ 0.5); every other layer
    has one anchor per aspect ratio at s_l plus sqrt(s_l * s_{l+1}) @ interpolated_scale_aspect_ratio.
    An anchor of scale s and ratio a has height s / sqrt(a), width s * sqrt(a) (normalised units,
    scaled by min(h, w) / h and min(h, w) / w when ``image_size`` (h, w) is not square); centres
    are at (i + 0.5) / feature size. Returns float32 normalised corners (P, 4) ordered
    (layer, y, x, k).
    """
    num_layers = len(feature_sizes)
    if num_layers == 0:
        raise ValueError("multiscale_anchors needs at least one feature size")
    if num_layers == 1:
        scales = [float(min_scale), 1.0]
    else:
        scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)] + [1.0]
    base_h, base_w = 1.0, 1.0
    if image_size is not None:
        im_h, im_w = _pair(image_size, "image_size")
        base_h, base_w = min(im_h, im_w) / im_h, min(im_h, im_w) / im_w
    layers = []
    for layer in range(num_layers):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0 and reduce_lowest:
            specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            specs = [(scale, float(ar)) for ar in aspect_ratios]
            if interpolated_scale_aspect_ratio > 0:
                specs.append((math.sqrt(scale * scale_next), float(interpolated_scale_aspect_ratio)))
        specs = np.asarray(specs)
        heights = specs[:, 0] / np.sqrt(specs[:, 1]) * base_h
        widths = specs[:, 0] * np.sqrt(specs[:, 1]) * base_w
        fh, fw = (int(v) for v in _pair(feature_sizes[layer], "feature_sizes[%d]" % layer))
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw, indexing="ij")
        cx = cx[:, :, None]
        cy = cy[:, :, None]
        layer_anchors = np.stack(np.broadcast_arrays(cx - widths / 2, cy - heights / 2,
                                                     cx + widths / 2, cy + heights / 2), axis=-1)
        layers.append(layer_anchors.reshape(-1, 4))
    return np.concatenate(layers).astype(np.float32)
