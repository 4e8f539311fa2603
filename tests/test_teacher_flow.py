"""lib.flow (OpenCV DIS in FGFA's convention) and lib.dataset.teacher_flow (pairs, npz cache, batches).

Oracles: pairs with exactly known flow (np.roll translations, lib.dataset.flow_pairs' zoomed pairs),
lib.ops.flow_warp for the convention, numpy cell means, the snippets' frame order."""
import os

import mxnet as mx
import numpy as np
import pytest

from lib import ops
from lib.config import PROJECT_ROOT
from lib.dataset import load_dataset, read_image
from lib.dataset.flow_pairs import make_flow_pair
from lib.dataset.synthetic import generate_video_dataset
from lib.dataset.teacher_flow import FLOAT16_TOLERANCE, TeacherFlowCache, TeacherFlowPairs, teacher_pairs
from lib.flow import DIS_PRESETS, DISFlow, dis_flow, flow_to_grid, mask_to_grid

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")


@pytest.fixture(scope="module")
def texture():
    """A real textured crop of a speedtrap frame (road, trees, signs; little sky)."""
    return np.ascontiguousarray(read_image(os.path.join(SPEEDTRAP, "images", "frame150.jpg"))[240:496, 240:560])


def warp(image, flow):
    out = ops.flow_warp(mx.nd.array(image.transpose(2, 0, 1)[None].astype(np.float32)),
                        mx.nd.array(flow.transpose(2, 0, 1)[None].astype(np.float32)))
    return out.asnumpy()[0].transpose(1, 2, 0)


# ---------------------------------------------------------------- DIS flow

@pytest.mark.parametrize("preset", sorted(DIS_PRESETS))
@pytest.mark.parametrize("shift", [(5, -3), (-11, 7)])
def test_dis_recovers_a_known_translation(texture, preset, shift):
    dx, dy = shift
    second = np.roll(texture, (dy, dx), axis=(0, 1))      # content at p is at p + (dx, dy) in the second frame
    flow, valid = DISFlow(preset).with_mask(texture, second, tolerance=1.0)
    margin = np.zeros(valid.shape, bool)                   # np.roll wraps: the border strips have no true flow
    margin[16:-16, 16:-16] = True
    keep = valid & margin
    assert keep[margin].mean() > 0.7          # the forward-backward check keeps most of the interior
    epe = np.linalg.norm(flow - np.array([dx, dy], np.float32), axis=2)
    assert epe[keep].mean() < 0.5, (preset, epe[keep].mean())


@pytest.mark.parametrize("preset,scale,bound", [("medium", 1.0, 0.3), ("fast", 1.0, 0.6), ("medium", 0.5, 0.5)])
def test_dis_follows_a_zoom_and_warps_the_second_frame_onto_the_first(texture, preset, scale, bound):
    # a camera moving forward: radial flow, exact by construction
    first, second, truth = make_flow_pair([texture], (192, 256), np.random.RandomState(4), max_shift=6,
                                          num_patches=(0, 0), max_zoom=0.05)
    flow, valid = DISFlow(preset, scale).with_mask(first, second, tolerance=1.0)
    assert flow.shape == truth.shape and flow.dtype == np.float32 and valid.mean() > 0.6
    assert np.linalg.norm(flow - truth, axis=2)[valid].mean() < bound     # measured: 0.19, 0.47, 0.40
    # FGFA's convention: flow_warp(second, flow) reproduces the first frame; the zero flow does not
    aligned = np.abs(warp(second, flow) - first)[valid].mean()
    unaligned = np.abs(second.astype(np.float32) - first)[valid].mean()
    assert aligned < 0.35 * unaligned, (aligned, unaligned)


def test_dis_convention_on_real_consecutive_frames():
    first, second = (read_image(os.path.join(SPEEDTRAP, "images", f"frame{n}.jpg")) for n in (160, 162))
    flow, valid = DISFlow("fast").with_mask(first, second)
    aligned = np.abs(warp(second, flow) - first)[valid].mean()
    unaligned = np.abs(second.astype(np.float32) - first)[valid].mean()
    reversed_sign = np.abs(warp(second, -flow) - first)[valid].mean()
    # measured: 2.4 grey levels aligned, 4.4 unaligned, 4.9 with the flow's sign reversed
    assert aligned < 0.7 * unaligned and aligned < 0.7 * reversed_sign, (aligned, unaligned, reversed_sign)


def test_flow_to_grid_cell_means_partial_cells_and_shape():
    flow = np.zeros((40, 50, 2), np.float32)
    flow[:16, :16] = (16.0, -32.0)
    flow[32:, 48:] = (8.0, 4.0)                   # the partial corner cell (8 x 2 pixels)
    grid = flow_to_grid(flow, 16)
    assert grid.shape == (3, 4, 2)
    np.testing.assert_allclose(grid[0, 0], [1.0, -2.0])
    np.testing.assert_allclose(grid[2, 3], [0.5, 0.25])
    np.testing.assert_allclose(grid[1, 1], [0.0, 0.0])
    padded = flow_to_grid(flow, 16, shape=(4, 5))  # a padded network input: edge cells repeated
    np.testing.assert_allclose(padded[:3, :4], grid)
    np.testing.assert_allclose(padded[3, 4], grid[2, 3])
    mask = np.zeros((40, 50), bool)
    mask[:8, :16] = True
    np.testing.assert_allclose(mask_to_grid(mask, 16)[0, :2], [0.5, 0.0])


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_dis_grid_is_the_cell_mean_of_the_flow(texture, scale):
    first, second, _ = make_flow_pair([texture], (192, 256), np.random.RandomState(2), max_shift=8,
                                      num_patches=(0, 0), max_zoom=0.05)
    dis = DISFlow("fast", scale)
    grid = dis.grid(first, second, 16, shape=(12, 16))
    reference = flow_to_grid(dis(first, second), 16)
    # at scale 1 the same computation; at scale 0.5 cells averaged on the small flow vs the upsampled one
    np.testing.assert_allclose(grid, reference, atol=1e-5 if scale == 1.0 else 0.03)
    np.testing.assert_allclose(dis_flow(first, second, "fast", scale), dis(first, second), atol=1e-6)
    # a frame prepared once (a streaming memory's frame) gives the same grid
    prepared = dis.grid_prepared(dis.prepare(first), dis.prepare(second), first.shape[:2], 16, shape=(12, 16))
    np.testing.assert_array_equal(prepared, grid)
    assert dis.prepare(first).shape == (round(192 * scale), round(256 * scale))


def test_dis_rejects_bad_settings(texture):
    with pytest.raises(ValueError, match="preset"):
        DISFlow("slow")
    with pytest.raises(ValueError, match="scale"):
        DISFlow("fast", 1.5)
    with pytest.raises(ValueError, match="differ in size"):
        dis_flow(texture, texture[:100])


# ---------------------------------------------------------------- pairs, cache, batches

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_video_dataset(str(root), seed=2, num_videos=2, num_frames=7, width=128, height=96, load=False)
    return load_dataset({"FORMAT": "synthetic", "ROOT": str(root)})


def test_pairs_respect_offsets_snippets_and_seed(videos):
    snippets = videos.snippets()
    position = {r.image: (video, k) for video, recs in snippets.items() for k, r in enumerate(recs)}
    pairs = teacher_pairs(videos, 2, 4)
    # each direction of each (i, i + o), o in 2..4, in each 7-frame video
    assert len(pairs) == 2 * 2 * sum(7 - o for o in range(2, 5))
    for first, second, offset in pairs:
        (video_a, a), (video_b, b) = position[first.image], position[second.image]
        assert video_a == video_b and b - a == offset and 2 <= abs(offset) <= 4
    assert {o for *_, o in pairs} == {-4, -3, -2, 2, 3, 4}
    chosen = teacher_pairs(videos, 2, 4, count=9, seed=1)
    assert len(chosen) == 9 and all(p in pairs for p in chosen)
    assert chosen == teacher_pairs(videos, 2, 4, count=9, seed=1)
    assert chosen != teacher_pairs(videos, 2, 4, count=9, seed=2)
    with pytest.raises(ValueError, match="min_offset"):
        teacher_pairs(videos, 0, 2)
    with pytest.raises(Exception, match="no snippet"):
        teacher_pairs(videos, 7, 9)


def test_cache_round_trip_and_invalidation(tmp_path, texture):
    first, second, _ = make_flow_pair([texture], (96, 128), np.random.RandomState(3), max_shift=6, num_patches=(0, 0))
    cache = TeacherFlowCache(str(tmp_path / "cache"), preset="fast", factor=8)
    flow, valid = cache.get(first, second)
    assert (cache.hits, cache.misses) == (0, 1) and flow.shape == (12, 16, 2) and valid.shape == (12, 16)
    exact, exact_valid = cache.compute(first, second)
    assert np.abs(flow - exact).max() <= FLOAT16_TOLERANCE and np.abs(valid - exact_valid).max() < 1e-3
    files = [os.path.join(d, n) for d, _, names in os.walk(tmp_path / "cache") for n in names]
    assert len(files) == 1 and files[0].endswith(".npz")
    with np.load(files[0], allow_pickle=False) as data:          # npz without pickle
        assert data["flow"].dtype == np.float16 and str(data["key"]) == cache.key(first, second)
    again, again_valid = cache.get(first, second)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(again, flow)
    np.testing.assert_array_equal(again_valid, valid)
    # one changed pixel, another preset, scale or grid: other entries
    changed = first.copy()
    changed[50, 60] ^= 1
    keys = {cache.key(first, second), cache.key(changed, second), cache.key(second, first),
            TeacherFlowCache(cache.root, preset="medium", factor=8).key(first, second),
            TeacherFlowCache(cache.root, preset="fast", scale=0.5, factor=8).key(first, second),
            TeacherFlowCache(cache.root, preset="fast", factor=16).key(first, second)}
    assert len(keys) == 6
    cache.get(changed, second)
    assert cache.misses == 2
    # a damaged file is computed again and replaced
    with open(files[0], "wb") as f:
        f.write(b"not a zip")
    np.testing.assert_array_equal(cache.get(first, second)[0], flow)
    assert cache.misses == 3
    assert not [n for _, _, names in os.walk(tmp_path / "cache") for n in names if n.endswith(".tmp")]


def test_cache_keeps_float32_when_float16_would_round_by_more_than_the_tolerance(tmp_path):
    cache = TeacherFlowCache(str(tmp_path), factor=16)
    small = np.full((2, 3, 2), 3.14159, np.float32)        # float16 spacing at 3: 0.002
    large = np.full((2, 3, 2), 40.0137, np.float32)        # float16 spacing at 40: 0.03
    assert cache.store("a" * 40, small, np.ones((2, 3), np.float32)) == np.float16
    assert cache.store("b" * 40, large, np.ones((2, 3), np.float32)) == np.float32
    np.testing.assert_allclose(cache.load("a" * 40)[0], small, atol=FLOAT16_TOLERANCE)
    np.testing.assert_array_equal(cache.load("b" * 40)[0], large)
    assert cache.load("c" * 40) is None


def test_teacher_pairs_batches_are_grid_crops_with_flips(tmp_path, videos):
    cache = TeacherFlowCache(str(tmp_path / "cache"), preset="fast", factor=16)
    data = TeacherFlowPairs(videos, cache, min_offset=1, max_offset=2, count=1, seed=0)
    assert len(data) == 1 and data.precompute(progress=False) == 1 and data.precompute(progress=False) == 0
    first, second, flow, mask = data[0]
    assert first.shape == (96, 128, 3) and flow.shape == (6, 8, 2) and set(np.unique(mask)) <= {0.0, 1.0}
    batches = data.batches(4, crop=(48, 64), flip=True, seed=3)
    seen_flip = seen_plain = False
    for _ in range(4):
        a, b, flows, masks = next(batches)
        assert a.shape == (4, 48, 64, 3) and a.dtype == np.uint8
        assert flows.shape == (4, 2, 3, 4) and masks.shape == (4, 3, 4)
        for k in range(4):
            crop_flow = flows[k].transpose(1, 2, 0)
            for mirrored in (False, True):
                src_a = first[:, ::-1] if mirrored else first
                src_flow = flow[:, ::-1] * np.array([-1, 1], np.float32) if mirrored else flow
                src_mask = mask[:, ::-1] if mirrored else mask
                hits = [(r, c) for r in range(4) for c in range(5)
                        if np.array_equal(src_a[16 * r:16 * r + 48, 16 * c:16 * c + 64], a[k])]
                if hits:
                    r, c = hits[0]
                    np.testing.assert_array_equal(crop_flow, src_flow[r:r + 3, c:c + 4])
                    ys, xs = np.mgrid[0:3, 0:4] + 0.5
                    inside = ((xs + crop_flow[..., 0] >= 0) & (xs + crop_flow[..., 0] <= 4) &
                              (ys + crop_flow[..., 1] >= 0) & (ys + crop_flow[..., 1] <= 3))
                    np.testing.assert_array_equal(masks[k], src_mask[r:r + 3, c:c + 4] * inside)
                    seen_flip |= mirrored
                    seen_plain |= not mirrored
                    break
            else:
                raise AssertionError("a batch frame is no grid crop of the pair")
    assert seen_flip and seen_plain
    with pytest.raises(ValueError, match="multiples of 16"):
        next(data.batches(2, crop=(40, 64)))
