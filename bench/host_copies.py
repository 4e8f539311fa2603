"""Benchmark: training steps after a large host copy, with MXNet's parallel host copies vs ours.

MXNet copies an array of more than MXNET_CPU_PARALLEL_SIZE elements (default 200000) between numpy
and NDArrays with OpenMP in the calling thread. The first such copy in the Python thread (reading the
optimizer state for a checkpoint, ``nd.array`` of a large image) starts a second OpenMP team there;
its threads spin after each region and compete with the engine's team for the cores. lib.runtime
keeps those copies serial. This runs the same small training loop in two fresh processes, with
MXNet's default and with ours: steps, then one read of every weight and momentum (what a checkpoint
does), then steps again. Prints ms/step before and after the read, and the ratios.

    python -m bench.host_copies [--steps 60] [--size 128]
"""
import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, os, sys, time
import lib  # sets the thread count and, unless the user chose one, MXNET_CPU_PARALLEL_SIZE
import mxnet as mx
from mxnet import autograd, gluon
steps, size = int(sys.argv[1]), int(sys.argv[2])
net = gluon.model_zoo.vision.resnet18_v1(classes=10)
net.initialize(mx.init.Xavier())
net.hybridize()
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9},
                        update_on_kvstore=False)
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
x = mx.nd.random.uniform(shape=(2, 3, size, size))
y = mx.nd.array([1, 2])
def run(n):
    start = time.perf_counter()
    for _ in range(n):
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(2)
        loss.asnumpy()
    return (time.perf_counter() - start) / n * 1000
run(5)
before = run(steps)
for p in net.collect_params().values():   # what a checkpoint reads
    p.data().asnumpy()
for state in trainer._updaters[0].states.values():
    if state is not None:
        state.asnumpy()
after = run(steps)
print(json.dumps({"before": before, "after": after, "threads": len(os.listdir("/proc/self/task")),
                  "parallel_size": os.environ.get("MXNET_CPU_PARALLEL_SIZE")}))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps before and after the read")
    parser.add_argument("--size", type=int, default=128, help="input side of the ResNet-18 (batch 2)")
    return parser.parse_args(argv)


def run_worker(steps, size, parallel_size):
    env = dict(os.environ)
    env.pop("MXNET_CPU_PARALLEL_SIZE", None)
    if parallel_size is not None:
        env["MXNET_CPU_PARALLEL_SIZE"] = parallel_size
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", WORKER, str(steps), str(size)], env=env, cwd=root,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    mxnet_default = run_worker(args.steps, args.size, "200000")
    ours = run_worker(args.steps, args.size, None)
    print(f"ResNet-18 training steps, batch 2 at {args.size}px, {args.steps} steps each, 2 fresh processes")
    print(f"{'host copies':<28}{'before read':>14}{'after read':>14}{'after/before':>14}{'threads':>9}")
    for name, r in (("MXNet default (parallel)", mxnet_default), ("lib.runtime (serial)", ours)):
        print(f"{name:<28}{r['before']:>11.1f} ms{r['after']:>11.1f} ms{r['after'] / r['before']:>13.2f}x"
              f"{r['threads']:>9}")
    print(f"after the read, MXNet default / ours: {mxnet_default['after'] / ours['after']:.2f}x")


if __name__ == "__main__":
    main()
