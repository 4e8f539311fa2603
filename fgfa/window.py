"""FGFA's streaming window inference: the lib.streaming runner of FGFA and its R-FCN baseline.

Each frame's features and embedding are computed once and kept while a window of 2K+1 frames (K =
TEST.K) centred on an output frame still needs them; per output frame only the flows from the centre
frame to the other frames of its window are computed (fewer when the window is padded at video edges),
or with TEST.FLOW_MODE chained only two one-step flows per new frame.
"""
import collections

import mxnet as mx
import numpy as np

from lib.flow import DISFlow
from lib.streaming import StreamRunner

from .flownet import half_size_image
from .operators import flow_warp

# half: the frame at the FlowNet's input size, or (NETWORK.FLOW dis) the resized RGB frame DIS works on
# (aggregation only), computed once per frame
Frame = collections.namedtuple("Frame", "index data im_info cache half")


class WindowRunner(StreamRunner):
    """Streaming FGFA inference over one video at a time; exactly one result per frame (lib.streaming).

    ``step(image)`` feeds the next frame and returns the results that became ready as a list of
    ``(frame_index, (boxes, scores, labels))`` -- frame t is ready once frame t+K arrived (the
    window is centred). ``flush()`` ends the video and returns the rest. Window positions before
    the first / after the last frame repeat the first / last frame. Each frame's feature+embedding
    cache is computed once; per output frame only the flows from it to the other distinct frames
    of its window are computed (``flow_mode='direct'``, the reference), or, with
    ``flow_mode='chained'`` (TEST.FLOW_MODE), only the two one-step flows of each new frame (to and
    from its predecessor), the flow to a frame j steps away being composed from j one-step flows.
    For the baseline (no aggregation) every step returns its frame.

    The flows come from the FlowNet, or with ``flow='dis'`` (NETWORK.FLOW) from OpenCV's DIS on the CPU
    (lib.flow.DISFlow at TEST.DIS_PRESET / DIS_SCALE) on the resized frames, on the feature grid.
    """

    def __init__(self, model, ctx=None, K=None, preprocess=None, flow_mode=None, flow=None):
        self.model = model
        self.ctx = ctx or mx.cpu()
        cfg = model.cfg
        self.K = cfg.TEST.K if K is None else int(K)
        self.flow_mode = flow_mode or cfg.TEST.FLOW_MODE
        if self.flow_mode not in ("direct", "chained"):
            raise ValueError(f"flow_mode must be 'direct' or 'chained', got {self.flow_mode!r}")
        self.flow = flow or cfg.NETWORK.FLOW
        if self.flow not in ("flownet", "dis"):
            raise ValueError(f"flow must be 'flownet' or 'dis', got {self.flow!r}")
        self.dis = DISFlow(cfg.TEST.DIS_PRESET, cfg.TEST.DIS_SCALE) if self.flow == "dis" else None
        self.mean = np.asarray(cfg.INPUT.MEAN, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(cfg.INPUT.STD, np.float32).reshape(3, 1, 1)
        self.stride = int(cfg.NETWORK.FEAT_STRIDE)
        self.preprocess = preprocess
        self.reset()

    def reset(self):
        # caches in the layout of the fastest aggregation kernel where it runs (CPU, compiled operators;
        # decided per video: the operator choice can change between videos)
        self.channels_last = self.model.fuses_aggregation(self.ctx)
        self.frames = collections.OrderedDict()   # index -> Frame (only what windows still need)
        # chained flow mode: one-step flows, next_flow[i] = flow i -> i+1, prev_flow[i] = i -> i-1
        self.next_flow, self.prev_flow = {}, {}
        self.next_index = 0                        # index of the next frame fed
        self.next_output = 0                       # index of the next frame to emit

    def _add(self, image):
        image, im_info = self.preprocess(image)
        data = mx.nd.array(image[None], ctx=self.ctx)
        im_info_nd = mx.nd.array(np.asarray(im_info, np.float32)[None], ctx=self.ctx)
        cache = self.model.frame_cache(data, channels_last=self.channels_last)
        half = None
        if self.model.aggregate:
            half = self._rgb(image, im_info) if self.dis else mx.nd.array(half_size_image(image)[None], ctx=self.ctx)
        frame = Frame(self.next_index, data, im_info_nd, cache, half)
        index = self.next_index
        self.frames[index] = frame
        if self.model.aggregate and self.flow_mode == "chained" and self.K > 0 and index > 0:
            # both one-step flows in one batch: (i-1 -> i) and (i -> i-1)
            flows = self._pair_flows([(index - 1, index), (index, index - 1)])
            self.next_flow[index - 1], self.prev_flow[index] = flows[0:1], flows[1:2]
        self.next_index += 1
        return frame

    def _rgb(self, image, im_info):
        """The resized RGB uint8 frame back from the normalised, padded network input (DIS's input)."""
        height, width = int(im_info[0]), int(im_info[1])
        pixels = image[:, :height, :width] * self.std + self.mean
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    def _map_size(self, index):
        cache = self.frames[index].cache
        return tuple(cache.shape[1:3] if self.channels_last else cache.shape[2:])

    def _pair_flows(self, pairs):
        """Flows of (from, to) frame index pairs -> (n,2,h,w) on the feature grid, FlowNet or DIS."""
        if self.dis is None:
            return self.model.flow_from_halves(mx.nd.concat(*[self.frames[a].half for a, _ in pairs], dim=0),
                                               mx.nd.concat(*[self.frames[b].half for _, b in pairs], dim=0))
        shape = self._map_size(pairs[0][0])
        grids = [self.dis.grid(self.frames[a].half, self.frames[b].half, self.stride, shape).transpose(2, 0, 1)
                 for a, b in pairs]
        return mx.nd.array(np.stack(grids), ctx=self.ctx)

    def _flows_from(self, t, others):
        """Flows from frame t to each frame of ``others`` (t excluded): {index: (1,2,h,w)}."""
        if not others:
            return {}
        if self.flow_mode == "direct":
            flows = self._pair_flows([(t, i) for i in others])
            return {i: flows[j:j + 1] for j, i in enumerate(others)}
        # chained: flow(t -> i +- 1) = flow(t -> i) + one-step flow of i sampled where flow(t -> i) lands
        flow_of = {}
        for step, one_step in ((1, self.next_flow), (-1, self.prev_flow)):
            wanted = [i for i in others if (i - t) * step > 0]
            if not wanted:
                continue
            farthest = max(wanted) if step > 0 else min(wanted)
            flow = one_step[t]
            flow_of[t + step] = flow
            for i in range(t + step, farthest, step):
                flow = flow + flow_warp(mx.nd, one_step[i], flow)
                flow_of[i + step] = flow
        return {i: flow_of[i] for i in others}

    def window_indices(self, t, last):
        """Frame indices of t's window: t-K..t+K clamped to [0, last] (edges repeat)."""
        return [min(max(t + j, 0), last) for j in range(-self.K, self.K + 1)]

    def _emit(self, t, last):
        model = self.model
        key = self.frames[t]
        if not model.aggregate:
            rois, probs, deltas = model.detect_from_feature(key.cache, key.im_info)
        else:
            idx = self.window_indices(t, last)
            flow_of = self._flows_from(t, sorted(set(i for i in idx if i != t)))
            map_size = key.cache.shape[1:3] if self.channels_last else key.cache.shape[2:]
            zero = mx.nd.zeros((1, 2) + tuple(map_size), ctx=self.ctx)
            caches = [self.frames[i].cache for i in idx]
            flows = [flow_of.get(i, zero) if i != t else zero for i in idx]
            feat = model.aggregate_window(key.cache, caches, flows, channels_last=self.channels_last)
            rois, probs, deltas = model.detect_from_feature(feat, key.im_info)
        result = model.postprocess(rois, probs, deltas, key.im_info.asnumpy()[0])
        # drop frames no later window needs (windows of t+1.. start at t+1-K)
        for i in [i for i in self.frames if i < t + 1 - self.K]:
            del self.frames[i]
            self.next_flow.pop(i, None)
            self.prev_flow.pop(i, None)
        return t, result

    def step(self, image):
        self._add(image)
        ready = []
        if not self.model.aggregate:
            ready.append(self._emit(self.next_output, self.next_index - 1))
            self.next_output += 1
            return ready
        # frame t is complete when t + K has arrived
        while self.next_output + self.K <= self.next_index - 1:
            ready.append(self._emit(self.next_output, self.next_index - 1))
            self.next_output += 1
        return ready

    def flush(self):
        ready = []
        last = self.next_index - 1
        while self.next_output <= last:
            ready.append(self._emit(self.next_output, last))
            self.next_output += 1
        self.reset()
        return ready

    def detect_uncached(self, images, t):
        """Frame t of a whole clip computed from scratch (no cache): the reference for the window logic."""
        model = self.model
        last = len(images) - 1
        idx = self.window_indices(t, last) if model.aggregate else [t]
        prepared = {i: self.preprocess(images[i]) for i in set(idx)}
        data = {i: mx.nd.array(p[0][None], ctx=self.ctx) for i, p in prepared.items()}
        im_info = mx.nd.array(np.asarray(prepared[t][1], np.float32)[None], ctx=self.ctx)
        if not model.aggregate:
            rois, probs, deltas = model.detect_from_feature(model.frame_cache(data[t]), im_info)
        else:
            stacked = mx.nd.concat(*[data[i] for i in idx], dim=0)
            caches = model.frame_cache(stacked)
            cur = mx.nd.broadcast_to(data[t], shape=stacked.shape)
            flows = model.flow(cur, stacked)
            is_key = mx.nd.array([0.0 if i == t else 1.0 for i in idx], ctx=self.ctx).reshape((-1, 1, 1, 1))
            flows = flows * is_key
            key_cache = model.frame_cache(data[t])
            feat = model.aggregate_window(key_cache, [caches[j:j + 1] for j in range(len(idx))],
                                          [flows[j:j + 1] for j in range(len(idx))], fused=False)
            rois, probs, deltas = model.detect_from_feature(feat, im_info)
        return model.postprocess(rois, probs, deltas, im_info.asnumpy()[0])
