"""Streaming speed of Looking Fast and Slow (large-only, small-only, interleaved) and LSTM-SSD on CPU,
against the SSDLite frame baseline and gluoncv's ssd_512_mobilenet1.0, on this machine.

    python -m bench.lstm_ssd            # paper sizes: LFS at 320 (MobileNetV2 x1.4 / x0.35 at 160),
                                        # LSTM-SSD and SSDLite MobileNetV1 x1.0 at 256, gluoncv SSD 512
    python -m bench.lstm_ssd --quick    # tiny sizes, few repeats (a smoke run)
    [--frames N] [--tau 9] [--json OUT.json] [--with-postprocess]

Run it as a module from the project root: as a script, this file's name would shadow the lstm_ssd
package. Every network is hybridized for inference with the MKLDNN backend
(lib.runtime.hybridize_for_inference), batch 1, random frames and random weights (speed does not
depend on them). Steady state: warm-up steps (graph building) are excluded. Each row reports ms per
frame, fps, params and MACs per frame. Interleaved = large extractor every tau + 1 frames (paper
tau = 9), the small one otherwise, state read-not-written by the small one. Goal from the issue:
interleaved >= 70 fps (the paper's figure on a Pixel 3, quantised). The "stream" rows time whole
streaming steps (resize of 1280x720 frames, DIS flow, decoding + NMS) of the speedtrap Lite0 models
with and without the memory moved along the motion (TEST.MOTION), on a panning texture, as ratios to
the plain LSTM-SSD stream; "tracked" rows move the last frame's boxes along DIS flow on small steps
(TEST.TRACK), as their probe rows in lstm_ssd/README.md.
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.lstm_ssd [--quick] "
                     "(as a script, bench/lstm_ssd.py shadows the lstm_ssd package)")

import argparse  # noqa: E402
import json
import os
import time

import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx
import numpy as np

from lib.config import PROJECT_ROOT
from lib.runtime import hybridize_for_inference, threads
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import build_detector
from lstm_ssd.flops import count_macs, count_params

CFG_DIR = os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "cfgs")
FULL = {
    "lfs": ("imagenet_vid_fast_slow.yaml", []),
    "lstm_ssd": ("imagenet_vid_lstm_ssd_mobilenet_v1.yaml", []),
    "ssdlite": ("imagenet_vid_ssdlite_mobilenet_v1.yaml", []),
    "gluoncv_size": 512,
}
QUICK = {
    "lfs": ("imagenet_vid_fast_slow.yaml", ["INPUT.SIZE=96", "MODEL.SMALL.INPUT_SIZE=48",
                                             "MODEL.LARGE.WIDTH=0.35", "MODEL.LSTM.UNITS=32"]),
    "lstm_ssd": ("imagenet_vid_lstm_ssd_mobilenet_v1.yaml", ["INPUT.SIZE=96", "MODEL.LARGE.WIDTH=0.25",
                                                              "MODEL.LSTM.UNITS=32"]),
    "ssdlite": ("imagenet_vid_ssdlite_mobilenet_v1.yaml", ["INPUT.SIZE=96", "MODEL.LARGE.WIDTH=0.25",
                                                            "MODEL.LSTM.UNITS=32"]),
    "gluoncv_size": 128,
}


def build(cfg_name, overrides):
    cfg = lstm_config.load(os.path.join(CFG_DIR, cfg_name), overrides)
    mx.random.seed(0)
    net = build_detector(cfg)
    net(mx.nd.zeros((1, len(net.extractor_names), 3) + net.image_hw), None, list(net.extractor_names))
    return cfg, net


def time_stream(net, schedule, frames, warmup, postprocess=None):
    """Median-free steady-state timing: total seconds of ``frames`` streaming steps after warm-up."""
    for part in net.parts().values():
        hybridize_for_inference(part)
    rng = np.random.RandomState(0)
    inputs = [mx.nd.array(rng.uniform(0, 255, (1, 3) + net.image_hw).astype(np.float32)) for _ in range(4)]
    state = net.zero_state(1)
    for t in range(warmup):
        for e in net.extractor_names:     # build every extractor's graph before timing
            cls, box, _ = net.step(inputs[t % 4], state, e)
    mx.nd.waitall()
    t0 = time.perf_counter()
    for t in range(frames):
        cls, box, state = net.step(inputs[t % 4], state, schedule(t))
        if postprocess is not None:
            postprocess(cls, box)
        else:
            cls.wait_to_read()
            box.wait_to_read()
    mx.nd.waitall()
    return time.perf_counter() - t0


def bench_gluoncv(size, frames, warmup):
    import gluoncv
    net = gluoncv.model_zoo.get_model("ssd_512_mobilenet1.0_voc", pretrained=False, pretrained_base=False)
    net.initialize()
    hybridize_for_inference(net)
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32))
    for _ in range(warmup):
        [o.wait_to_read() for o in net(x)]
    t0 = time.perf_counter()
    for _ in range(frames):
        [o.wait_to_read() for o in net(x)]
    seconds = time.perf_counter() - t0
    params = sum(p.data().size for n, p in net.collect_params().items() if "running" not in n)
    return seconds, int(params)


MOTION_CFGS = {"lstm_ssd": "speedtrap47_lstm_ssd_lite0_gated_previous_state_degrade.yaml",
               "lfs": "speedtrap47_fast_slow_lite0_propagate.yaml"}
MOTION_QUICK = ["INPUT.SIZE=[72, 128]", "MODEL.SMALL.INPUT_SIZE=[36, 64]"]


def moving_frames(count, height, width, step=4, seed=0):
    """A smooth random texture panning ``step`` px per frame: DIS has real motion to follow."""
    import cv2
    rng = np.random.RandomState(seed)
    texture = cv2.GaussianBlur(rng.randint(0, 255, (height, width + step * count, 3)).astype(np.uint8), (0, 0), 3)
    return [np.ascontiguousarray(texture[:, step * t:step * t + width]) for t in range(count)]


def bench_motion(quick, frames, warmup, tau):
    """Whole streaming steps (resize, extractor(s), memory, head, decoding + NMS) of the speedtrap Lite0
    models at 360x640 from 1280x720 frames, with and without TEST.MOTION, side by side."""
    from lstm_ssd.streaming import StreamingDetector
    height, width = (144, 256) if quick else (720, 1280)
    video = moving_frames(warmup + frames, height, width)
    # random weights: a high score threshold keeps NMS from timing a flood of random boxes
    common = (MOTION_QUICK if quick else []) + ["TEST.SCORE_THRESH=0.99", "PRETRAINED=", "MODEL.WEIGHTS="]
    tracked = ["TEST.TRACK.ENABLED=true"]
    # small steps that run a copy of the large extractor on half-size frames (MODEL.SMALL.NET large), the
    # memory moved along DIS flow to every step (speedtrap47_degraded_fast_slow_lite0_scaled_copy_distill.yaml)
    scaled = ["TEST.MOTION.FLOW=dis", "TEST.MOTION.PROPAGATE=false", "MODEL.SMALL.NET=large",
              "MODEL.SMALL.SHARE=false"] + ([] if quick else ["MODEL.SMALL.INPUT_SIZE=[180, 320]"])
    rows = [("lstm-ssd", "lstm_ssd", [], "large", tau),
            ("lstm-ssd moved memory", "lstm_ssd", ["TEST.MOTION.FLOW=dis"], "large", tau),
            (f"lfs tau={tau}", "lfs", ["TEST.MOTION.FLOW=", "TEST.MOTION.PROPAGATE=false"], "fixed", tau),
            (f"lfs tau={tau} propagated", "lfs", [], "fixed", tau),
            (f"lfs tau={tau} tracked", "lfs", tracked, "fixed", tau),
            (f"lfs tau={tau} small = large at half size", "lfs", scaled, "fixed", tau),
            ("lfs tau=1 tracked", "lfs", tracked, "fixed", 1),
            # the first row again: how far the same stream drifts within one run (the ratios are to the first)
            ("lstm-ssd, again", "lstm_ssd", [], "large", tau)]
    out = []
    for label, key, over, policy, row_tau in rows:
        cfg, net = build(MOTION_CFGS[key], common + over)
        stream = StreamingDetector(net, cfg, policy=policy, tau=row_tau)
        for frame in video[:warmup]:
            stream.step(frame)
        stream.reset()
        t0 = time.perf_counter()
        for frame in video[warmup:]:
            stream.step(frame)
        mx.nd.waitall()
        out.append((f"stream {label}", time.perf_counter() - t0, count_params(net), cfg.INPUT.SIZE))
    return out


def bench_fusion(quick, frames, warmup, tau, boxes=10):
    """TEST.FUSE's own cost per frame (DIS flow, moving and merging the boxes): a runner that returns the
    same ``boxes`` detections on every 1280x720 frame, alone and wrapped in the box-level memory; then the
    same with a stream's whole step (random weights, as the "stream" rows) run before it returns them, so
    the flow runs right after MXNet's OpenMP work, as inside an evaluation: the lstm-ssd stream, and
    Looking Fast and Slow at ``tau`` with small steps that detect (the distilled small extractor's rows in
    lstm_ssd/README.md). (Random weights find no box above the streaming rows' threshold, and with no box
    held there is no flow to compute: timed inside those rows it would show nothing.)"""
    from lib.streaming import FrameRunner, fused_runner
    from lstm_ssd.streaming import StreamingDetector
    height, width = (144, 256) if quick else (720, 1280)
    video = moving_frames(warmup + frames, height, width)
    rng = np.random.RandomState(0)
    corners = rng.uniform(0, 0.8, (boxes, 2)) * [width, height]
    sizes = rng.uniform(0.05, 0.2, (boxes, 2)) * [width, height]
    dets = (np.hstack([corners, corners + sizes]).astype(np.float32), rng.uniform(0.3, 0.9, boxes).astype(np.float32),
            np.zeros(boxes, np.int64))
    cfg = lstm_config.load(None, ["TEST.FUSE.ENABLED=true"])
    common = (MOTION_QUICK if quick else []) + ["TEST.SCORE_THRESH=0.99", "PRETRAINED=", "MODEL.WEIGHTS="]
    streams = {}
    for key, over, policy in (("lstm_ssd", [], "large"),
                              ("lfs", ["TEST.MOTION.FLOW=", "TEST.MOTION.PROPAGATE=false"], "fixed")):
        stream_cfg, net = build(MOTION_CFGS[key], common + over)
        streams[key] = StreamingDetector(net, stream_cfg, policy=policy, tau=tau)

    def then_boxes(stream):
        def detect(image):
            stream.step(image)
            return dets
        return detect
    out = []
    for label, stream, detect in (("frame runner (fixed boxes)", None, lambda image: dets),
                                  ("lstm-ssd stream, then fixed boxes", streams["lstm_ssd"],
                                   then_boxes(streams["lstm_ssd"])),
                                  (f"lfs tau={tau} stream, then fixed boxes", streams["lfs"],
                                   then_boxes(streams["lfs"]))):
        for runner_label, runner in ((label, FrameRunner(detect)),
                                     (f"the same + box fusion ({boxes} boxes)", fused_runner(FrameRunner(detect),
                                                                                          cfg.TEST))):
            if stream is not None:
                stream.reset()
            runner.reset()
            for frame in video[:warmup]:
                runner.step(frame)
            t0 = time.perf_counter()
            for frame in video[warmup:]:
                runner.step(frame)
            mx.nd.waitall()
            out.append((runner_label, time.perf_counter() - t0, [height, width]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    ap.add_argument("--frames", type=int, default=None, help="timed frames per row (default 100, quick 10)")
    ap.add_argument("--tau", type=int, default=9)
    ap.add_argument("--json", default=None, help="write the rows as JSON")
    ap.add_argument("--with-postprocess", action="store_true", help="include decoding + NMS in the timing")
    args = ap.parse_args(argv)
    settings = QUICK if args.quick else FULL
    frames = args.frames or (10 if args.quick else 100)
    warmup = 2 if args.quick else 5
    rows = []

    def add(name, seconds, params, macs, size, note=""):
        rows.append({"model": name, "input": size, "ms_per_frame": 1000 * seconds / frames,
                     "fps": frames / seconds, "params": params, "macs_per_frame": macs, "note": note})
        r = rows[-1]
        print(f"{name:<36} {str(size):>10} {r['ms_per_frame']:>9.2f} ms {r['fps']:>8.1f} fps "
              f"{params / 1e6:>7.2f} M params {macs / 1e9:>7.3f} GMACs  {note}", flush=True)

    print(f"threads {threads()}, MKLDNN {mx.runtime.Features().is_enabled('MKLDNN')}, {frames} timed frames")
    cfg, lfs = build(*settings["lfs"])
    post = None
    if args.with_postprocess:
        post = lambda c, b: lfs.postprocess(c, b, [lfs.image_hw[1]], [lfs.image_hw[0]], cfg.TEST)  # noqa: E731
    params = count_params(lfs)
    macs = {e: count_macs(lfs, e) for e in lfs.extractor_names}
    size = cfg.INPUT.SIZE
    add("lfs large only", time_stream(lfs, lambda t: "large", frames, warmup, post), params, macs["large"], size)
    add("lfs small only", time_stream(lfs, lambda t: "small", frames, warmup, post), params, macs["small"], size)
    every = args.tau + 1
    mean_macs = (macs["large"] + args.tau * macs["small"]) / every
    add(f"lfs interleaved tau={args.tau}",
        time_stream(lfs, lambda t: "large" if t % every == 0 else "small", frames, warmup, post),
        params, int(mean_macs), size, "goal >= 70 fps")
    for key, label in (("lstm_ssd", "lstm-ssd (A) mobilenet_v1"), ("ssdlite", "ssdlite frame baseline v1")):
        cfg_k, net = build(*settings[key])
        post_k = None
        if args.with_postprocess:
            post_k = lambda c, b, n=net, c_=cfg_k: n.postprocess(c, b, [n.image_hw[1]], [n.image_hw[0]], c_.TEST)  # noqa: E731
        add(label, time_stream(net, lambda t: "large", frames, warmup, post_k), count_params(net),
            count_macs(net, "large"), cfg_k.INPUT.SIZE)
    motion_rows = bench_motion(args.quick, frames, warmup, args.tau)
    base = motion_rows[0][1]
    for label, seconds, params, size in motion_rows:
        add(label, seconds, params, 0, size, f"{base / seconds:.2f}x the lstm-ssd stream; MACs not counted")
    fusion_rows = bench_fusion(args.quick, frames, warmup, args.tau)
    for i, (label, seconds, size) in enumerate(fusion_rows):     # pairs: without, with the fusion
        extra = 1000 * (seconds - fusion_rows[i - 1][1]) / frames
        note = f"+{extra:.2f} ms per frame for the fusion" if i % 2 else ""
        if i == 5:          # fused fast-slow against the fused lstm-ssd stream, the probe's comparison
            note += f"; {fusion_rows[3][1] / seconds:.2f}x the fused lstm-ssd stream"
        add(label, seconds, 0, 0, size, note)
    g_size = settings["gluoncv_size"]
    seconds, params = bench_gluoncv(g_size, frames, warmup)
    add("gluoncv ssd_512_mobilenet1.0", seconds, params, 0, g_size, "MACs not counted; includes its NMS")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": threads(), "frames": frames, "quick": args.quick, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
