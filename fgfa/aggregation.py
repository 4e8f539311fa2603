"""Flow-guided aggregation with cosine adaptive weights.

Each frame's cache is concat(feature, embedding). Caches of the T frames aggregated for one key
frame are warped to the key frame with their flows (the reference test graph warps feature and
embedding together); the weight of frame t at each pixel is the cosine similarity between its
warped embedding and the key frame's embedding times a scale (1 in the reference; NETWORK.AGGREGATE_SCALE),
softmax-normalised over the T frames; the output is the weighted sum of the warped features. With
``quality`` the cache's last channel is a logit of the frame's own, warped with it and added before the
softmax (NETWORK.AGGREGATE_QUALITY: a blurred frame can lose weight however similar it looks).
"""
from mxnet.gluon import nn

from .operators import flow_warp


class FlowAggregator(nn.HybridBlock):
    """(key_embed (N,E,h,w), caches (N*T, C+E, h, w), flows (N*T, 2, h, w), scale (1,)) -> (N, C, h, w).

    ``scale`` multiplies the cosines before the softmax (an input, so a learned scale gets its gradient).

    ``caches``/``flows`` are ordered key-major: rows n*T .. n*T+T-1 belong to key frame n.
    Also returns the weights (N, T, h, w) for inspection.
    """

    def __init__(self, feat_channels, num_frames, builtin_ops=None, quality=False, **kwargs):
        super().__init__(**kwargs)
        self.feat_channels = feat_channels
        self.num_frames = num_frames
        self.quality = quality
        self.builtin_ops = builtin_ops

    def hybrid_forward(self, F, key_embed, caches, flows, scale):
        warped = flow_warp(F, caches, flows, builtin=self.builtin_ops)
        feat = F.slice_axis(warped, axis=1, begin=0, end=self.feat_channels)
        embed = F.slice_axis(warped, axis=1, begin=self.feat_channels, end=-1 if self.quality else None)
        if self.quality:
            logit = F.reshape(F.slice_axis(warped, axis=1, begin=-1, end=None), shape=(-4, -1, self.num_frames, -2))
            key_embed = F.slice_axis(key_embed, axis=1, begin=0, end=-1)
        embed = F.L2Normalization(embed, mode="channel")
        key = F.L2Normalization(key_embed, mode="channel")
        embed = F.reshape(embed, shape=(-4, -1, self.num_frames, -2))       # (N,T,E,h,w)
        cosine = F.sum(F.broadcast_mul(embed, F.expand_dims(key, axis=1)), axis=2)  # (N,T,h,w)
        logits = F.broadcast_mul(cosine, F.reshape(scale, shape=(1, 1, 1, 1)))
        if self.quality:
            logits = logits + F.reshape(logit, shape=(0, 0, -3, -2))   # (N,T,1,h,w) -> (N,T,h,w)
        weights = F.softmax(logits, axis=1)
        feat = F.reshape(feat, shape=(-4, -1, self.num_frames, -2))         # (N,T,C,h,w)
        out = F.sum(F.broadcast_mul(feat, F.expand_dims(weights, axis=2)), axis=1)
        return out, weights
