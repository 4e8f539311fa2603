"""Latency of M2Det vs gluoncv SSD on this machine and MXNet, and the cost of soft-NMS vs hard NMS.

    python -m bench.m2det            # M2Det 320/512 VGG vs ssd_300/ssd_512_vgg16_atrous (slow on CPU)
    python -m bench.m2det --quick    # tiny sizes, few repeats (smoke test)

Run it as a module from the project root: as a script, this file's name would shadow the m2det package.

All networks are built with random weights (pretrained=False, pretrained_base=False: nothing is
downloaded), hybridized for inference with MKLDNN (lib.runtime.hybridize_for_inference) and timed
end to end at batch 1 including their built-in decoding and NMS. Reports the median over repeats.
The goal of issue 7: M2Det 320 within 1.3x of gluoncv SSD-300.

NMS section: raw outputs with a fixed number of above-threshold (prior, class) candidates are
post-processed with lib.nms hard NMS, linear and gaussian soft-NMS (per class).
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.m2det [--quick] "
                     "(as a script, bench/m2det.py shadows the m2det package)")

import argparse  # noqa: E402
import json
import os
import statistics
import time

import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx
import numpy as np

from lib.flops import conv_macs
from lib.runtime import hybridize_for_inference, threads
from m2det.config import load as load_m2det_config
from m2det.detector import build_model
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


def m2det_block(cfg_name, num_classes, overrides=(), hybridize=True):
    """(inference block: network + decode + NMS, the network alone, config)."""
    cfg = load_m2det_config(os.path.join(CFG_DIR, cfg_name), list(overrides))
    net = build_model(cfg, num_classes)
    block = M2DetInference(net, cfg.TEST)
    block.priors.initialize()
    if hybridize:
        hybridize_for_inference(block)
    return block, net, cfg


def gluoncv_ssd(name, hybridize=True):
    from gluoncv import model_zoo
    net = model_zoo.get_model(name, pretrained=False, pretrained_base=False)
    net.initialize()
    if hybridize:
        hybridize_for_inference(net)
    return net


def run_forward(block, size):
    x = mx.nd.random.normal(shape=(1, 3, size, size))

    def fn():
        for out in block(x):
            out.wait_to_read()
    return fn


def controlled_outputs(priors, num_classes, candidates, rng):
    """Raw (cls logits (P, C+1), box deltas (P, 4)) with exactly ``candidates`` foreground
    (prior, class) pairs (on distinct priors) of probability 0.5..0.95 (background takes the rest of their prior);
    every other class probability is 1e-6."""
    num_priors = len(priors)
    probs = np.full((num_priors, num_classes + 1), 1e-6)
    rows = rng.choice(num_priors, size=candidates, replace=False)   # one candidate class per prior
    cols = rng.randint(1, num_classes + 1, size=candidates)
    probs[rows, cols] = rng.uniform(0.5, 0.95, candidates)
    probs[:, 0] = 1.0 - (probs[:, 1:].sum(axis=1))
    box = rng.normal(0, 0.5, (num_priors, 4)).astype(np.float32)
    return np.log(probs).astype(np.float32), box


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
        cases = [("m2det_tiny_160", lambda **kw: m2det_block("tiny.yaml", num_classes, **kw), 160),
                 ("ssd_300_vgg16_atrous_voc", lambda **kw: gluoncv_ssd("ssd_300_vgg16_atrous_voc", **kw), 300)]
    else:
        cases = [("m2det_320_vgg16", lambda **kw: m2det_block("m2det320_vgg.yaml", num_classes, **kw), 320),
                 ("ssd_300_vgg16_atrous_voc", lambda **kw: gluoncv_ssd("ssd_300_vgg16_atrous_voc", **kw), 300),
                 ("m2det_512_vgg16", lambda **kw: m2det_block("m2det512_vgg.yaml", num_classes, **kw), 512),
                 ("ssd_512_vgg16_atrous_voc", lambda **kw: gluoncv_ssd("ssd_512_vgg16_atrous_voc", **kw), 512)]
    results["gmacs"] = {}
    for name, build, size in cases:
        block = build()
        block = block[0] if isinstance(block, tuple) else block
        results["latency_ms"][name] = timed(run_forward(block, size), warmup, repeats)
        del block
        plain = build(hybridize=False)   # forward hooks only fire imperatively
        plain = plain[1] if isinstance(plain, tuple) else plain
        results["gmacs"][name] = conv_macs(plain, mx.nd.zeros((1, 3, size, size))) / 1e9
        del plain
        print(f"{name:32s} {results['latency_ms'][name]:9.1f} ms  {results['gmacs'][name]:7.2f} GMACs "
              f"({results['gmacs'][name] / results['latency_ms'][name] * 1000:.0f} GMAC/s)", flush=True)
    lat = results["latency_ms"]
    if not args.quick:
        results["m2det320_over_ssd300"] = lat["m2det_320_vgg16"] / lat["ssd_300_vgg16_atrous_voc"]
        results["m2det512_over_ssd512"] = lat["m2det_512_vgg16"] / lat["ssd_512_vgg16_atrous_voc"]
        macs = results["gmacs"]
        print(f"M2Det 320 / SSD 300 latency: {results['m2det320_over_ssd300']:.2f}x (goal <= 1.3x); "
              f"MACs {macs['m2det_320_vgg16'] / macs['ssd_300_vgg16_atrous_voc']:.2f}x")

    # NMS cost on raw outputs with a controlled load: random weights give arbitrary logits (from
    # none to every prior over the threshold), so the bench builds the raw outputs itself: every
    # (prior, class) pair is background except CANDIDATES random pairs (on random priors, random
    # box deltas), which score above TEST.SCORE_THRESH. Post-processing = softmax + decode +
    # per-class NMS (lib.nms, numpy).
    cfg_name = "tiny.yaml" if args.quick else "m2det320_vgg.yaml"
    _, net, cfg = m2det_block(cfg_name, num_classes)
    candidates = 500 if args.quick else 5000
    cls, box = controlled_outputs(net.priors, num_classes, candidates, np.random.RandomState(0))
    for method in ("hard", "linear", "gaussian"):
        results["nms_ms"][method] = timed(
            lambda: postprocess(cls, box, net.priors, net.input_hw, cfg.TEST, net.variances, method=method),
            warmup, repeats)
    results["nms_candidates_per_image"] = candidates
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
