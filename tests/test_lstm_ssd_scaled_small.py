"""MODEL.SMALL.NET large: Looking Fast and Slow whose small steps run the large extractor's architecture on
smaller frames, with its very weights (SHARE) or with a copy of them that distillation can fit.

Oracles: the large step itself (a shared small step on full-size frames is the large step that does not
write the memory), the backbone run by hand on frames resized by hand, the parameter names of the plain
LSTM-SSD (a shared model has no weights of its own), and gradients read off the shared parameters."""
import mxnet as mx
import numpy as np
import pytest

from lib.config import ConfigError
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import save_model
from lstm_ssd.streaming import StreamingDetector
from lstm_ssd.train import DistillTask, assemble_model
from lstm_ssd_nets import tiny_model

# 128 x 160 at stride 16: an 8 x 10 grid; the small steps see 64 x 80 frames (a 4 x 5 grid, resized up)
BASE = ["INPUT.SIZE=[128, 160]", "MODEL.NUM_CLASSES=2", "MODEL.LARGE.WIDTH=0.25",
        "MODEL.LARGE.OUTPUT_STRIDE=16", "MODEL.LSTM.UNITS=16", "MODEL.PYRAMID.DEPTHS=[16,8]",
        "MODEL.LSTM.RESIDUAL=true", "MODEL.LSTM.RESIDUAL_GATE=true", "MODEL.LSTM.RESIDUAL_INPUT=previous_state"]
SHARED = BASE + ["MODEL.TYPE=fast_slow", "MODEL.SMALL.NET=large", "MODEL.SMALL.INPUT_SIZE=[64, 80]"]
COPIED = SHARED + ["MODEL.SMALL.SHARE=false"]


def _frames(seed, n=1):
    return mx.nd.array(np.random.RandomState(seed).uniform(0, 255, (n, 3, 128, 160)))


def _state(net, seed):
    rng = np.random.RandomState(seed)
    return tuple(mx.nd.array(rng.normal(0, 1, (1,) + net.state_shape)) for _ in range(2))


def test_a_shared_model_has_exactly_the_lstm_ssd_weights():
    _, shared = tiny_model(SHARED)
    _, lstm_ssd = tiny_model(BASE + ["MODEL.TYPE=lstm_ssd"])
    assert sorted(shared._collect_params_with_prefix()) == sorted(lstm_ssd._collect_params_with_prefix())
    assert shared.small is None and shared.project_small is None
    assert shared.extractor("small").feature_hw == shared.large.feature_hw == (8, 10)


def test_a_shared_small_step_on_full_size_frames_is_the_large_step_without_writing_the_state():
    _, net = tiny_model(SHARED[:-1] + ["MODEL.SMALL.INPUT_SIZE=[128, 160]"], seed=1)
    frames, state = _frames(2), _state(net, 3)
    large_cls, large_box, large_state = net.step(frames, state, "large")
    small_cls, small_box, small_state = net.step(frames, state, "small")
    np.testing.assert_allclose(small_cls.asnumpy(), large_cls.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(small_box.asnumpy(), large_box.asnumpy(), rtol=1e-5, atol=1e-5)
    assert small_state is state and large_state is not state


def test_a_shared_small_step_runs_the_large_backbone_on_the_frame_resized_by_hand():
    _, net = tiny_model(SHARED, seed=4)
    frames = _frames(5)
    # by hand: resize the frame to 64 x 80, the large MobileNet on [-1, 1] inputs (4 x 5), resize to 8 x 10
    small_frame = mx.nd.contrib.BilinearResize2D(frames, height=64, width=80)
    own = net.large.backbone(small_frame / 127.5 - 1.0)
    assert own.shape[-2:] == (4, 5)
    want = mx.nd.contrib.BilinearResize2D(own, height=8, width=10)
    np.testing.assert_allclose(net.extractor("small")(frames).asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)
    # the whole small step: the large projection and the gated correction from the carried h, the head
    state = _state(net, 6)
    level0 = net.combine_block()(net.project(want), state[1])
    cls, box = net.head(level0)
    got_cls, got_box, _ = net.step(frames, state, "small")
    np.testing.assert_allclose(got_cls.asnumpy(), cls.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_box.asnumpy(), box.asnumpy(), rtol=1e-5, atol=1e-5)


def test_training_a_shared_small_step_trains_the_large_backbone():
    _, net = tiny_model(SHARED, seed=7)
    frames, state = _frames(8), _state(net, 9)
    params = net.large.collect_params()
    for p in params.values():
        p.zero_grad()
    with mx.autograd.record():
        cls, box, _ = net.step(frames, state, "small")
        loss = (cls ** 2).sum() + (box ** 2).sum()
    loss.backward()
    grads = [float(p.grad().abs().sum().asscalar()) for p in params.values() if p.grad_req != "null"]
    assert sum(g > 0 for g in grads) == len(grads)


def test_a_hybridized_stream_of_a_shared_model_matches_the_plain_steps():
    cfg, net = tiny_model(SHARED, seed=10)
    frames = [_frames(11 + t).asnumpy()[0].transpose(1, 2, 0).astype(np.uint8) for t in range(4)]
    plain = StreamingDetector(net, cfg, policy="fixed", tau=2, hybridize=False)
    want = [plain.step(f)[0][1] for f in frames]
    _, again = tiny_model(SHARED, seed=10)
    fast = StreamingDetector(again, cfg, policy="fixed", tau=2, hybridize=True)
    got = [fast.step(f)[0][1] for f in frames]
    assert [len(w[1]) for w in want] == [len(g[1]) for g in got]
    for w, g in zip(want, got):
        np.testing.assert_allclose(g[1], w[1], rtol=1e-3, atol=1e-4)      # scores
        np.testing.assert_allclose(g[0], w[0], rtol=1e-3, atol=1e-2)      # boxes in pixels


def test_a_copied_small_extractor_starts_as_the_shared_one_where_the_weights_give_none(tmp_path):
    cfg, lstm_ssd = tiny_model(BASE + ["MODEL.TYPE=lstm_ssd"], seed=12)
    weights = save_model(lstm_ssd, str(tmp_path / "lstm_ssd.params"))
    copied = assemble_model(lstm_config.load(None, COPIED + [f"MODEL.WEIGHTS={weights}"]), [mx.cpu()],
                            log=lambda *_: None)
    shared = assemble_model(lstm_config.load(None, SHARED + [f"MODEL.WEIGHTS={weights}"]), [mx.cpu()],
                            log=lambda *_: None)
    frames, state = _frames(13), _state(copied, 14)
    for a, b in zip(copied.step(frames, state, "small")[:2], shared.step(frames, state, "small")[:2]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)      # cls, box
    # its own parameters: changing the copy leaves the large extractor as it was
    stem = copied.small.backbone.collect_params()
    first = next(p for p in stem.values() if p.name.endswith("weight"))
    large_before = copied.large(frames).asnumpy()
    first.set_data(first.data() * 0)
    np.testing.assert_array_equal(copied.large(frames).asnumpy(), large_before)
    # a trained small extractor in MODEL.WEIGHTS is kept, not overwritten by the copy
    trained = save_model(copied, str(tmp_path / "fast_slow.params"))
    again = assemble_model(lstm_config.load(None, COPIED + [f"MODEL.WEIGHTS={trained}"]), [mx.cpu()],
                           log=lambda *_: None)
    name = next(n for n, p in copied._collect_params_with_prefix().items() if p is first)
    assert name.startswith("small.")
    assert float(again._collect_params_with_prefix()[name].data().abs().sum().asscalar()) == 0.0


def test_distillation_needs_a_small_extractor_of_its_own_and_a_copy_cannot_be_pruned():
    cfg, net = tiny_model(SHARED)
    with pytest.raises(ConfigError, match="MODEL.SMALL.NET large is the large one"):
        DistillTask(net, cfg)
    cfg, copied = tiny_model(COPIED)
    DistillTask(copied, cfg)        # accepted: the copy and its projection train
    with pytest.raises(ValueError, match="SHARE false"):
        copied.prune_groups()
    assert len(net.prune_groups()) == len(tiny_model(BASE + ["MODEL.TYPE=lstm_ssd"])[1].prune_groups())
