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



def _translating_video(tmp_path, step=(4, -2), frames=6, height=120, width=160):
    """A texture moving by ``step`` pixels per frame, as a one-snippet dataset of PNG frames."""
    import cv2
    from lib.dataset.record import DetectionDataset, Record
    rng = np.random.RandomState(0)
    margin = 40
    big = np.zeros((height + 2 * margin, width + 2 * margin), np.float32)
    for size in (4, 16, 48):
        noise = rng.rand(big.shape[0] // size + 2, big.shape[1] // size + 2).astype(np.float32)
        big += cv2.resize(noise, (big.shape[1] + 2 * size, big.shape[0] + 2 * size))[size:size + big.shape[0],
                                                                                    size:size + big.shape[1]]
    big = np.stack([(255 * (big - big.min()) / np.ptp(big)).astype(np.uint8)] * 3, axis=2)
    records = []
    for t in range(frames):
        # content at (x, y) of frame t is at (x + step) in frame t + 1
        y0, x0 = margin - t * step[1], margin - t * step[0]
        path = str(tmp_path / f"frame{t:03d}.png")
        cv2.imwrite(path, big[y0:y0 + height, x0:x0 + width])
        records.append(Record(image=path, width=width, height=height, video="clip", frame=t))
    return DetectionDataset(records, ["thing"], name="translating")


def test_video_pairs_take_farneback_flow_of_snippet_frames(tmp_path):
    from fgfa.config import get_config
    from fgfa.flow_pretrain import video_flow_pairs, video_pair_batch
    from lib.config import PROJECT_ROOT
    from lib.dataset.flow_pairs import farneback_flow
    tiny = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml")
    cfg = get_config(tiny, ["TRAIN.MIN_OFFSET=1", "TRAIN.MAX_OFFSET=2", "INPUT.SHORT_SIDE=120", "INPUT.MAX_SIZE=160",
                            "INPUT.TRAIN_SCALES=[[120,160]]",
                            "IMAGE.FLIP=true", "TRAIN.FLOW_PRETRAIN.SOURCE=video", "TRAIN.FLOW_PRETRAIN.IMAGES=8",
                            "TRAIN.FLOW_PRETRAIN.BATCH=8", "TRAIN.FLOW_PRETRAIN.SIZE=[128,96]"])
    dataset = _translating_video(tmp_path)
    pairs = video_flow_pairs(dataset, cfg, np.random.RandomState(0))
    assert len(pairs) == 8
    for first, second, flow, valid in pairs:
        # one or two frames apart, in either order: +-(4, -2) or +-(8, -4) pixels
        dx, dy = np.median(flow[valid], axis=0)
        assert abs(abs(dx) - 2 * abs(dy)) < 0.5 and round(abs(dy)) in (2, 4) and np.sign(dx) == -np.sign(dy)
        assert valid.mean() > 0.5
    first, second, target, mask = video_pair_batch(pairs, cfg, np.random.RandomState(1))
    assert first.shape == (8, 3, 96, 128) and target.shape == (8, 2, 6, 8) and mask.shape == (8, 6, 8)
    mean, std = np.array(cfg.INPUT.MEAN)[:, None, None], np.array(cfg.INPUT.STD)[:, None, None]
    flipped = 0
    for a, b, t, m in zip(first, second, target, mask):
        # the oracle: Farneback on the crops the batch hands out (flips and crops must keep the flow true)
        images = [np.clip(x * std + mean, 0, 255).astype(np.uint8).transpose(1, 2, 0) for x in (a, b)]
        measured = np.median(farneback_flow(*images)[16:-16, 16:-16].reshape(-1, 2), axis=0) / 16
        np.testing.assert_allclose(np.median(t[:, m > 0], axis=1), measured, atol=0.05)
        # (4, -2) per frame: either order of the frames keeps dx * dy < 0, a horizontal flip makes it > 0
        flipped += measured[0] * measured[1] > 0
    assert 0 < flipped < 8


@pytest.mark.parametrize("source", ["video", "dis"])
def test_flownet_pretraining_learns_the_footage_motion(tmp_path, monkeypatch, source):
    """Both teachers (Farneback on the training video, OpenCV's DIS cached on disk) teach the FlowNet the
    footage's motion: the held-out EPE starts at the zero-flow EPE and ends below half of it."""
    import logging
    from fgfa.config import get_config
    from fgfa.flow_pretrain import pretrain_flownet
    from fgfa.train import build_model
    from lib.config import PROJECT_ROOT
    monkeypatch.setenv("VIDEODET_TEACHER_CACHE", str(tmp_path / "teacher"))
    tiny = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs", "fgfa_rfcn_tiny.yaml")
    cfg = get_config(tiny, ["TRAIN.MIN_OFFSET=1", "TRAIN.MAX_OFFSET=2", "INPUT.SHORT_SIDE=120", "INPUT.MAX_SIZE=160",
                            "INPUT.TRAIN_SCALES=[[120,160]]", f"TRAIN.FLOW_PRETRAIN.SOURCE={source}",
                            "TRAIN.FLOW_PRETRAIN.DIS_PRESET=fast", "TRAIN.FLOW_PRETRAIN.IMAGES=9",
                            "TRAIN.FLOW_PRETRAIN.ITERS=200", "TRAIN.FLOW_PRETRAIN.BATCH=4",
                            "TRAIN.FLOW_PRETRAIN.SIZE=[128,96]"])
    mx.random.seed(0)
    result = pretrain_flownet(build_model(cfg, 2), cfg, _translating_video(tmp_path), str(tmp_path / "run"),
                              progress=False, logger=logging.getLogger("flow"))
    assert result["epe_start"] == pytest.approx(result["zero_flow_epe"], rel=1e-4)
    assert result["epe_end"] < 0.5 * result["zero_flow_epe"], result
    if source == "dis":
        assert os.listdir(str(tmp_path / "teacher"))      # the teacher flows were cached on disk
