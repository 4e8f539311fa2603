"""Per-frame latency of the R-FCN frame baseline vs FGFA with the cached window, on CPU.

    python -m bench.fgfa            # 600x1000 ResNet-101 (paper config, a light variant, chained
                                    # flows) and the small CPU config (speedtrap frames; + chained)
    python -m bench.fgfa --quick    # tiny sizes, few repeats (a smoke run)
    python -m bench.fgfa --settings cpu_lite0,cpu_lite0_dis   # FlowNet vs DIS flow (NETWORK.FLOW) at 720x1280
    [--frames N] [--json OUT.json] [--settings paper,cpu] [--no-hybridize]
    python -m bench.fgfa --int8-ablation paper   # float vs int8 variants of one frame baseline

Run it as a module from the project root: as a script, this file's name would shadow the fgfa package.

Both models are hybridized for inference (lib.runtime.hybridize_for_inference: MKLDNN backend on CPU)
and run through fgfa.window.WindowRunner, the same streaming code the test phase uses, on random
frames (weights are random too: latency does not depend on them, except for the number of boxes
reaching the final NMS). Steady state: the first window (and MKLDNN graph building) is excluded.
FGFA costs one backbone per frame (features and embeddings are cached) plus 2K flows, the
aggregation and the head; the table also breaks this down. Goals from the issue: baseline ResNet-101
<= 400 ms/frame on 2 cores, FGFA <= 1.5x the baseline.
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.fgfa [--quick] "
                     "(as a script, bench/fgfa.py shadows the fgfa package)")

import argparse  # noqa: E402
import json
import os
import sys
import time

import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx
import numpy as np

from fgfa.config import get_config
from fgfa.data import make_preprocess
from fgfa.detector import FGFADetector
from fgfa.flownet import half_size_image
from fgfa.operators import flow_warp
from fgfa.train import materialize
from fgfa.window import WindowRunner
from lib.config import PROJECT_ROOT
from lib.flops import conv_macs
from lib.flow import DISFlow
from lib.runtime import threads

CFG_DIR = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs")
SETTINGS = {
    # name: (config, overrides, number of classes, frame size HxW fed to the detector)
    "paper": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml", [], 30, (600, 1000)),
    # the same with a half-width FlowNet (~1/4 of the flow cost: FlowNetS at width 1 is ~20 GMAC per
    # flow at 600x1000, x 2K = 18 flows, more than the ResNet-101 itself) and 512-channel embeddings
    # (the window cache and the aggregation's memory traffic shrink from 3072 to 1536 channels)
    "paper_light": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml",
                    ["NETWORK.FLOW_WIDTH=0.5", "NETWORK.EMBED_CHANNELS=[256,256,512]"], 30, (600, 1000)),
    # the reference setting with chained flows: 2 FlowNet runs per new frame instead of 2K per output
    "paper_chained": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml", ["TEST.FLOW_MODE=chained"], 30,
                      (600, 1000)),
    # both: the light FlowNet / embeddings with 2 FlowNet runs per new frame
    "paper_light_chained": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml",
                            ["NETWORK.FLOW_WIDTH=0.5", "NETWORK.EMBED_CHANNELS=[256,256,512]",
                             "TEST.FLOW_MODE=chained"], 30, (600, 1000)),
    # int8 backbone + feature conv (calibrated on the benchmark's random frames: timing only)
    "paper_int8_chained": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml",
                           ["TEST.FLOW_MODE=chained", "TEST.QUANTIZE=int8"], 30, (600, 1000)),
    # the light chained FGFA with TEST.QUANTIZE=int8: backbone, head, embedding and FlowNet in int8
    "paper_light_int8_chained": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml",
                                 ["NETWORK.FLOW_WIDTH=0.5", "NETWORK.EMBED_CHANNELS=[256,256,512]",
                                  "TEST.FLOW_MODE=chained", "TEST.QUANTIZE=int8"], 30, (600, 1000)),
    "cpu": ("fgfa_rfcn_speedtrap_cpu.yaml", [], 1, (720, 1280)),
    "cpu_chained": ("fgfa_rfcn_speedtrap_cpu.yaml", ["TEST.FLOW_MODE=chained"], 1, (720, 1280)),
    # NETWORK.FLOW dis: OpenCV's DIS on the CPU instead of the FlowNet (2K flows per output frame)
    "cpu_dis": ("fgfa_rfcn_speedtrap_cpu.yaml", ["NETWORK.FLOW=dis"], 1, (720, 1280)),
    # the EfficientNet-Lite0 trunk (PRETRAINED efficientnet_lite0:imagenet in the recipe runs), FlowNet or DIS
    "cpu_lite0": ("fgfa_rfcn_speedtrap_cpu.yaml", ["NETWORK.BACKBONE=efficientnet_lite0", "NETWORK.NORM=frozen",
                                                  "TEST.K=2"], 1, (720, 1280)),
    "cpu_lite0_dis": ("fgfa_rfcn_speedtrap_cpu.yaml", ["NETWORK.BACKBONE=efficientnet_lite0", "NETWORK.NORM=frozen",
                                                      "TEST.K=2", "NETWORK.FLOW=dis"], 1, (720, 1280)),
    "quick": ("fgfa_rfcn_tiny.yaml", ["TEST.K=2"], 2, (120, 160)),
    "quick_chained": ("fgfa_rfcn_tiny.yaml", ["TEST.K=2", "TEST.FLOW_MODE=chained"], 2, (120, 160)),
    "quick_int8": ("fgfa_rfcn_tiny.yaml", ["TEST.K=2", "TEST.QUANTIZE=int8"], 2, (120, 160)),
    "quick_dis": ("fgfa_rfcn_tiny.yaml", ["TEST.K=2", "NETWORK.FLOW=dis"], 2, (120, 160)),
}


def build(cfg_name, overrides, num_classes, aggregate, hybridize):
    cfg = get_config(os.path.join(CFG_DIR, cfg_name),
                     overrides + ["PRETRAINED=''", f"NETWORK.AGGREGATE={str(aggregate).lower()}"])
    ctx = mx.cpu()
    mx.random.seed(0)
    model = FGFADetector(cfg, num_classes)
    model.init_weights(ctx)
    materialize(model, ctx)
    if hybridize:
        model.hybridize_for_inference(ctx)
    return cfg, model


def time_stream(cfg, model, frames):
    """Seconds per frame in steady state: (total - first output latency) / (frames after the first)."""
    detector = WindowRunner(model, preprocess=make_preprocess(cfg))
    detector.reset()
    stamps = []
    for frame in frames:
        ready = detector.step(frame)
        mx.nd.waitall()
        stamps.extend([time.perf_counter()] * len(ready))
    tail = detector.flush()
    mx.nd.waitall()
    stamps.extend([time.perf_counter()] * len(tail))
    # outputs produced while frames were still streaming in: one per input frame after warm-up
    steady = stamps[1:len(frames) - detector.K] if model.aggregate else stamps[1:]
    if len(steady) < 2:
        raise ValueError("too few frames for a steady-state measure: raise --frames")
    return (steady[-1] - steady[0]) / (len(steady) - 1)


def time_parts(cfg, model, frame, repeats):
    """Milliseconds of each FGFA stage for one output frame (features+embedding, 2K flows, aggregation, head)."""
    preprocess = make_preprocess(cfg)
    data, im_info = preprocess(frame)
    data = mx.nd.array(data[None])
    info = mx.nd.array(im_info[None])
    two_k = 2 * cfg.TEST.K

    def clock(fn):
        fn()
        mx.nd.waitall()
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
            mx.nd.waitall()
        return 1000 * (time.perf_counter() - start) / repeats, out

    parts = {}
    channels_last = model.fuses_aggregation(mx.cpu())    # the streaming detector's cache layout
    parts["features"], cache = clock(lambda: model.frame_cache(data, channels_last=channels_last))
    feat = cache[:, :model.feat_channels]
    if model.aggregate and cfg.NETWORK.FLOW == "dis":
        # DIS on the resized RGB frame, 2K flows per output frame, resampled to the feature grid
        dis = DISFlow(cfg.TEST.DIS_PRESET, cfg.TEST.DIS_SCALE)
        rgb = np.ascontiguousarray(frame[:int(im_info[0]), :int(im_info[1])])
        shape = tuple(cache.shape[1:3] if channels_last else cache.shape[-2:])     # the feature grid (h, w)
        stride = int(cfg.NETWORK.FEAT_STRIDE)
        parts["flows_2K"], grids = clock(lambda: [dis.grid(rgb, rgb, stride, shape) for _ in range(two_k)])
        flows = mx.nd.array(np.stack([g.transpose(2, 0, 1) for g in grids]))
    elif model.aggregate:
        # the streaming detector halves each frame once for the FlowNet (part of its per-frame work)
        parts["halving"], half = clock(lambda: mx.nd.array(half_size_image(data.asnumpy()[0])[None]))
    if model.aggregate and cfg.NETWORK.FLOW != "dis" and cfg.TEST.FLOW_MODE == "chained":
        # per output frame: the two one-step flows of the newest frame, then 2K - 2 compositions
        pair = mx.nd.concat(half, half, dim=0)
        parts["flows_2"], one_step = clock(lambda: model.flow_from_halves(pair, pair))
        step = one_step[:1]

        def compose():
            flow = step
            for _ in range(two_k - 2):
                flow = flow + flow_warp(mx.nd, step, flow)
            return flow
        parts["compose_2K-2"], _ = clock(compose)
        flows = mx.nd.concat(*[step] * two_k, dim=0)
    elif model.aggregate and cfg.NETWORK.FLOW != "dis":
        refs = mx.nd.concat(*[half] * two_k, dim=0)
        parts["flows_2K"], flows = clock(lambda: model.flow_from_halves(refs, refs))
    if model.aggregate:
        # distinct copies: the window's caches are different arrays (one array 2K+1 times would stay in cache)
        caches = [cache.copy() for _ in range(two_k + 1)]
        flows = [flows[j:j + 1] for j in range(two_k)] + [mx.nd.zeros_like(flows[:1])]
        parts["aggregation"], feat = clock(lambda: model.aggregate_window(cache, caches, flows,
                                                                          channels_last=channels_last))
    parts["head"], out = clock(lambda: model.detect_from_feature(feat, info))
    parts["postprocess"], _ = clock(lambda: model.postprocess(*out, im_info))
    return parts


def run_setting(name, frames_count, repeats, hybridize):
    cfg_name, overrides, num_classes, (height, width) = SETTINGS[name]
    rng = np.random.RandomState(0)
    results = {"setting": name, "config": cfg_name, "frame": [height, width]}
    for aggregate in (False, True):
        cfg, model = build(cfg_name, overrides, num_classes, aggregate, hybridize)
        k = cfg.TEST.K if aggregate else 0
        count = max(frames_count, 2 * k + 4)
        frames = [rng.randint(0, 255, (height, width, 3)).astype(np.uint8) for _ in range(count)]
        if cfg.TEST.QUANTIZE == "int8":
            model.quantize_int8(np.stack([make_preprocess(cfg)(f)[0] for f in frames[:4]]))
        key = "fgfa" if aggregate else "baseline"
        input_hw = [int(v) for v in make_preprocess(cfg)(frames[0])[1][:2]]
        results[key] = {
            "ms_per_frame": 1000 * time_stream(cfg, model, frames),
            "parts_ms": time_parts(cfg, model, frames[0], repeats),
            "K": k, "depth": cfg.NETWORK.DEPTH, "input": input_hw,
        }
        rate = ""
        if not aggregate:
            # the work behind the features stage (backbone + feature conv), counted on an
            # un-hybridized copy: GMAC/s near the machine's rate means the stage is MAC-bound
            del model
            _, plain = build(cfg_name, overrides, num_classes, False, False)
            gmacs = conv_macs(plain.features, mx.nd.zeros((1, 3) + tuple(input_hw))) / 1e9
            del plain
            results[key]["features_gmacs"] = gmacs
            rate = f", features {gmacs:.1f} GMACs at {gmacs / results[key]['parts_ms']['features'] * 1000:.0f} GMAC/s"
        print(f"[{name}] {key}: {results[key]['ms_per_frame']:.1f} ms/frame "
              f"(K={k}, parts {json.dumps({p: round(v, 1) for p, v in results[key]['parts_ms'].items()})}{rate})",
              flush=True)
    results["ratio"] = results["fgfa"]["ms_per_frame"] / results["baseline"]["ms_per_frame"]
    return results


def int8_ablation(setting, repeats):
    """ms per frame of the frame baseline (features + head + post-processing) in one process: float,
    int8 backbone only as quantize_net returns it (memory allocated per call), the same with static
    memory, and the full int8 path (quantize_int8: + the head's convolutions, static memory)."""
    from lib.runtime import quantize_block
    cfg_name, overrides, num_classes, (height, width) = SETTINGS[setting]
    cfg, model = build(cfg_name, overrides, num_classes, False, True)
    preprocess = make_preprocess(cfg)
    rng = np.random.RandomState(0)
    frames = [rng.randint(0, 255, (height, width, 3)).astype(np.uint8) for _ in range(4)]
    calib = np.stack([preprocess(f)[0] for f in frames])
    data, im_info = preprocess(frames[0])
    data, info = mx.nd.array(data[None]), mx.nd.array(im_info[None])

    def frame_ms():
        def run():
            out = model.detect_from_feature(model.frame_cache(data), info)
            mx.nd.waitall()
            return model.postprocess(*out, im_info)
        run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return 1000 * (time.perf_counter() - start) / repeats

    rows = {"float": frame_ms()}
    features = quantize_block(model.features, calib, "naive")
    model._infer.int8_features = features   # what quantize_int8 sets, without the head's part
    rows["int8 backbone, static memory"] = frame_ms()
    features.hybridize(static_alloc=False, static_shape=False)   # as quantize_net returns it
    rows["int8 backbone, memory per call"] = frame_ms()
    model.quantize_int8(calib)
    rows["int8 backbone + head convs, static memory (TEST.QUANTIZE)"] = frame_ms()
    print(f"\n[{setting}] int8 ablation, frame baseline {height}x{width}, ms per frame:")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.1f} | {rows['float'] / ms:.2f}x |")
    print(f"int8 rate of one large 3x3 conv (2048 -> 1024 at the stride-16 map), the machine's "
          f"practical ceiling for the backbone: {int8_conv_rate(stride16_hw(data)):.0f} GMAC/s")
    return rows


def stride16_hw(data):
    """Spatial size of the stride-16 feature map for a preprocessed (1,3,H,W) batch."""
    return tuple(-(-int(v) // 16) for v in data.shape[2:])


def int8_conv_rate(hw, repeats=10):
    """GMAC/s of one int8 (MKLDNN) 3x3 conv 2048 -> 1024 on a (1, 2048, h, w) input: a dense,
    well-shaped layer, against which the int8 backbone's GMAC/s can be read."""
    from mxnet.gluon import nn

    from lib.runtime import quantize_block
    conv = nn.HybridSequential()
    conv.add(nn.Conv2D(1024, 3, padding=1, in_channels=2048), nn.Activation("relu"))
    conv.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).rand(2, 2048, *hw).astype(np.float32))
    quantized = quantize_block(conv, x, "naive")
    quantized(x[:1]).wait_to_read()
    start = time.perf_counter()
    for _ in range(repeats):
        quantized(x[:1]).wait_to_read()
    seconds = (time.perf_counter() - start) / repeats
    return hw[0] * hw[1] * 2048 * 1024 * 9 / 1e9 / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke run)")
    parser.add_argument("--settings", default=None, help="comma list of: " + ", ".join(SETTINGS))
    parser.add_argument("--frames", type=int, default=None, help="frames streamed per model")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of each stage timing")
    parser.add_argument("--no-hybridize", action="store_true", help="imperative (for comparison)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--int8-ablation", default=None, metavar="SETTING",
                        help="instead: float vs the int8 variants of one setting's frame baseline")
    args = parser.parse_args(argv)
    settings = (args.settings.split(",") if args.settings else
                (["quick", "quick_chained", "quick_int8", "quick_dis"] if args.quick else
                 ["paper", "paper_light", "paper_chained", "paper_light_chained", "paper_int8_chained", "cpu",
                  "cpu_chained", "cpu_dis", "cpu_lite0", "cpu_lite0_dis"]))
    for name in settings:
        if name not in SETTINGS:
            parser.error(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)}")
    frames = args.frames or (8 if args.quick else 30)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.int8_ablation:
        if args.int8_ablation not in SETTINGS:
            parser.error(f"unknown setting {args.int8_ablation!r}; choose from {', '.join(SETTINGS)}")
        rows = int8_ablation(args.int8_ablation, repeats)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"threads": threads(), "int8_ablation": args.int8_ablation, "ms_per_frame": rows}, f, indent=1)
        return 0
    print(f"threads {threads()}, MKLDNN {mx.runtime.Features().is_enabled('MKLDNN')}, "
          f"hybridized {not args.no_hybridize}", flush=True)
    rows = [run_setting(name, frames, repeats, not args.no_hybridize) for name in settings]
    print("\n| setting | input | depth | K | baseline ms/frame | FGFA ms/frame | FGFA / baseline |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['setting']} | {r['fgfa']['input'][0]}x{r['fgfa']['input'][1]} | {r['fgfa']['depth']} | "
              f"{r['fgfa']['K']} | {r['baseline']['ms_per_frame']:.1f} | {r['fgfa']['ms_per_frame']:.1f} | "
              f"{r['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": threads(), "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
