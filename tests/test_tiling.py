"""lib.tiling: tiles cover the frame, and tiled detection finds each object exactly once."""
import numpy as np
import pytest

from lib.tiling import detect_tiled, tile_grid, tile_origins


@pytest.mark.parametrize("length,tile,overlap", [(1280, 512, 64), (720, 512, 64), (300, 512, 64), (1000, 200, 50)])
def test_tiles_cover_with_overlap(length, tile, overlap):
    starts = tile_origins(length, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, length) == length
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap  # consecutive tiles overlap at least `overlap`


def test_tile_grid_bad_sizes():
    with pytest.raises(ValueError, match="larger than the overlap"):
        tile_grid(100, 100, 32, 32)


def make_oracle(objects):
    """A perfect detector: reports the objects lying entirely inside the crop it is given."""
    def detect(crop, origin):
        x0, y0 = origin
        h, w = crop.shape[:2]
        inside = [(b, s, l) for b, s, l in objects
                  if b[0] >= x0 and b[1] >= y0 and b[2] <= x0 + w and b[3] <= y0 + h]
        boxes = np.array([np.subtract(b, [x0, y0, x0, y0]) for b, _, _ in inside], np.float32).reshape(-1, 4)
        return boxes, np.array([s for _, s, _ in inside], np.float32), np.array([l for _, _, l in inside])
    return detect


def test_each_object_found_exactly_once():
    image = np.zeros((720, 1280, 3), np.uint8)
    objects = [([10, 10, 26, 42], 0.9, 0), ([600, 300, 640, 330], 0.8, 0),   # small, one inside overlaps
               ([470, 100, 520, 140], 0.7, 1), ([1250, 690, 1279, 719], 0.6, 0)]
    oracle = make_oracle(objects)
    origins = {}

    def detect_fn(crop):
        y0, x0 = origins[crop.ctypes.data]
        return oracle(crop, (x0, y0))

    # each tile is a view of `image`: its buffer address tells its origin
    base = image.ctypes.data
    for x0, y0, _, _ in tile_grid(1280, 720, 512, 96):
        origins[base + (y0 * 1280 + x0) * 3] = (y0, x0)
    boxes, scores, labels = detect_tiled(detect_fn, image, 512, overlap=96, nms_iou=0.5)
    found = sorted(map(tuple, boxes.astype(int).tolist()))
    assert found == sorted(tuple(b) for b, _, _ in objects)
    assert np.all(np.diff(scores) <= 0)


def test_single_tile_frame_is_passed_through():
    image = np.zeros((200, 300, 3), np.uint8)
    calls = []

    def detect_fn(crop):
        calls.append(crop.shape)
        return np.array([[0, 0, 300, 200]], np.float32), np.array([0.5]), np.array([2])
    boxes, scores, labels = detect_tiled(detect_fn, image, 512)
    assert calls == [(200, 300, 3)] and boxes.tolist() == [[0, 0, 300, 200]] and labels.tolist() == [2]
