"""lib.transforms: geometry checked against painted rectangles, one random draw per clip,
exact flip inverse, hand-computed sizes, config errors."""
import numpy as np
import pytest

from lib.transforms import (Compose, Expand, PhotometricDistort, RandomDegrade, RandomFlip, RandomFrameDrop,
                            RandomTile, Resize, ResizeSquare, SSDRandomCrop, ToTensor, build_transforms, hflip,
                            sample_rng)

ID_STEP = 50  # object i is painted with value 50 * (i + 1) in channel 0 (no clash with fills)


def painted_clip(seed, height=120, width=160, frames=2, objects=4):
    """Frames with random noise in channels 1-2 and non-overlapping integer boxes painted in
    channel 0; boxes carry the object index as a 5th column."""
    rng = np.random.RandomState(seed)
    boxes = []
    occupied = np.zeros((height, width), bool)
    for _ in range(200):
        if len(boxes) == objects:
            break
        w, h = rng.randint(6, 50), rng.randint(6, 50)
        x1, y1 = rng.randint(0, width - w), rng.randint(0, height - h)
        if occupied[y1:y1 + h, x1:x1 + w].any():
            continue
        occupied[max(0, y1 - 2):y1 + h + 2, max(0, x1 - 2):x1 + w + 2] = True
        boxes.append([x1, y1, x1 + w, y1 + h, len(boxes)])
    boxes = np.array(boxes, np.float32)
    clip = []
    for _ in range(frames):
        frame = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
        frame[..., 0] = 0
        for x1, y1, x2, y2, i in boxes.astype(int):
            frame[y1:y2, x1:x2, 0] = ID_STEP * (i + 1)
        clip.append(frame)
    return clip, [boxes.copy() for _ in range(frames)]


def check_boxes_match_paint(frames, boxes, tol):
    """Every kept box is the bounding box (within tol pixels) of its object's painted pixels."""
    for frame, b in zip(frames, boxes):
        for x1, y1, x2, y2, i in b:
            ys, xs = np.nonzero(frame[..., 0] == ID_STEP * (int(i) + 1))
            assert len(xs), f"object {int(i)} kept but not visible"
            np.testing.assert_allclose([x1, y1, x2, y2], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                                       atol=tol, err_msg=f"object {int(i)}")


GEOMETRIC = [
    (lambda: RandomFlip(p=0.5), 0.0),
    (lambda: SSDRandomCrop(), 0.0),
    (lambda: SSDRandomCrop(iou_mode="all", min_ious=(0.1, 0.3)), 0.0),
    (lambda: Expand(max_ratio=3.0, p=0.7), 0.0),
    (lambda: RandomTile(size=(64, 48), object_prob=0.7, min_visible=0.3), 0.0),
    (lambda: Resize(short=90, max_size=110, interpolation="nearest"), 1.0),
    (lambda: ResizeSquare(size=77, interpolation="nearest"), 1.0),
    (lambda: Compose([Expand(p=1.0), SSDRandomCrop(), RandomFlip(),
                      ResizeSquare(100, interpolation="nearest")]), 1.5),
]


@pytest.mark.parametrize("make,tol", GEOMETRIC, ids=["flip", "crop_any", "crop_all", "expand", "tile",
                                                     "resize", "square", "compose"])
def test_boxes_follow_the_pixels(make, tol):
    transform = make()
    np.random.seed(0)
    for seed in range(25):
        frames, boxes = painted_clip(seed)
        out_frames, out_boxes = transform(frames, boxes)
        assert out_boxes[0].shape[1] == 5 and out_boxes[0].dtype == np.float32
        check_boxes_match_paint(out_frames, out_boxes, tol)
        # objects fully inside the output that were dropped would be a bug
        kept = set(out_boxes[0][:, 4].astype(int))
        for i in range(len(boxes[0])):
            ys, xs = np.nonzero(out_frames[0][..., 0] == ID_STEP * (i + 1))
            if i not in kept and len(xs) and not isinstance(transform, (SSDRandomCrop, RandomTile, Compose)):
                pytest.fail(f"object {i} visible but dropped")


ALL = [RandomFlip, SSDRandomCrop, Expand, PhotometricDistort, RandomTile,
       lambda: Compose([PhotometricDistort(), Expand(), SSDRandomCrop(), RandomFlip(), ResizeSquare(64),
                        ToTensor(mode="minus_one_one")])]


@pytest.mark.parametrize("make", ALL, ids=["flip", "crop", "expand", "photometric", "tile", "compose"])
def test_one_random_draw_per_clip(make):
    """Transforming [A, B] equals transforming [A] and [B] separately with the same random state."""
    transform = make()
    for seed in range(8):
        frames, boxes = painted_clip(seed, frames=2)
        np.random.seed(seed)
        both_f, both_b = transform(frames, boxes)
        for k in range(2):
            np.random.seed(seed)
            one_f, one_b = transform([frames[k]], [boxes[k]])
            np.testing.assert_array_equal(both_f[k], one_f[0])
            np.testing.assert_array_equal(both_b[k], one_b[0])
        np.testing.assert_array_equal(both_b[0], both_b[1])


def test_rng_argument_makes_runs_reproducible_and_inputs_are_not_modified():
    frames, boxes = painted_clip(3)
    copies = [f.copy() for f in frames], [b.copy() for b in boxes]
    specs = ["PhotometricDistort", "Expand", "SSDRandomCrop", "RandomFlip"]
    out1 = build_transforms(specs, rng=np.random.RandomState(11))(frames, boxes)
    out2 = build_transforms(specs, rng=np.random.RandomState(11))(frames, boxes)
    for a, b in zip(out1[0] + out1[1], out2[0] + out2[1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(frames + boxes, copies[0] + copies[1]):
        np.testing.assert_array_equal(a, b)


def test_call_time_rng_overrides_global_state():
    """A per-sample generator makes the output independent of numpy's global state (workers)."""
    frames, boxes = painted_clip(6)
    pipeline = build_transforms(["PhotometricDistort", "Expand", "SSDRandomCrop", "RandomFlip",
                                 {"name": "RandomTile", "size": 64}])
    outputs = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        outputs.append(pipeline(frames, boxes, rng=sample_rng(0, 3, 17)))
    for a, b in zip(outputs[0][0] + outputs[0][1], outputs[1][0] + outputs[1][1]):
        np.testing.assert_array_equal(a, b)
    other = pipeline(frames, boxes, rng=sample_rng(0, 3, 18))
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(other[0], outputs[0][0]))


def test_flip_twice_is_identity_and_flip_formula():
    frames, boxes = painted_clip(1)
    f1, b1 = hflip(frames, boxes)
    assert b1[0][0, 0] == 160 - boxes[0][0, 2] and b1[0][0, 2] == 160 - boxes[0][0, 0]
    np.testing.assert_array_equal(f1[0], frames[0][:, ::-1])
    f2, b2 = hflip(f1, b1)
    for a, b in zip(f2 + b2, frames + boxes):
        np.testing.assert_array_equal(a, b)
    np.random.seed(0)
    flips = [RandomFlip(p=0.5)(frames, boxes)[1][0][0, 0] != boxes[0][0, 0] for _ in range(400)]
    assert 0.4 < np.mean(flips) < 0.6
    assert not any(RandomFlip(p=0.0)(frames, boxes)[1][0][0, 0] != boxes[0][0, 0] for _ in range(20))


def test_ssd_crop_patch_constraints():
    gt = np.array([[40, 30, 90, 80], [100, 60, 150, 110]], np.float64)
    rng = np.random.RandomState(0)
    # two far-apart boxes: 'all' can only reach ~0.28 (a patch around both)
    for mode, threshold in (("any", 0.5), ("all", 0.2)):
        crop = SSDRandomCrop(min_ious=(threshold,), iou_mode=mode, rng=rng)
        accepted = 0
        for _ in range(200):
            patch = crop.sample_patch(120, 160, gt)
            if patch is None:
                continue
            accepted += 1
            left, top, w, h = patch
            assert 0.3 * 160 - 1 <= w <= 160 and 0.3 * 120 - 1 <= h <= 120 and 0.5 <= h / w <= 2
            assert left >= 0 and top >= 0 and left + w <= 160 and top + h <= 120
            ix = np.clip(np.minimum(gt[:, 2], left + w) - np.maximum(gt[:, 0], left), 0, None)
            iy = np.clip(np.minimum(gt[:, 3], top + h) - np.maximum(gt[:, 1], top), 0, None)
            inter = ix * iy
            iou = inter / ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) + w * h - inter)
            assert (iou.max() if mode == "any" else iou.min()) >= threshold
        assert accepted > 20, mode
    frames, boxes = painted_clip(0)
    out_f, out_b = SSDRandomCrop(min_ious=(None,))(frames, boxes)
    np.testing.assert_array_equal(out_f[0], frames[0])


def test_expand_places_the_image_on_a_filled_canvas():
    frames, boxes = painted_clip(2)
    out_f, out_b = Expand(max_ratio=2.0, p=1.0, fill=(1, 2, 3), rng=np.random.RandomState(4))(frames, boxes)
    h, w = out_f[0].shape[:2]
    assert 120 <= h <= 240 and 160 <= w <= 320 and (h, w) != (120, 160)
    dx, dy = (out_b[0][0, :2] - boxes[0][0, :2]).astype(int)
    np.testing.assert_array_equal(out_f[0][dy:dy + 120, dx:dx + 160], frames[0])
    mask = np.ones((h, w), bool)
    mask[dy:dy + 120, dx:dx + 160] = False
    assert (out_f[0][mask] == [1, 2, 3]).all()


def test_resize_sizes_hand_computed():
    frame = np.zeros((375, 500, 3), np.uint8)
    box = [np.array([[10, 20, 110, 220]], np.float32)]
    out_f, out_b = Resize(600, 1000)([frame], box)
    assert out_f[0].shape == (600, 800, 3)
    np.testing.assert_allclose(out_b[0], [[16, 32, 176, 352]], rtol=1e-6)
    out_f, _ = Resize(600, 1000)([np.zeros((300, 1200, 3), np.uint8)], [np.zeros((0, 4))])
    assert out_f[0].shape == (250, 1000, 3)  # long side limited
    out_f, out_b = ResizeSquare(300)([frame], box)
    assert out_f[0].shape == (300, 300, 3)
    np.testing.assert_allclose(out_b[0], [[6, 16, 66, 176]], rtol=1e-6)


def test_random_tile_contains_the_object_and_pads_small_frames():
    frames, boxes = painted_clip(5, height=400, width=600, objects=1)
    tile = RandomTile(size=(128, 96), object_prob=1.0, rng=np.random.RandomState(0))
    for _ in range(30):
        out_f, out_b = tile(frames, boxes)
        assert out_f[0].shape == (96, 128, 3)
        assert len(out_b[0]) == 1
        ob = out_b[0][0]
        np.testing.assert_allclose(ob[2] - ob[0], boxes[0][0, 2] - boxes[0][0, 0])
        np.testing.assert_allclose(ob[3] - ob[1], boxes[0][0, 3] - boxes[0][0, 1])
    small = [np.full((50, 60, 3), 9, np.uint8)]
    out_f, out_b = RandomTile(size=64, fill=(1, 2, 3))(small, [np.array([[5, 5, 20, 20, 0]], np.float32)])
    assert out_f[0].shape == (64, 64, 3)
    assert (out_f[0][50:, :] == [1, 2, 3]).all() and (out_f[0][:, 60:] == [1, 2, 3]).all()
    assert (out_f[0][:50, :60] == 9).all()
    np.testing.assert_array_equal(out_b[0], [[5, 5, 20, 20, 0]])


def test_photometric_distort_changes_colours_not_boxes():
    frames, boxes = painted_clip(0)
    distort = PhotometricDistort(p=1.0, rng=np.random.RandomState(0))
    out_f, out_b = distort(frames, boxes)
    assert out_f[0].dtype == np.uint8 and out_f[0].shape == frames[0].shape
    assert np.abs(out_f[0].astype(int) - frames[0]).mean() > 5
    np.testing.assert_array_equal(out_b[0], boxes[0])
    # hue rotation by 120 degrees permutes pure RGB primaries
    params = {"brightness": None, "contrast_first": True, "contrast": None, "saturation": None,
              "hue": 120.0}
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_array_equal(PhotometricDistort.apply(red, params)[0, 0], [0, 255, 0])
    params.update(hue=None, brightness=10.0, contrast=2.0, contrast_first=False)
    gray = np.full((1, 1, 3), 100, np.uint8)
    assert PhotometricDistort.apply(gray, params)[0, 0, 0] == 220  # (100 + 10) * 2


def test_random_degrade_per_frame_share_occlusion_geometry_and_errors():
    """Each frame independently: the share of changed frames matches p (binomial, 5 sigma); an
    occlusion changes one solid rectangle covering 30-60 % of one box from one side, nothing else;
    boxes never move."""
    frames, boxes = painted_clip(0, frames=1)
    degrade = RandomDegrade(p=0.25, rng=np.random.RandomState(3))
    changed = 0
    n = 600
    for _ in range(n):
        out_f, out_b = degrade(frames, boxes)
        changed += int(not np.array_equal(out_f[0], frames[0]))
        np.testing.assert_array_equal(out_b[0], boxes[0])
    assert abs(changed - 0.25 * n) < 5 * np.sqrt(n * 0.25 * 0.75), changed
    occlude = RandomDegrade(p=1.0, kinds=["occlusion"], rng=np.random.RandomState(1))
    for trial in range(20):
        clip, clip_boxes = painted_clip(int(np.random.RandomState(trial).randint(100)), frames=3)
        out_f, _b = occlude(clip, clip_boxes)
        for before, after, b in zip(clip, out_f, clip_boxes):
            ys, xs = np.nonzero((before != after).any(axis=2))
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            patch = after[y1:y2, x1:x2].reshape(-1, 3)
            assert (patch == patch[0]).all()                    # one solid colour
            boxes_int = b[:, :4].astype(int)
            inside = [k for k, (bx1, by1, bx2, by2) in enumerate(boxes_int)
                      if bx1 <= x1 and by1 <= y1 and x2 <= bx2 and y2 <= by2]
            assert inside, "the occluder lies inside one box"
            bx1, by1, bx2, by2 = boxes_int[inside[0]]
            full_w, full_h = (x2 - x1) == (bx2 - bx1), (y2 - y1) == (by2 - by1)
            assert full_w or full_h                             # cut from one side: one extent whole
            share = ((x2 - x1) * (y2 - y1)) / ((bx2 - bx1) * (by2 - by1))
            assert 0.3 - 0.1 <= share <= 0.6 + 0.1, share       # rounding to whole pixels of small boxes
    blur = RandomDegrade(p=1.0, kinds=["motion_blur", "defocus"], rng=np.random.RandomState(0))
    flat = [np.full((40, 60, 3), 77, np.uint8)]
    np.testing.assert_array_equal(blur(flat, [np.zeros((0, 4))])[0][0], flat[0])   # blur keeps a flat frame
    assert not np.array_equal(blur(frames, boxes)[0][0], frames[0])
    with pytest.raises(ValueError, match=r"aug\[0\]: RandomDegrade: unknown kind\(s\) \['rain'\]"):
        build_transforms([{"name": "degrade", "kinds": ["rain"]}], source="aug")


def test_random_frame_drop_per_frame_flat_frames_boxes_kept():
    """Each frame independently: a dropped frame is the flat value everywhere, a kept one is the input
    unchanged; the share of dropped frames matches p (binomial, 5 sigma); frames of one clip are drawn
    independently (clips with some but not all frames dropped occur); boxes never change."""
    clip, clip_boxes = painted_clip(4, frames=4)
    drop = RandomFrameDrop(p=0.3, value=90, rng=np.random.RandomState(5))
    dropped = mixed = 0
    n = 300
    for _ in range(n):
        out_f, out_b = drop(clip, clip_boxes)
        flags = []
        for before, after, b, ob in zip(clip, out_f, clip_boxes, out_b):
            np.testing.assert_array_equal(ob, b)
            assert after.shape == before.shape and after.dtype == np.uint8
            is_flat = bool((after == 90).all())
            assert is_flat or np.array_equal(after, before)
            flags.append(is_flat)
        dropped += sum(flags)
        mixed += int(0 < sum(flags) < len(flags))
    total = n * len(clip)
    assert abs(dropped - 0.3 * total) < 5 * np.sqrt(total * 0.3 * 0.7), dropped
    assert mixed > n / 4
    assert all((f == 90).all() for f in RandomFrameDrop(p=1.0, value=90)(clip, clip_boxes)[0])
    assert all(np.array_equal(a, b) for a, b in zip(RandomFrameDrop(p=0.0)(clip, clip_boxes)[0], clip))
    assert isinstance(build_transforms([{"name": "frame_drop", "p": 0.2}]).transforms[0], RandomFrameDrop)
    with pytest.raises(ValueError, match=r"RandomFrameDrop: value must be a pixel value"):
        RandomFrameDrop(value=300)


def test_to_tensor_normalisation():
    frame = np.random.RandomState(0).randint(0, 256, (4, 5, 3)).astype(np.uint8)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    out, _ = ToTensor(mean=mean, std=std)([frame], [np.zeros((0, 4))])
    assert out[0].shape == (3, 4, 5) and out[0].dtype == np.float32
    np.testing.assert_allclose(out[0][1], (frame[..., 1] - mean[1]) / std[1], rtol=1e-5)
    out, _ = ToTensor(mode="minus_one_one", bgr=True)([frame], [np.zeros((0, 4))])
    np.testing.assert_allclose(out[0][0], frame[..., 2] / 127.5 - 1, rtol=1e-6)
    assert out[0].min() >= -1 and out[0].max() <= 1


def test_build_transforms_errors_and_input_checks():
    t = build_transforms([{"name": "ResizeSquare", "size": 32}, "RandomFlip"])
    assert isinstance(t, Compose) and len(t.transforms) == 2
    with pytest.raises(ValueError, match=r"aug\[1\]: unknown transform 'Mirror'. Known: .*RandomFlip"):
        build_transforms(["RandomFlip", {"name": "Mirror"}], source="aug")
    with pytest.raises(ValueError, match=r"transforms\[0\]: Resize has no parameter\(s\) \['shortt'\]"
                                         r"\. Accepted: \['short', 'max_size', 'interpolation'\]"):
        build_transforms([{"name": "Resize", "shortt": 600}])
    with pytest.raises(ValueError, match=r"transforms\[0\]: RandomFlip: probability p must be in"):
        build_transforms([{"name": "RandomFlip", "p": 2}])
    # the spelling of m2det's config: TYPE, snake-case aliases, upper-case keys, PROB
    t = build_transforms([{"TYPE": "photometric"}, {"TYPE": "expand", "MAX_RATIO": 2.0, "FILL": [1, 2, 3]},
                          {"TYPE": "ssd_crop"}, {"TYPE": "flip", "PROB": 0.25}])
    assert [type(x).__name__ for x in t.transforms] == ["PhotometricDistort", "Expand", "SSDRandomCrop",
                                                       "RandomFlip"]
    assert t.transforms[1].fill == (1.0, 2.0, 3.0) and t.transforms[3].p == 0.25
    with pytest.raises(ValueError, match="needs one 'name' key"):
        build_transforms([{"p": 0.5}])
    frames, boxes = painted_clip(0)
    with pytest.raises(ValueError, match="all frames of a clip must have one size"):
        RandomFlip()([frames[0], frames[0][:10]], boxes)
    with pytest.raises(ValueError, match=r"boxes of frame 0 must be \(N, 4\+\)"):
        RandomFlip()([frames[0]], [np.zeros((3, 3))])
    out_f, out_b = SSDRandomCrop()([frames[0]], [np.zeros((0, 4))])
    assert out_b[0].shape == (0, 4)


def test_transform_name_resolves_specs_as_build_transforms_does():
    """lib.transforms.transform_name: class names, aliases, any case / underscores, the 'type' key and
    bare strings give the class build_transforms builds; an unknown name gives None."""
    from lib.transforms import TRANSFORMS, build_transforms, transform_name
    for spec in ["RandomFlip", "flip", {"name": "frame_drop", "p": 0.2}, {"type": "Random_Degrade"},
                 {"Name": "SSDCROP"}, "random-frame-drop"]:
        name = transform_name(spec)
        assert name in TRANSFORMS
        assert type(build_transforms([spec]).transforms[0]).__name__ == name
    assert transform_name("rain") is None and transform_name({"p": 0.5}) is None
    from lib.transforms import lists_transform
    assert lists_transform(["flip", {"name": "frame_drop", "p": 0.1}], "RandomFrameDrop")
    assert not lists_transform(["flip", "degrade"], "RandomFrameDrop") and not lists_transform(None, "RandomFlip")
