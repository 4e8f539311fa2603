"""lib.viz: boxes land on the right pixels, thresholds and padding respected, MP4 and image files
read back with OpenCV."""
import cv2
import mxnet as mx
import numpy as np
import pytest

from lib.viz import VideoWriter, class_color, draw_detections, draw_ground_truth, save_image


def test_draw_detections_places_box_and_label():
    image = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[50, 60, 150, 160], [10, 10, 40, 40]], np.float32)
    out = draw_detections(image, boxes, [0.9, 0.2], [1, 0], classes=["car", "trap"], threshold=0.5,
                          thickness=1)
    assert (image == 0).all()  # input untouched
    color = np.array(class_color(1))
    # a 1-pixel rectangle: left column x=50 and right column x2-1=149 between the corners
    assert (np.abs(out[100, 50].astype(int) - color) <= 2).all()
    assert (np.abs(out[100, 149].astype(int) - color) <= 2).all()
    assert (np.abs(out[159, 100].astype(int) - color) <= 2).all()
    assert (out[70:150, 60:140] == 0).all()  # interior untouched
    assert (out[45:59, 51:70] != 0).any()  # label background above the box
    assert (out[5:45, 5:45] == 0).all()  # score 0.2 < threshold: not drawn


def test_draw_detections_accepts_gluoncv_outputs_with_padding():
    image = np.zeros((100, 100, 3), np.uint8)
    ids = mx.nd.array([[[0], [-1]]])
    scores = mx.nd.array([[[0.8], [-1]]])
    boxes = mx.nd.array([[[0, 0, 50, 50], [-1, -1, -1, -1]]])
    out = draw_detections(image, boxes, scores, ids, classes=["speedtrap"])
    assert out[25, 0].any() and out[0:50, 0:50].any()
    assert (out[60:, 60:] == 0).all()
    with pytest.raises(ValueError, match="same number"):
        draw_detections(image, np.zeros((2, 4)), [0.5], [0, 1])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        draw_detections(image.astype(np.float32), np.zeros((0, 4)), [], [])


def test_draw_ground_truth_colour_and_difficult():
    image = np.zeros((120, 120, 3), np.uint8)
    out = draw_ground_truth(image, [[20, 30, 80, 90], [90, 90, 110, 110]], labels=[0, 0],
                            classes=["trap"], difficult=[False, True], thickness=2)
    assert tuple(out[60, 20]) == (0, 255, 0)
    assert tuple(out[100, 90]) == (0, 255, 0)
    assert (out[40:70, 30:70] == 0).all()  # interior (the second label sits around rows 75-90)


def test_save_image_round_trip_keeps_rgb_order(tmp_path):
    image = np.zeros((8, 9, 3), np.uint8)
    image[..., 0] = 200  # red
    path = save_image(str(tmp_path / "sub" / "a.png"), image)
    back = cv2.imread(path)
    np.testing.assert_array_equal(back[..., ::-1], image)
    with pytest.raises(ValueError, match="cannot write image .*a.unknownext"):
        save_image(str(tmp_path / "a.unknownext"), image)


def test_video_writer_writes_readable_mp4(tmp_path):
    path = str(tmp_path / "out" / "clip.mp4")
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 50)] * 3
    with VideoWriter(path, fps=12) as writer:
        for c in colors:
            writer.write(np.full((64, 96, 3), c, np.uint8))
    assert writer.frames_written == len(colors)
    cap = cv2.VideoCapture(path)
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96 and int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == 64
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12, abs=0.01)
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame[..., ::-1].reshape(-1, 3).mean(0))
    cap.release()
    assert len(read) == len(colors)
    for got, want in zip(read, colors):
        np.testing.assert_allclose(got, want, atol=12)
    with pytest.raises(ValueError, match="frame 1 is 10x10, the video is 20x20"):
        with VideoWriter(str(tmp_path / "b.mp4")) as w:
            w.write(np.zeros((20, 20, 3), np.uint8))
            w.write(np.zeros((10, 10, 3), np.uint8))
