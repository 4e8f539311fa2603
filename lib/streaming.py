"""The streaming contract every detector's runner follows, frame detectors and video detectors alike.

A runner sees one video at a time, frame by frame::

    runner.reset()                       # a new video starts
    for image in frames:                 # HxWx3 uint8 RGB
        for t, (boxes, scores, labels) in runner.step(image):
            ...                          # the results that became ready with this frame
    for t, result in runner.flush():     # the video ended: the frames still pending
        ...

``step`` returns a list of ``(frame_index, (boxes (K,4) float32 image pixels, scores (K,) float32,
labels (K,) int64 0-based))``, frame indices counted from the last ``reset``. A frame detector or a
memory detector (LSTM-SSD) returns its frame at once; a window detector (FGFA, a window of 2K+1
frames centred on the output frame) returns frame t when frame t + K arrives, and the last K at
``flush``. Every frame gets exactly one result, in order. ``detect_video`` runs a whole list.
"""
import numpy as np


def as_detections(boxes, scores, labels):
    """(boxes, scores, labels) as the contract's numpy arrays (K,4) float32, (K,) float32, (K,) int64."""
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
            np.asarray(labels, np.int64).reshape(-1))


class StreamRunner:
    """Base class: subclasses implement ``reset`` and ``step`` (and ``flush`` when they delay frames)."""

    def reset(self):
        raise NotImplementedError

    def step(self, image):
        raise NotImplementedError

    def flush(self):
        """End of the video: the results still pending (none for a runner that answers at once)."""
        return []

    def detect_video(self, images):
        """Results of every frame of one video, in order (the runner is reset first)."""
        self.reset()
        out = []
        for image in images:
            out.extend(self.step(image))
        out.extend(self.flush())
        results = [None] * len(out)
        for t, result in out:
            results[t] = result
        if any(r is None for r in results):
            raise RuntimeError(f"{type(self).__name__} returned frames {sorted(t for t, _ in out)} for "
                               f"{len(out)} inputs: the streaming contract is one result per frame")
        return results


class FrameRunner(StreamRunner):
    """A still-image detector as a runner: ``detect(image) -> (boxes, scores, labels)`` per frame."""

    def __init__(self, detect):
        self._detect = detect
        self.reset()

    def reset(self):
        self.index = 0

    def step(self, image):
        t, self.index = self.index, self.index + 1
        return [(t, as_detections(*self._detect(image)))]
