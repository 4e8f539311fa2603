"""Image pairs with known optical flow, made from any images (in the spirit of Flying Chairs).

No pretrained FlowNet can be downloaded here, and a flow network trained only through a detector's
loss does not learn motion. These pairs give it direct supervision: a background texture translated
as a whole, with a few patches cut from other images pasted on top, each moving by its own
translation. The flow of every pixel of the first frame is known exactly.

With ``max_zoom`` the background is also scaled about a random focus point, the radial flow field a
camera moving forward or backward sees (dashcam footage): a FlowNet pre-trained on translations alone
predicts one global translation there, further from the true motion than no flow at all
(``python -m fgfa.flow_check``).

For real footage there is no ground-truth flow; ``farneback_flow`` (OpenCV's classical estimate) with
``consistent_mask`` (forward and backward flows agree) gives a proxy target on consecutive frames,
which both the FlowNet check and its pre-training on the user's own videos use.

Flow convention (FGFA's): ``flow[y, x] = (dx, dy)`` means the content at (x, y) in the first frame is
at (x + dx, y + dy) in the second, so ``flow_warp(second, flow)`` reproduces the first frame wherever
that content is visible in both.
"""
import cv2
import numpy as np


def _random_crop(image, height, width, rng):
    """A height x width crop of ``image`` (resized up first when it is too small)."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w, 1.0)
    if scale > 1.0:
        image = cv2.resize(image, (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
        h, w = image.shape[:2]
    y0 = int(rng.randint(0, h - height + 1))
    x0 = int(rng.randint(0, w - width + 1))
    return image[y0:y0 + height, x0:x0 + width]


def _patch_mask(height, width, rng):
    """An ellipse or a rectangle filling the patch box."""
    mask = np.zeros((height, width), np.uint8)
    if rng.rand() < 0.5:
        cv2.ellipse(mask, (width // 2, height // 2), (max(width // 2 - 1, 1), max(height // 2 - 1, 1)), 0, 0, 360,
                    1, -1)
    else:
        mask[:] = 1
    return mask.astype(bool)


def make_flow_pair(images, size, rng, max_shift=24.0, num_patches=(1, 4), patch_scale=(0.15, 0.45),
                   max_zoom=0.0):
    """One (first (H,W,3) uint8, second (H,W,3) uint8, flow (H,W,2) float32) pair.

    images: RGB uint8 images to cut the background and the patches from; size: (height, width);
    max_shift: largest translation (pixels) of the background and of each patch; num_patches:
    (min, max) patches; patch_scale: patch side as a fraction of the frame's short side; max_zoom:
    largest relative scale change of the background (0.1: between 1/1.1 and 1.1, log-uniform), about a
    focus point anywhere in the frame (0: translation only, integer and exact).
    """
    height, width = size
    if not images:
        raise ValueError("make_flow_pair needs at least one source image")
    # the second frame samples the canvas up to max_shift + max_zoom * (frame side + shift) past the first
    margin = int(np.ceil(max_shift + max_zoom * (max(height, width) + max_shift))) + 1
    canvas = _random_crop(images[rng.randint(len(images))], height + 2 * margin, width + 2 * margin, rng)
    bg_dx, bg_dy = rng.randint(-int(max_shift), int(max_shift) + 1, size=2)
    first = canvas[margin:margin + height, margin:margin + width].copy()
    flow = np.empty((height, width, 2), np.float32)
    if max_zoom > 0:
        second, flow[...] = _zoomed_background(canvas, margin, (height, width), (-bg_dx, -bg_dy), max_zoom, rng)
    else:
        second = canvas[margin + bg_dy:margin + bg_dy + height, margin + bg_dx:margin + bg_dx + width].copy()
        # background content at p in the first frame is at p - (bg_dx, bg_dy) in the second
        flow[..., 0], flow[..., 1] = -bg_dx, -bg_dy
    short = min(height, width)
    for _ in range(int(rng.randint(num_patches[0], num_patches[1] + 1))):
        ph = max(4, int(short * rng.uniform(*patch_scale)))
        pw = max(4, int(ph * rng.uniform(0.6, 1.6)))
        pw = min(pw, width - 1)
        patch = _random_crop(images[rng.randint(len(images))], ph, pw, rng)
        mask = _patch_mask(ph, pw, rng)
        dx, dy = rng.randint(-int(max_shift), int(max_shift) + 1, size=2)
        x1, y1 = int(rng.randint(0, width - pw + 1)), int(rng.randint(0, height - ph + 1))
        for frame, (ox, oy), with_flow in ((first, (x1, y1), True), (second, (x1 + dx, y1 + dy), False)):
            # paste the part of the patch that lands inside the frame
            sx0, sy0 = max(0, -ox), max(0, -oy)
            sx1, sy1 = min(pw, width - ox), min(ph, height - oy)
            if sx1 <= sx0 or sy1 <= sy0:
                continue
            region = (slice(oy + sy0, oy + sy1), slice(ox + sx0, ox + sx1))
            m = mask[sy0:sy1, sx0:sx1]
            frame[region][m] = patch[sy0:sy1, sx0:sx1][m]
            if with_flow:
                flow[region][m] = (dx, dy)
    return first, second, flow


def _zoomed_background(canvas, margin, size, shift, max_zoom, rng):
    """The second frame and the flow when the first frame's content p moves to c + s (p - c) + shift.

    The first frame is ``canvas[margin:margin + H, margin:margin + W]``; the second resamples the
    canvas (bilinear) through the inverse map q -> c + (q - shift - c) / s."""
    height, width = size
    scale = float(np.exp(rng.uniform(-np.log1p(max_zoom), np.log1p(max_zoom))))
    cx, cy = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
    tx, ty = shift
    inverse = np.array([[1 / scale, 0, margin + cx - (tx + cx) / scale],
                        [0, 1 / scale, margin + cy - (ty + cy) / scale]], np.float64)
    second = cv2.warpAffine(canvas, inverse, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REFLECT)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    flow = np.stack([(scale - 1) * (xx - cx) + tx, (scale - 1) * (yy - cy) + ty], axis=-1)
    return second, flow


# Farneback settings for dashcam-size motion: a 5-level pyramid follows shifts of tens of pixels
FARNEBACK = dict(pyr_scale=0.5, levels=5, winsize=21, iterations=3, poly_n=7, poly_sigma=1.5, flags=0)


def farneback_flow(first, second):
    """(H,W,2) pixel flow, FGFA's convention: the content at (x, y) of ``first`` is at
    (x + dx, y + dy) in ``second`` (cv2's prev -> next)."""
    gray = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (first, second)]
    return cv2.calcOpticalFlowFarneback(gray[0], gray[1], None, **FARNEBACK)


def consistent_mask(forward, backward, tolerance):
    """Pixels whose forward flow, followed by the backward flow at its end point, returns within
    ``tolerance`` pixels (and stays inside the frame)."""
    height, width = forward.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    end_x, end_y = xs + forward[..., 0], ys + forward[..., 1]
    back = cv2.remap(backward, end_x, end_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    error = np.linalg.norm(forward + back, axis=2)
    inside = (end_x >= 0) & (end_x <= width - 1) & (end_y >= 0) & (end_y <= height - 1)
    return inside & (error < tolerance)


def downsample_flow(flow, stride):
    """(H,W,2) pixel flow -> (H/stride, W/stride, 2) flow in units of the coarse grid (cell mean)."""
    height, width = flow.shape[:2]
    if height % stride or width % stride:
        raise ValueError(f"flow of size {width}x{height} is not a multiple of the stride {stride}")
    cells = flow.reshape(height // stride, stride, width // stride, stride, 2).mean(axis=(1, 3))
    return (cells / stride).astype(np.float32)
