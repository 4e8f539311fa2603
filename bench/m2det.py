"""Latency of M2Det vs gluoncv SSD on this machine and MXNet, and the cost of soft-NMS vs hard NMS.

    python -m bench.m2det            # M2Det 320/512 VGG vs ssd_300/ssd_512_vgg16_atrous (slow on CPU)
    python -m bench.m2det --quick    # tiny sizes, few repeats (smoke test)

Run it as a module from the project root: as a script, this file's name would shadow the m2det package.

All networks are built with random weights (pretrained=False, pretrained_base=False: nothing is
downloaded), hybridized for inference with MKLDNN (lib.runtime.hybridize_for_inference) and timed
end to end at batch 1 including their built-in decoding and NMS. Reports the median over repeats.
The goal of issue 7: M2Det 320 within 1.3x of gluoncv SSD-300.

NMS section: the raw outputs of the M2Det model are post-processed with lib.nms hard NMS, linear and
gaussian soft-NMS (numpy/Cython, per class), and with the in-graph box_nms (inference graph minus the
network forward).
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.m2det [--quick] "
                     "(as a script, bench/m2det.py shadows the m2det package)")

import argparse  # noqa: E402
import json
import os
import statistics
import time

import mxnet as mx
import numpy as np

from lib.runtime import hybridize_for_inference, threads
from m2det import engine
from m2det.detector import M2DetInference, postprocess

CFG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "m2det", "cfgs")


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def m2det_block(cfg_name, num_classes, overrides=()):
    cfg = engine.build_config(os.path.join(CFG_DIR, cfg_name), list(overrides))
    net = engine.build_model(cfg, num_classes)
    block = M2DetInference(net, cfg.TEST)
    block.priors.initialize()
    hybridize_for_inference(block)
    return block, net, cfg


def gluoncv_ssd(name):
    from gluoncv import model_zoo
    net = model_zoo.get_model(name, pretrained=False, pretrained_base=False)
    net.initialize()
    hybridize_for_inference(net)
    return net


def run_forward(block, size):
    x = mx.nd.random.normal(shape=(1, 3, size, size))

    def fn():
        for out in block(x):
            out.wait_to_read()
    return fn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    warmup, repeats = (1, 2) if args.quick else (3, args.repeats or 20)
    results = {"threads": threads(), "mkldnn": mx.runtime.Features().is_enabled("MKLDNN"),
               "quick": args.quick, "latency_ms": {}, "nms_ms": {}}
    num_classes = 20  # VOC, as the gluoncv SSD models
    if args.quick:
        cases = [("m2det_tiny_160", lambda: m2det_block("tiny.yaml", num_classes)[0], 160),
                 ("ssd_300_vgg16_atrous_voc", lambda: gluoncv_ssd("ssd_300_vgg16_atrous_voc"), 300)]
    else:
        cases = [("m2det_320_vgg16", lambda: m2det_block("m2det320_vgg.yaml", num_classes)[0], 320),
                 ("ssd_300_vgg16_atrous_voc", lambda: gluoncv_ssd("ssd_300_vgg16_atrous_voc"), 300),
                 ("m2det_512_vgg16", lambda: m2det_block("m2det512_vgg.yaml", num_classes)[0], 512),
                 ("ssd_512_vgg16_atrous_voc", lambda: gluoncv_ssd("ssd_512_vgg16_atrous_voc"), 512)]
    for name, build, size in cases:
        block = build()
        results["latency_ms"][name] = timed(run_forward(block, size), warmup, repeats)
        print(f"{name:32s} {results['latency_ms'][name]:9.1f} ms", flush=True)
        del block
    lat = results["latency_ms"]
    if not args.quick:
        results["m2det320_over_ssd300"] = lat["m2det_320_vgg16"] / lat["ssd_300_vgg16_atrous_voc"]
        results["m2det512_over_ssd512"] = lat["m2det_512_vgg16"] / lat["ssd_512_vgg16_atrous_voc"]
        print(f"M2Det 320 / SSD 300 latency: {results['m2det320_over_ssd300']:.2f}x (goal <= 1.3x)")

    # NMS cost on one M2Det model's raw outputs. Random weights give near-uniform class scores, so
    # a threshold just under 1/(C+1) keeps thousands of candidates per class: a heavy but fair load.
    cfg_name, size = ("tiny.yaml", 160) if args.quick else ("m2det320_vgg.yaml", 320)
    thresh = 0.9 / (num_classes + 1)
    block, net, cfg = m2det_block(cfg_name, num_classes, [f"TEST.SCORE_THRESH={thresh}"])
    x = mx.nd.random.normal(shape=(1, 3, size, size))
    cls, box = (o.asnumpy() for o in net(x))
    hybridize_for_inference(net)
    forward_ms = timed(run_forward(net, size), warmup, repeats)
    graph_ms = timed(run_forward(block, size), warmup, repeats)
    results["nms_ms"]["in_graph_hard (graph - forward)"] = graph_ms - forward_ms
    for method in ("hard", "linear", "gaussian"):
        results["nms_ms"][method] = timed(
            lambda: postprocess(cls[0], box[0], net.priors, size, cfg.TEST, net.variances, method=method),
            warmup, repeats)
    results["nms_candidates_per_image"] = int((np.exp(cls[0]) / np.exp(cls[0]).sum(-1, keepdims=True)
                                               )[:, 1:].__gt__(thresh).sum())
    for key, value in results["nms_ms"].items():
        print(f"NMS {key:32s} {value:9.1f} ms")
    print(f"soft-NMS (linear) / hard NMS: {results['nms_ms']['linear'] / max(results['nms_ms']['hard'], 1e-9):.1f}x "
          f"on {results['nms_candidates_per_image']} candidates")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
