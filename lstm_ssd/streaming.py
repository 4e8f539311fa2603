"""Streaming inference (the lib.streaming contract): ``reset()``, then once per frame
``step(frame) -> [(frame_index, (boxes, scores, labels))]``: the memory detector answers each frame at once.

Extractor choice per frame (INTERLEAVE.POLICY): ``large`` / ``small`` only, ``fixed`` (large every
TAU + 1 frames, small otherwise), ``adaptive`` (the Double-DQN policy network of policy.py reads the
memory and the action history), ``async`` (``AsyncStreamingDetector``: the small extractor answers
every frame while the large one refreshes the memory in a second thread). The memory state can be
saved and restored (``get_state``/``set_state``, ``save_state``/``load_state`` as npz).
"""
import threading
import time

import cv2
import mxnet as mx
import numpy as np

from lib.config import ConfigError
from lib.flow import BoxTracker, DISFlow
from lib.runtime import hybridize_for_inference
from lib.streaming import StreamRunner, as_detections

from .policy import ACTIONS

POLICIES = ("large", "small", "fixed", "adaptive", "async")
SMALL = ACTIONS.index("small")


def resize_frame(frame, size_hw):
    """HxWx3 uint8 RGB -> the same at the model's input size (h, w)."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"step(frame): expected an HxWx3 RGB image, got shape {frame.shape}")
    return cv2.resize(frame, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)


def to_batch(resized, ctx=mx.cpu()):
    """hxwx3 uint8 RGB -> (1,3,h,w) float32 NDArray (0..255; scaling happens in the graph)."""
    return mx.nd.array(resized.transpose(2, 0, 1)[None], ctx=ctx, dtype="float32")


def preprocess(frame, size_hw, ctx=mx.cpu()):
    """HxWx3 uint8 RGB -> (1,3,h,w) float32 NDArray at the model's input size."""
    return to_batch(resize_frame(frame, size_hw), ctx)


class MemoryMotion:
    """TEST.MOTION: the memory state moved along the motion since the frame that wrote it.

    Keeps that frame (grey, as DIS reads it) and, with PROPAGATE, the large step's projection; ``flow``
    gives the DIS flow from the current frame to it on the feature grid, the warp that aligns the state
    with the current frame. Without it a state written by a large step is read up to TAU frames later
    where the scene has moved by several feature cells (dashcam footage near the image edges)."""

    def __init__(self, net, motion_cfg, config_name="config"):
        if motion_cfg.FLOW != "dis":
            raise ConfigError(f"{config_name}: TEST.MOTION.FLOW must be '' (off) or dis, got {motion_cfg.FLOW!r}")
        if net.memory is None:
            raise ConfigError(f"{config_name}: TEST.MOTION moves the memory state; MODEL.TYPE ssdlite has none")
        if motion_cfg.PROPAGATE and not net.residual:
            raise ConfigError(f"{config_name}: TEST.MOTION.PROPAGATE needs MODEL.LSTM.RESIDUAL true (it replaces "
                              f"the frame term around the memory)")
        try:
            self.dis = DISFlow(motion_cfg.PRESET, motion_cfg.SCALE)
        except ValueError as err:
            raise ConfigError(f"{config_name}: TEST.MOTION: {err}") from None
        self.net, self.propagate = net, bool(motion_cfg.PROPAGATE)
        self.stride = net.large.backbone.stride
        self.forget()

    def forget(self):
        self.memory_frame = None     # prepared grey frame the memory state was written at
        self.key_term = None         # that large step's projection (PROPAGATE)

    def flow(self, current, ctx):
        """(1,2,h,w) flow from ``current`` (prepared) to the memory's frame, or None before any."""
        if self.memory_frame is None:
            return None
        grid = self.dis.grid_prepared(current, self.memory_frame, self.net.image_hw, self.stride,
                                      self.net.feature_hw)
        return mx.nd.array(grid.transpose(2, 0, 1)[None], ctx=ctx)

    def clip_flows(self, frames, schedule, ctx):
        """Training (TRAIN.MOVE_STATE): the flows of ``LSTMSSD.forward`` for a batch of clips. frames
        (B,T,H,W,3) uint8 at the input size; per step t a (B,2,h,w) flow from frame t to the frame whose
        step wrote the state t reads (the last earlier step of an extractor that writes the memory), None
        at the first step (the state carried in from the lane's last clip is read as it is)."""
        frames = np.asarray(frames)
        prepared = [[self.dis.prepare(frame) for frame in clip] for clip in frames]
        flows, writer = [], None
        for t, extractor in enumerate(schedule):
            if writer is None:
                flows.append(None)
            else:
                grids = [self.dis.grid_prepared(clip[t], clip[writer], self.net.image_hw, self.stride,
                                                self.net.feature_hw) for clip in prepared]
                flows.append(mx.nd.array(np.stack(grids).transpose(0, 3, 1, 2), ctx=ctx))
            if self.net.writes_memory[extractor]:
                writer = t
        return flows

    def step(self, x, current, state, extractor, ctx):
        """One step of the detector on input ``x`` whose prepared grey frame is ``current``."""
        cls, box, new_state, self.key_term = self.net.step_moved(
            x, state, extractor, self.flow(current, ctx), self.key_term, self.propagate)
        if self.net.writes_memory[extractor]:
            self.memory_frame = current
        return cls, box, new_state


class StreamingDetector(StreamRunner):
    def __init__(self, net, cfg, policy=None, tau=None, ctx=mx.cpu(), hybridize=True, policy_net=None):
        self.net, self.cfg, self.ctx = net, cfg, ctx
        self.policy = policy or cfg.INTERLEAVE.POLICY
        if self.policy not in POLICIES:
            raise ConfigError(f"INTERLEAVE.POLICY must be one of {POLICIES}, got {self.policy!r}")
        if net.type != "fast_slow" and self.policy != "large":
            self.policy = "large"          # single-extractor models have nothing to interleave
        if self.policy == "adaptive" and policy_net is None:
            raise ConfigError("INTERLEAVE.POLICY adaptive needs a trained policy network (POLICY_NET.WEIGHTS)")
        self.tau = cfg.INTERLEAVE.TAU if tau is None else tau
        self.phase = cfg.INTERLEAVE.PHASE
        if self.policy == "fixed" and not 0 <= self.phase <= self.tau:
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: INTERLEAVE.PHASE must be in 0..TAU "
                              f"(0..{self.tau}), got {self.phase}")
        self.policy_net = policy_net
        if cfg.TEST.MEMORY not in ("carry", "reset"):
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: TEST.MEMORY must be carry or reset, "
                              f"got {cfg.TEST.MEMORY!r}")
        # reset: the memory-reset ablation, a zero state before every frame (the schedule goes on)
        self.reset_each_frame = cfg.TEST.MEMORY == "reset"
        self.motion = None
        motion = cfg.TEST.MOTION
        if motion.FLOW:
            self.motion = MemoryMotion(net, motion, cfg.get("CONFIG_FILE") or "config")
        elif motion.PROPAGATE:
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: TEST.MOTION.PROPAGATE moves the last large "
                              f"frame's features along the flow: it needs TEST.MOTION.FLOW dis")
        self.tracker = None
        if cfg.TEST.TRACK.ENABLED:
            name = cfg.get("CONFIG_FILE") or "config"
            if net.type != "fast_slow":
                raise ConfigError(f"{name}: TEST.TRACK replaces the small steps of fast_slow; MODEL.TYPE "
                                  f"{net.type} has none")
            track = cfg.TEST.TRACK
            if track.MEMORY not in ("carry", "reset"):
                raise ConfigError(f"{name}: TEST.TRACK.MEMORY must be carry or reset, got {track.MEMORY!r}")
            self.reset_after_tracking = track.MEMORY == "reset"
            self.search_tau, self.confident = int(track.SEARCH_TAU), float(track.CONFIDENT)
            if self.search_tau < -1:
                raise ConfigError(f"{name}: TEST.TRACK.SEARCH_TAU must be -1 (off) or >= 0, got {self.search_tau}")
            if not 0.0 <= self.confident <= 1.0:
                raise ConfigError(f"{name}: TEST.TRACK.CONFIDENT is a score in [0, 1], got {self.confident}")
            try:
                self.tracker = BoxTracker(track.PRESET, track.SCALE, track.DECAY, track.MIN_VISIBLE)
            except ValueError as err:
                raise ConfigError(f"{name}: TEST.TRACK: {err}") from None
        if hybridize:
            blocks = list(net.parts().values())
            if self.motion is not None and net.combine_block() is not None:
                blocks.append(net.combine_block())
            for part in blocks:
                hybridize_for_inference(part, ctx)
        self.reset()

    # ---- state -------------------------------------------------------------------------------
    def reset(self):
        self.forget()
        self.frame_index = 0
        self.history = []
        self.last_extractor = None

    def forget(self):
        """Zero the memory state only: the interleaving schedule (frame index, history) goes on."""
        self.state = self.net.zero_state(1, self.ctx)
        self.prev_state = self.state
        if self.motion is not None:
            self.motion.forget()
        if self.tracker is not None:
            self.tracker.forget()

    def get_state(self):
        """Numpy snapshot of everything that determines the next outputs."""
        out = {"frame_index": np.int64(self.frame_index), "history": np.array(self.history, np.int64)}
        if self.state is not None:
            out.update(c=self.state[0].asnumpy(), h=self.state[1].asnumpy(),
                       prev_c=self.prev_state[0].asnumpy(), prev_h=self.prev_state[1].asnumpy())
        if self.motion is not None:      # the frame the state belongs to, and its projection
            if self.motion.memory_frame is not None:
                out["memory_frame"] = self.motion.memory_frame
            if self.motion.key_term is not None:
                out["key_term"] = self.motion.key_term.asnumpy()
        if self.tracker is not None and self.tracker.ready:   # the detections a small step moves on
            out["track_frame"] = self.tracker.last_frame
            out.update(zip(("track_boxes", "track_scores", "track_labels"), self.tracker.last))
        return out

    def set_state(self, snapshot):
        self.frame_index = int(snapshot["frame_index"])
        self.history = [int(a) for a in snapshot["history"]]
        if self.net.memory is not None:
            expected = (1,) + self.net.state_shape
            if tuple(snapshot["c"].shape) != expected:
                raise ValueError(f"state shape {snapshot['c'].shape} does not fit this model ({expected})")
            arr = lambda k: mx.nd.array(snapshot[k], ctx=self.ctx)  # noqa: E731
            self.state = (arr("c"), arr("h"))
            self.prev_state = (arr("prev_c"), arr("prev_h"))
        if self.motion is not None:
            self.motion.forget()
            if "memory_frame" in snapshot:
                self.motion.memory_frame = np.ascontiguousarray(snapshot["memory_frame"], np.uint8)
            if "key_term" in snapshot:
                self.motion.key_term = mx.nd.array(snapshot["key_term"], ctx=self.ctx)
        if self.tracker is not None:
            self.tracker.forget()
            if "track_frame" in snapshot:
                self.tracker.last_frame = np.ascontiguousarray(snapshot["track_frame"], np.uint8)
                self.tracker.last = tuple(np.asarray(snapshot[k]) for k in ("track_boxes", "track_scores",
                                                                          "track_labels"))

    def save_state(self, path):
        np.savez(path, **self.get_state())

    def load_state(self, path):
        with np.load(path, allow_pickle=False) as data:
            self.set_state({k: data[k] for k in data.files})

    # ---- per frame ---------------------------------------------------------------------------
    def choose(self):
        if self.policy in ("large", "small"):
            return self.policy
        if self.policy == "fixed":
            key = self.frame_index == 0 or (self.frame_index - self.phase) % (self.tau + 1) == 0
            return "large" if key else "small"
        return ACTIONS[self.policy_net.act(self.state, self.prev_state, self.history)]

    def searching(self):
        """TEST.TRACK.SEARCH_TAU: the tracker holds nothing confident and SEARCH_TAU small steps ran since
        the last large one (so the history, saved with the state, decides on resume too)."""
        if self.search_tau < 0 or self.tracker.best_score() >= self.confident:
            return False
        small_run = 0                       # small steps since the last large one
        for action in reversed(self.history):
            if action != SMALL:
                break
            small_run += 1
        return small_run >= self.search_tau

    def step_raw(self, x, extractor=None, prepared=None):
        """x (1,3,S,S) NDArray -> raw (cls, box) of this frame; advances the state. ``prepared``: the
        frame as DIS reads it (``self.motion.dis.prepare``), needed with TEST.MOTION."""
        if self.reset_each_frame:
            self.forget()
        extractor = extractor or self.choose()
        if self.motion is None:
            cls, box, new_state = self.net.step(x, self.state, extractor)
        else:
            if prepared is None:
                raise ValueError("TEST.MOTION needs the frame itself: call step(frame), not step_raw")
            cls, box, new_state = self.motion.step(x, prepared, self.state, extractor, self.ctx)
        if new_state is not self.state:
            self.prev_state = self.state
        self.state = new_state
        self.history.append(ACTIONS.index(extractor))
        self.frame_index += 1
        self.last_extractor = extractor
        return cls, box

    def step(self, frame):
        """HxWx3 uint8 RGB frame -> [(frame index, (boxes (K,4) frame pixels, scores (K,), labels (K,)))]."""
        h, w = frame.shape[:2]
        t = self.frame_index
        extractor = None
        if self.tracker is not None and self.tracker.ready and not self.reset_each_frame:
            extractor = self.choose()
            if extractor == "small" and self.searching():
                extractor = "large"
        if extractor == "small":
            # TEST.TRACK: a small step moves the last frame's detections; no network, the state waits
            self.history.append(SMALL)
            self.frame_index += 1
            self.last_extractor = "small"
            return [(t, self.tracker.track(frame))]
        if self.tracker is not None and self.reset_after_tracking and self.history[-1:] == [SMALL]:
            self.forget()           # TEST.TRACK.MEMORY reset: the memory missed the tracked frames
        resized = resize_frame(frame, self.net.image_hw)
        prepared = self.motion.dis.prepare(resized) if self.motion is not None else None
        cls, box = self.step_raw(to_batch(resized, self.ctx), extractor=extractor, prepared=prepared)
        detections = as_detections(*self.net.postprocess(cls, box, [w], [h], self.cfg.TEST)[0])
        if self.tracker is not None:
            self.tracker.remember(frame, detections)
        return [(t, detections)]


class AsyncStreamingDetector(StreamingDetector):
    """Small extractor on every frame; the large one updates the memory from a worker thread.

    The worker always takes the newest frame handed to it when it becomes free (older pending
    frames are dropped), runs the large extractor and the LSTM step on the state current at that
    moment, and swaps the new state in under a lock.
    """

    def __init__(self, net, cfg, ctx=mx.cpu(), hybridize=True):
        if net.type != "fast_slow":
            raise ValueError("asynchronous mode needs a fast_slow model (two extractors)")
        if cfg.TEST.MOTION.FLOW or cfg.TEST.MOTION.PROPAGATE or cfg.TEST.TRACK.ENABLED:
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: TEST.MOTION and TEST.TRACK are for the "
                              f"synchronous policies (the async worker writes the state from another thread)")
        if cfg.TEST.MEMORY == "reset":
            raise ConfigError(f"{cfg.get('CONFIG_FILE') or 'config'}: TEST.MEMORY reset is for the synchronous "
                              f"policies (the async worker writes the state on its own)")
        super().__init__(net, cfg, policy="small", ctx=ctx, hybridize=hybridize)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending = None
        self._busy = False
        self._stop = False
        self.large_updates = 0
        self._worker = threading.Thread(target=self._run, name="lfs-large-extractor", daemon=True)
        self._worker.start()

    def _run(self):
        while True:
            with self._wake:
                while self._pending is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                x, self._pending = self._pending, None
                state = self.state
                self._busy = True
            _, _, new_state = self.net.step(x, state, "large")
            new_state[0].wait_to_read()
            new_state[1].wait_to_read()
            with self._lock:
                self.prev_state, self.state = self.state, new_state
                self.large_updates += 1
                self._busy = False

    def step_raw(self, x, extractor=None, prepared=None):   # prepared: TEST.MOTION, refused here
        with self._lock:
            state = self.state
            self._pending = x          # newest frame wins; an older pending one is dropped
            self._wake.notify()
        cls, box, _ = self.net.step(x, state, "small")
        self.frame_index += 1
        self.last_extractor = "small"
        return cls, box

    def flush(self):
        """Wait until the worker has consumed the pending frame (end of a video); every frame was
        answered by its step, so nothing is pending for the caller."""
        while True:
            with self._lock:
                if self._pending is None and not self._busy:
                    break
            time.sleep(0.001)
        mx.nd.waitall()
        return []

    def close(self):
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._worker.join()
