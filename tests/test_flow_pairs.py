"""lib.dataset.flow_pairs (pairs with known flow) against flow_warp, and FGFA's FlowNet pre-training."""
import logging
import os

import mxnet as mx
import numpy as np
import pytest

from lib import ops
from lib.dataset.flow_pairs import downsample_flow, make_flow_pair
from lib.dataset.synthetic import render_video


@pytest.fixture(scope="module")
def textures():
    frames, _ = render_video(5, 0, 3, 160, 128)
    return frames


def warp(image, flow):
    out = ops.flow_warp(mx.nd.array(image.transpose(2, 0, 1)[None].astype(np.float32)),
                        mx.nd.array(flow.transpose(2, 0, 1)[None].astype(np.float32)))
    return out.asnumpy()[0].transpose(1, 2, 0)


def test_translation_only_pair_warps_back_exactly(textures):
    first, second, flow = make_flow_pair(textures, (96, 128), np.random.RandomState(1), max_shift=10,
                                         num_patches=(0, 0))
    dx, dy = flow[0, 0]
    assert np.all(flow[..., 0] == dx) and np.all(flow[..., 1] == dy) and (dx, dy) != (0, 0)
    # where x + dx, y + dy stays inside the second frame, warping it back gives the first exactly
    yy, xx = np.mgrid[0:96, 0:128]
    inside = (xx + dx >= 0) & (xx + dx <= 127) & (yy + dy >= 0) & (yy + dy <= 95)
    np.testing.assert_allclose(warp(second, flow)[inside], first[inside].astype(np.float32), atol=1e-3)
    assert inside.mean() > 0.5


def test_patch_pixels_move_by_the_patch_flow(textures):
    rng = np.random.RandomState(3)
    first, second, flow = make_flow_pair(textures, (96, 128), rng, max_shift=10, num_patches=(1, 1))
    values, counts = np.unique(flow.reshape(-1, 2), axis=0, return_counts=True)
    assert len(values) == 2, "a background flow and one patch flow"
    patch_flow = values[np.argmin(counts)]
    patch = np.all(flow == patch_flow, axis=-1)
    yy, xx = np.mgrid[0:96, 0:128]
    dx, dy = patch_flow
    # the patch is the top layer in the second frame too: every patch pixel landing inside reappears
    lands = patch & (xx + dx >= 0) & (xx + dx <= 127) & (yy + dy >= 0) & (yy + dy <= 95)
    assert lands.sum() > 20
    np.testing.assert_allclose(warp(second, flow)[lands], first[lands].astype(np.float32), atol=1e-3)


def test_downsample_flow_averages_cells_in_grid_units():
    flow = np.zeros((32, 48, 2), np.float32)
    flow[:16, :16] = (16.0, -32.0)       # one 16x16 cell moving by (1, -2) cells
    flow[16:, 16:32, 0] = 8.0            # half a cell to the right
    coarse = downsample_flow(flow, 16)
    assert coarse.shape == (2, 3, 2)
    np.testing.assert_allclose(coarse[0, 0], [1.0, -2.0])
    np.testing.assert_allclose(coarse[1, 1], [0.5, 0.0])
    np.testing.assert_allclose(coarse[0, 1], [0.0, 0.0])
    with pytest.raises(ValueError, match="multiple of the stride"):
        downsample_flow(np.zeros((30, 48, 2), np.float32), 16)


def test_flownet_pretraining_learns_flow_and_is_reused(tmp_path):
    from fgfa.config import get_config
    from fgfa.flow_pretrain import PRETRAINED_FILE, pretrain_flownet
    from fgfa.train import build_model, load_train_set
    from lib.config import PROJECT_ROOT
    tiny = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml")
    spec = (f"{{FORMAT: synthetic, ROOT: {tmp_path / 'data'}, SEED: 3, NUM_VIDEOS: 2, NUM_FRAMES: 6, WIDTH: 160, "
            f"HEIGHT: 120, NUM_CLASSES: 2, SPLIT: train}}")
    cfg = get_config(tiny, [f"DATASET.TRAIN=[{spec}]", "TRAIN.FLOW_PRETRAIN.ITERS=300", "TRAIN.FLOW_PRETRAIN.BATCH=4",
                            "TRAIN.FLOW_PRETRAIN.SIZE=[128,96]", "TRAIN.FLOW_PRETRAIN.MAX_SHIFT=12"])
    dataset = load_train_set(cfg)
    mx.random.seed(0)
    model = build_model(cfg, 2)
    result = pretrain_flownet(model, cfg, dataset, str(tmp_path / "run"), progress=False,
                              logger=logging.getLogger("flow"))
    # the flow predictors start at zero: the untrained net predicts zero flow
    assert result["epe_start"] == pytest.approx(result["zero_flow_epe"], rel=1e-4)
    assert result["epe_end"] < 0.7 * result["zero_flow_epe"]
    saved = os.path.join(str(tmp_path / "run"), PRETRAINED_FILE)
    assert os.path.isfile(saved)
    fresh = build_model(cfg, 2)
    again = pretrain_flownet(fresh, cfg, dataset, str(tmp_path / "run"), progress=False)
    assert again["reused"]
    # other settings: the saved weights are not reused
    changed = get_config(tiny, [f"DATASET.TRAIN=[{spec}]", "TRAIN.FLOW_PRETRAIN.ITERS=5", "TRAIN.FLOW_PRETRAIN.BATCH=2",
                                "TRAIN.FLOW_PRETRAIN.SIZE=[128,96]", "TRAIN.FLOW_PRETRAIN.MAX_SHIFT=12"])
    retrained = pretrain_flownet(build_model(changed, 2), changed, dataset, str(tmp_path / "run"), progress=False)
    assert "reused" not in retrained and "epe_end" in retrained
    for (_, a), (_, b) in zip(sorted(model.flownet.collect_params().items()),
                              sorted(fresh.flownet.collect_params().items())):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy())


def test_zoomed_pair_flow_is_radial_and_warps_back(textures):
    import cv2
    smooth = [cv2.GaussianBlur(t, (0, 0), 3) for t in textures]   # bilinear resampling twice: smooth texture
    rng = np.random.RandomState(5)
    first, second, flow = make_flow_pair(smooth, (96, 128), rng, max_shift=4, num_patches=(0, 0), max_zoom=0.15)
    # a zoom about a focus point c plus a shift t: flow = (s - 1) (p - c) + t, so its divergence is
    # uniform (d flow_x / dx = d flow_y / dy = s - 1) and it has no curl
    gx, gy = np.gradient(flow[..., 0], axis=1), np.gradient(flow[..., 1], axis=0)
    np.testing.assert_allclose(gx, gx[0, 0], atol=1e-4)
    np.testing.assert_allclose(gy, gx[0, 0], atol=1e-4)
    np.testing.assert_allclose(np.gradient(flow[..., 0], axis=0), 0, atol=1e-4)
    assert abs(gx[0, 0]) > 0.005, "some zoom"
    yy, xx = np.mgrid[0:96, 0:128]
    inside = ((xx + flow[..., 0] >= 0) & (xx + flow[..., 0] <= 127) & (yy + flow[..., 1] >= 0)
              & (yy + flow[..., 1] <= 95))
    assert inside.mean() > 0.5
    back = np.abs(warp(second, flow)[inside] - first[inside])
    unwarped = np.abs(second.astype(np.float32)[inside] - first[inside])
    assert back.mean() < 1.0 and back.mean() < 0.2 * unwarped.mean(), (back.mean(), unwarped.mean())

