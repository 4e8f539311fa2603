"""TEST.MOTION: the LSTM-SSD / Looking Fast and Slow memory moved along DIS flow, and propagated small steps.

Oracles: integer flows whose warp is a numpy shift (zero fill), the gated combination written out in
numpy (as in test_lstm_ssd), DIS on a real crop translated by one feature cell, and the unwarped model
on a still scene."""
import os

import mxnet as mx
import numpy as np
import pytest

from lib.config import PROJECT_ROOT, ConfigError
from lib.dataset import read_image
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import build_detector, load_model, save_model
from lstm_ssd.streaming import AsyncStreamingDetector, MemoryMotion, StreamingDetector
from lstm_ssd_nets import tiny_model

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")
# 128 x 128 at stride 16: an 8 x 8 memory grid, enough room to shift it by a cell
BASE = ["MODEL.IMAGE_SIZE=128", "MODEL.NUM_CLASSES=2", "MODEL.LARGE.WIDTH=0.25", "MODEL.LARGE.OUTPUT_STRIDE=16",
        "MODEL.LSTM.UNITS=16", "MODEL.PYRAMID.DEPTHS=[16,8]", "MODEL.LSTM.RESIDUAL=true",
        "MODEL.LSTM.RESIDUAL_GATE=true"]
FAST_SLOW = BASE + ["MODEL.TYPE=fast_slow", "MODEL.SMALL.NET=mobilenet_v1", "MODEL.SMALL.WIDTH=0.25",
                    "MODEL.SMALL.INPUT_SIZE=64", "MODEL.SMALL.OUTPUT_STRIDE=8"]
PREVIOUS_STATE = ["MODEL.LSTM.RESIDUAL_INPUT=previous_state"]


def _shift_left(array, cells):
    """What warping by a flow of +cells in x gives: out[..., x] = in[..., x + cells], zeros past the edge."""
    out = np.zeros_like(array)
    out[..., :array.shape[-1] - cells] = array[..., cells:]
    return out


def _flow(net, dx):
    flow = np.zeros((1, 2) + net.feature_hw, np.float32)
    flow[:, 0] = dx
    return mx.nd.array(flow)


def _gated(frame, memory, net):
    """level 0 = frame + sigmoid(gate([frame, memory])) * memory, in numpy."""
    logit = np.einsum("c,bchw->bhw", net.memory_gate.weight.data().asnumpy()[0, :, 0, 0],
                      np.concatenate([frame, memory], axis=1)) + net.memory_gate.bias.data().asnumpy()[0]
    return frame + 1 / (1 + np.exp(-logit))[:, None] * memory


def _random_state(net, rng):
    return tuple(mx.nd.array(rng.normal(0, 1, s.shape)) for s in net.zero_state(1))


@pytest.mark.parametrize("memory_input", ["output", "previous_state"])
def test_a_moved_step_reads_the_state_warped_by_the_flow(memory_input):
    cfg, net = tiny_model(BASE + ["MODEL.TYPE=lstm_ssd", f"MODEL.LSTM.RESIDUAL_INPUT={memory_input}"], seed=1)
    assert net.feature_hw == (8, 8)
    rng = np.random.RandomState(2)
    x = mx.nd.array(rng.uniform(0, 255, (1, 3, 128, 128)))
    state = _random_state(net, rng)
    shifted = tuple(mx.nd.array(_shift_left(s.asnumpy(), 2)) for s in state)
    cls, box, new_state, key = net.step_moved(x, state, "large", _flow(net, 2.0))
    want_cls, want_box, want_state = net.step(x, shifted, "large")
    np.testing.assert_allclose(cls.asnumpy(), want_cls.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(box.asnumpy(), want_box.asnumpy(), rtol=1e-5, atol=1e-5)
    for got, want in zip(new_state, want_state):        # a large step writes its state at this frame
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)
    assert key is None                                   # nothing to propagate without PROPAGATE
    # no earlier frame (flow None): the plain step
    cls0, _, _, _ = net.step_moved(x, state, "large", None)
    np.testing.assert_array_equal(cls0.asnumpy(), net.step(x, state, "large")[0].asnumpy())


def test_a_propagated_small_step_is_the_key_projection_and_memory_moved_without_the_small_extractor(monkeypatch):
    cfg, net = tiny_model(FAST_SLOW + PREVIOUS_STATE, seed=3)
    rng = np.random.RandomState(4)
    key_frame, later = (mx.nd.array(rng.uniform(0, 255, (1, 3, 128, 128))) for _ in range(2))
    state = _random_state(net, rng)
    _, _, key_state, key_term = net.step_moved(key_frame, state, "large", None, None, propagate=True)
    np.testing.assert_allclose(key_term.asnumpy(), net.project(net.large(key_frame)).asnumpy(), rtol=1e-5, atol=1e-5)

    def small_must_not_run(*args):
        raise AssertionError("the small extractor ran on a propagated previous-state step")
    monkeypatch.setattr(net.small, "forward", small_must_not_run)
    cls, box, after, key_after = net.step_moved(later, key_state, "small", _flow(net, 1.0), key_term, propagate=True)
    frame = _shift_left(key_term.asnumpy(), 1)
    memory = net.memory_mix(mx.nd.array(_shift_left(key_state[1].asnumpy(), 1))).asnumpy()
    want_cls, want_box = net.head(mx.nd.array(_gated(frame, memory, net)))
    np.testing.assert_allclose(cls.asnumpy(), want_cls.asnumpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(box.asnumpy(), want_box.asnumpy(), rtol=1e-4, atol=1e-4)
    assert after is key_state and key_after is key_term   # tied to the key frame still


def test_a_small_step_reading_the_carried_state_skips_its_unread_lstm_cell(monkeypatch):
    """RESIDUAL_INPUT previous_state, no propagation: a small step is project_small(small(x)) + the gated
    correction of the (moved) state, in numpy; its own LSTM cell, whose output nothing reads, does not
    run, and the state stays the large step's."""
    cfg, net = tiny_model(FAST_SLOW + PREVIOUS_STATE, seed=9)
    rng = np.random.RandomState(10)
    x = mx.nd.array(rng.uniform(0, 255, (1, 3, 128, 128)))
    state = _random_state(net, rng)
    frame = net.project_small(net.small(x)).asnumpy()
    full_step_level0 = net.memory_step("small")(net.small(x), *(mx.nd.array(_shift_left(s.asnumpy(), 1))
                                                               for s in state))[0].asnumpy()

    def cell_must_not_run(*args):
        raise AssertionError("the small step's LSTM cell ran though nothing reads its output")
    monkeypatch.setattr(net.memory.steps["small"], "forward", cell_must_not_run)
    for flow, shift in ((None, 0), (_flow(net, 1.0), 1)):
        cls, box, after, _ = net.step_moved(x, state, "small", flow)
        memory = net.memory_mix(mx.nd.array(_shift_left(state[1].asnumpy(), shift) if shift
                                            else state[1].asnumpy())).asnumpy()
        want_cls, want_box = net.head(mx.nd.array(_gated(frame, memory, net)))
        np.testing.assert_allclose(cls.asnumpy(), want_cls.asnumpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(box.asnumpy(), want_box.asnumpy(), rtol=1e-4, atol=1e-4)
        assert after is state
    # the same level 0 as the whole residual step (cell included) computes
    np.testing.assert_allclose(_gated(frame, net.memory_mix(mx.nd.array(_shift_left(state[1].asnumpy(), 1))).asnumpy(),
                                      net), full_step_level0, rtol=1e-4, atol=1e-4)


def test_a_propagated_small_step_reading_the_output_runs_the_small_extractor_on_the_moved_state():
    cfg, net = tiny_model(FAST_SLOW, seed=5)
    rng = np.random.RandomState(6)
    key_frame, later = (mx.nd.array(rng.uniform(0, 255, (1, 3, 128, 128))) for _ in range(2))
    _, _, key_state, key_term = net.step_moved(key_frame, _random_state(net, rng), "large", None, None, True)
    cls, _, after, _ = net.step_moved(later, key_state, "small", _flow(net, 1.0), key_term, propagate=True)
    moved = tuple(mx.nd.array(_shift_left(s.asnumpy(), 1)) for s in key_state)
    out, _, _ = net.memory.steps["small"](net.small(later), *moved)
    level0 = _gated(_shift_left(key_term.asnumpy(), 1), net.memory_mix(out).asnumpy(), net)
    np.testing.assert_allclose(cls.asnumpy(), net.head(mx.nd.array(level0))[0].asnumpy(), rtol=1e-4, atol=1e-4)
    assert after is key_state


@pytest.fixture(scope="module")
def crop():
    """128 x 160 of a real speedtrap frame (road, trees, a sign), translated below by whole cells."""
    return np.ascontiguousarray(read_image(os.path.join(SPEEDTRAP, "images", "frame150.jpg"))[300:428, 300:460])


def test_the_memory_flow_points_from_the_current_frame_back_to_the_memory_frame(crop):
    cfg = lstm_config.load(None, BASE + ["MODEL.TYPE=lstm_ssd", "MODEL.IMAGE_SIZE=[128, 160]",
                                         "TEST.MOTION.FLOW=dis", "TEST.MOTION.PRESET=medium", "TEST.MOTION.SCALE=1.0"])
    net = build_detector(cfg)
    motion = MemoryMotion(net, cfg.TEST.MOTION)
    assert motion.flow(motion.dis.prepare(crop), mx.cpu()) is None        # nothing remembered yet
    motion.memory_frame = motion.dis.prepare(crop)
    # the scene moved 16 px (one cell) to the right: what is at x now was at x - 16 in the memory frame
    current = np.roll(crop, 16, axis=1)
    flow = motion.flow(motion.dis.prepare(current), mx.cpu()).asnumpy()[0]
    assert flow.shape == (2,) + net.feature_hw == (2, 8, 10)
    interior = flow[:, 2:-2, 2:-2]                       # np.roll wraps: the edge cells have no true flow
    np.testing.assert_allclose(np.median(interior[0]), -1.0, atol=0.1)
    np.testing.assert_allclose(np.median(interior[1]), 0.0, atol=0.1)


def test_training_flows_point_from_each_frame_to_the_frame_that_wrote_its_state(crop):
    """TRAIN.MOVE_STATE: in a clip moving half a cell (8 px) right per frame, a step reads the state of
    the last large step: one frame back after a large step, two after a small one (which writes no
    state); the first step has no flow. Hand-computed flows in cells, not the test-time code path."""
    over = FAST_SLOW + PREVIOUS_STATE + ["MODEL.IMAGE_SIZE=[128, 160]", "MODEL.SMALL.INPUT_SIZE=[64, 80]",
                                         "TEST.MOTION.FLOW=dis", "TEST.MOTION.PRESET=medium", "TEST.MOTION.SCALE=1.0"]
    cfg = lstm_config.load(None, over)
    net = build_detector(cfg)
    motion = MemoryMotion(net, cfg.TEST.MOTION)
    clip = np.stack([np.roll(crop, 8 * t, axis=1) for t in range(4)])[None]        # (1, 4, H, W, 3)
    flows = motion.clip_flows(clip, ["large", "small", "large", "large"], mx.cpu())
    assert flows[0] is None
    for t, cells in ((1, -0.5), (2, -1.0), (3, -0.5)):
        flow = flows[t].asnumpy()[0]
        assert flow.shape == (2,) + net.feature_hw
        interior = flow[:, 2:-2, 3:-3]                   # np.roll wraps: the edge cells have no true flow
        np.testing.assert_allclose(np.median(interior[0]), cells, atol=0.15, err_msg=f"step {t}")
        np.testing.assert_allclose(np.median(interior[1]), 0.0, atol=0.15, err_msg=f"step {t}")


def test_the_unrolled_graph_moves_the_state_before_each_step_as_step_moved_does():
    """LSTMSSD.forward with flows = the same steps through step_moved one by one; without flows (or at a
    step whose flow is None) the plain steps."""
    cfg, net = tiny_model(BASE + ["MODEL.TYPE=lstm_ssd"] + PREVIOUS_STATE, seed=3)
    rng = np.random.RandomState(4)
    clip = mx.nd.array(rng.uniform(0, 255, (1, 3, 3, 128, 128)))
    state = _random_state(net, rng)
    flows = [None, _flow(net, 1.0), _flow(net, -2.0)]
    cls, box, final = net(clip, state, None, None, flows)
    want_state, want_cls = state, []
    for t in range(3):
        c, _, want_state, _ = net.step_moved(clip[:, t], want_state, "large", flows[t])
        want_cls.append(c.asnumpy())
    np.testing.assert_allclose(cls.asnumpy(), np.stack(want_cls, axis=1), rtol=1e-5, atol=1e-5)
    for got, want in zip(final, want_state):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)
    unmoved = net(clip, state, None, None, [None] * 3)[0].asnumpy()
    np.testing.assert_array_equal(unmoved, net(clip, state)[0].asnumpy())
    assert np.abs(unmoved - cls.asnumpy()).max() > 1e-3                   # the flows changed something
    with pytest.raises(ValueError, match="flows has 2 entries for 3 frames"):
        net(clip, state, None, None, flows[:2])


def test_streaming_with_motion_on_a_still_scene_equals_streaming_without_and_resumes_exactly(crop, tmp_path):
    over = FAST_SLOW + PREVIOUS_STATE + ["MODEL.IMAGE_SIZE=[128, 160]", "MODEL.SMALL.INPUT_SIZE=[64, 80]"]
    cfg, net = tiny_model(over, seed=7)
    moving = lstm_config.load(None, over + ["TEST.MOTION.FLOW=dis"])
    plain = StreamingDetector(net, cfg, policy="fixed", tau=2, hybridize=False)
    moved = StreamingDetector(net, moving, policy="fixed", tau=2, hybridize=False)
    # a still camera: DIS finds no motion, so moving the memory changes nothing
    for _ in range(4):
        (_, a), = plain.step(crop)
        (_, b), = moved.step(crop)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-4)
    # a moving scene: save, step on, restore, step again -> identical outputs (the remembered frame and
    # the key projection are part of the saved state)
    propagating = StreamingDetector(net, lstm_config.load(None, over + ["TEST.MOTION.FLOW=dis",
                                                                        "TEST.MOTION.PROPAGATE=true"]),
                                    policy="fixed", tau=2, hybridize=False)
    frames = [np.roll(crop, 4 * t, axis=1) for t in range(6)]
    for frame in frames[:2]:
        propagating.step(frame)
    propagating.save_state(str(tmp_path / "state.npz"))
    first = [propagating.step(frame)[0][1][1] for frame in frames[2:]]
    propagating.load_state(str(tmp_path / "state.npz"))
    again = [propagating.step(frame)[0][1][1] for frame in frames[2:]]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="step\\(frame\\)"):
        propagating.step_raw(mx.nd.zeros((1, 3, 128, 160)))


FRAME_MODEL = [o for o in BASE if "RESIDUAL" not in o] + ["MODEL.TYPE=ssdlite"]


@pytest.mark.parametrize("over,match", [
    (BASE + ["MODEL.TYPE=lstm_ssd", "TEST.MOTION.FLOW=farneback"], "TEST.MOTION.FLOW must be"),
    (BASE + ["MODEL.TYPE=lstm_ssd", "TEST.MOTION.PROPAGATE=true"], "PROPAGATE .*needs TEST.MOTION.FLOW dis"),
    (FRAME_MODEL + ["TEST.MOTION.FLOW=dis"], "ssdlite has none"),
    (BASE + ["MODEL.TYPE=lstm_ssd", "TEST.MOTION.FLOW=dis", "TEST.MOTION.PRESET=slow"], "TEST.MOTION: DIS preset"),
])
def test_motion_config_mistakes_are_one_line_errors(over, match):
    cfg = lstm_config.load(None, over)
    with pytest.raises(ConfigError, match=match):
        StreamingDetector(build_detector(cfg), cfg, hybridize=False)


def test_propagation_needs_the_residual_memory_and_async_refuses_motion():
    plain = [o for o in FAST_SLOW if "RESIDUAL" not in o]
    cfg = lstm_config.load(None, plain + ["TEST.MOTION.FLOW=dis", "TEST.MOTION.PROPAGATE=true"])
    with pytest.raises(ConfigError, match="PROPAGATE needs MODEL.LSTM.RESIDUAL true"):
        StreamingDetector(build_detector(cfg), cfg, hybridize=False)
    cfg = lstm_config.load(None, FAST_SLOW + ["TEST.MOTION.FLOW=dis"])
    with pytest.raises(ConfigError, match="synchronous"):
        AsyncStreamingDetector(build_detector(cfg), cfg, hybridize=False)


def test_phase_assemble_saves_the_model_built_from_the_weights_without_training(tmp_path):
    from experiments.lstm_ssd.train_test import main
    _, source = tiny_model(BASE + ["MODEL.TYPE=lstm_ssd"] + PREVIOUS_STATE, seed=9)
    weights = save_model(source, str(tmp_path / "lstm_ssd.params"))
    cfg_path = tmp_path / "assemble.yaml"
    cfg_path.write_text("PHASE: [assemble]\n")
    over = [o for o in FAST_SLOW + PREVIOUS_STATE] + [f"MODEL.WEIGHTS={weights}", f"OUTPUT_DIR={tmp_path / 'run'}"]
    assert main(["--cfg", str(cfg_path), "--set", *over]) == 0
    assembled = load_model(lstm_config.load(str(cfg_path), over), str(tmp_path / "run" / "model.params"))
    got, want = assembled._collect_params_with_prefix(), source._collect_params_with_prefix()
    shared = [n for n in want if n in got]
    assert len(shared) == len(want)                      # every part of the LSTM-SSD is in the fast_slow model
    for name in shared:
        np.testing.assert_array_equal(got[name].data().asnumpy(), want[name].data().asnumpy())
    assert main(["--cfg", str(cfg_path), "--set", "PHASE=[assemble, train]", *over]) == 2


def test_exported_parts_chain_into_the_propagated_step(tmp_path):
    """A device loop from the exported graphs: warp (c, h) and the key projection with the flow (MXNet's
    built-in warp here), combine, head -- equals step_moved; parts.json records the motion settings."""
    import json

    from lstm_ssd.export import export_parts, load_parts
    cfg, net = tiny_model(FAST_SLOW + PREVIOUS_STATE + ["TEST.MOTION.FLOW=dis", "TEST.MOTION.PROPAGATE=true"], seed=11)
    export_parts(net, str(tmp_path / "lfs"), motion=cfg.TEST.MOTION)
    meta = json.loads((tmp_path / "lfs-parts.json").read_text())
    assert meta["motion"]["FLOW"] == "dis" and meta["motion"]["PROPAGATE"] and meta["memory_input"] == "previous_state"
    parts = load_parts(str(tmp_path / "lfs"))
    rng = np.random.RandomState(12)
    key_frame, later = (mx.nd.array(rng.uniform(0, 255, (1, 3, 128, 128))) for _ in range(2))
    state = _random_state(net, rng)
    flow = mx.nd.array(rng.uniform(-1.5, 1.5, (1, 2) + net.feature_hw))
    _, _, key_state, key_term = net.step_moved(key_frame, state, "large", flow, None, propagate=True)
    want_cls, want_box, _, _ = net.step_moved(later, key_state, "small", flow, key_term, propagate=True)

    def warp(x):
        return mx.nd.BilinearSampler(x, mx.nd.GridGenerator(flow, transform_type="warp"))
    exported_key = parts["project"](parts["extractor_large"](key_frame))
    np.testing.assert_allclose(exported_key.asnumpy(), key_term.asnumpy(), rtol=1e-4, atol=1e-4)
    cls, box = parts["head"](parts["combine"](warp(exported_key), warp(key_state[1])))
    np.testing.assert_allclose(cls.asnumpy(), want_cls.asnumpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(box.asnumpy(), want_box.asnumpy(), rtol=1e-4, atol=1e-4)
