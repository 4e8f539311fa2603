"""Training-step time of the MobileNet detectors with MXNet's ``clip`` ReLU6 vs lib.layers.relu6.

    python -m bench.train_step [--repeats N] [--quick] [--json OUT.json]

Side by side in one process, on random inputs and targets (the step's cost does not depend on the
values): M2Det with MobileNetV2 x0.5 at 384 (experiments/m2det/cfgs/speedtrap_mobilenet.yaml, batch 8,
imperative as its training loop runs) and SSDLite / LSTM-SSD with MobileNetV1
(experiments/lstm_ssd/cfgs/speedtrap_ssdlite.yaml and speedtrap_lstm_ssd.yaml, hybridized parts as
lstm_ssd.train runs them). Each model is built twice, once inside ``lib.layers.clip_relu6()`` (the
reference form, as gluoncv and the TF ports write it), with the same seed; a step is forward, loss,
backward and an SGD update, timed after warm-up steps in rounds that alternate the two forms.
"""
import argparse
import contextlib
import json
import os
import statistics
import time

import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx
import numpy as np

from lib.config import PROJECT_ROOT
from lib.layers import clip_relu6
from lib.runtime import threads


def _timed(step, repeats, form):
    with form():
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        mx.nd.waitall()
    return (time.perf_counter() - start) / repeats


def compare(build, warmup, repeats, rounds):
    """Median seconds per step of each form; the forms alternate in rounds so that drift in the
    machine's speed hits both alike."""
    forms = {"clip": clip_relu6, "relu6": contextlib.nullcontext}
    steps = {}
    for name, form in forms.items():
        with form():   # a hybridized graph keeps the form it is traced with
            steps[name] = build()
            for _ in range(warmup):
                steps[name]()
        mx.nd.waitall()
    times = {name: [] for name in forms}
    for _ in range(rounds):
        for name, form in forms.items():
            times[name].append(_timed(steps[name], repeats, form))
    return {name: statistics.median(t) for name, t in times.items()}


def sgd_step(net, task, batch):
    """One training step of ``task`` (forward, loss, backward, SGD update) as a closure."""
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1e-4, "momentum": 0.9})

    def step():
        with mx.autograd.record():
            total, _ = task.loss(batch)
        total.backward()
        trainer.step(1)
    return step


def m2det_step(quick, config="speedtrap_mobilenet.yaml", overrides=()):
    """A training step of the M2Det of ``experiments/m2det/cfgs/<config>`` on random data."""
    from m2det.config import load as build_config
    from m2det.detector import build_model
    from m2det.train import M2DetTask
    overrides = list(overrides) + (["TRAIN.BATCH_SIZE=1", "MODEL.NUM_LEVELS=2"] if quick else [])
    cfg = build_config(os.path.join(PROJECT_ROOT, "experiments", "m2det", "cfgs", config), overrides)
    mx.random.seed(0)
    net = build_model(cfg, 1)
    task = M2DetTask(net, cfg)
    rng = np.random.RandomState(0)
    (height, width), batch, priors = net.input_hw, int(cfg.TRAIN.BATCH_SIZE), net.priors.shape[0]
    data = (mx.nd.array(rng.normal(0, 1, (batch, 3, height, width))),
            mx.nd.array((rng.rand(batch, priors) < 0.002).astype(np.float32)),
            mx.nd.array(rng.normal(0, 0.5, (batch, priors, 4))))
    return sgd_step(net, task, data)


def lstm_ssd_step(config, quick):
    from lstm_ssd import config as lstm_config
    from lstm_ssd.detector import build_detector
    from lstm_ssd.train import ClipTask
    overrides = ["INPUT.SIZE=[96,160]", "TRAIN.BATCH_SIZE=2", "TRAIN.UNROLL=2"] if quick else []
    cfg = lstm_config.load(os.path.join(PROJECT_ROOT, "experiments", "lstm_ssd", "cfgs", config), overrides)
    mx.random.seed(0)
    net = build_detector(cfg)
    net.hybridize_parts(static_alloc=True)
    task = ClipTask(net, cfg)
    rng = np.random.RandomState(0)
    b, t = int(cfg.TRAIN.BATCH_SIZE), int(cfg.TRAIN.UNROLL)
    height, width = net.image_hw
    priors = net.anchors().shape[0]
    batch = {"frames": rng.uniform(0, 255, (b, t, 3, height, width)).astype(np.float32),
             "cls": (rng.rand(b, t, priors) < 0.002).astype(np.float32),
             "box": rng.normal(0, 0.5, (b, t, priors, 4)).astype(np.float32),
             "continues": np.zeros(b, bool), "schedule": ["large"] * t}
    return sgd_step(net, task, batch)


CASES = {
    "m2det_mobilenetv2_384_b8": lambda quick: m2det_step(quick),
    "ssdlite_mobilenetv1": lambda quick: lstm_ssd_step("speedtrap_ssdlite.yaml", quick),
    "lstm_ssd_mobilenetv1": lambda quick: lstm_ssd_step("speedtrap_lstm_ssd.yaml", quick),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per round and form (default 3)")
    parser.add_argument("--quick", action="store_true", help="small batches, 1 timed step (smoke run)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ", ".join(CASES))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warmup, repeats, rounds = (1, 1, 1) if args.quick else (3, args.repeats or 3, 3)
    print(f"threads {threads()}; seconds per training step (forward, loss, backward, SGD update), "
          f"median of {rounds} alternating rounds of {repeats} steps", flush=True)
    results = {"threads": threads(), "quick": args.quick, "steps": {}}
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        times = compare(lambda: CASES[name](args.quick), warmup, repeats, rounds)
        clip_s, fast_s = times["clip"], times["relu6"]
        results["steps"][name] = {"clip_s": clip_s, "relu6_s": fast_s, "speedup": clip_s / fast_s}
        print(f"| {name} | clip {clip_s:.3f} s | lib.layers.relu6 {fast_s:.3f} s | {clip_s / fast_s:.2f}x |",
              flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
