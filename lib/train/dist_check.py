"""Check that a distributed job trains as one process would: a tiny conv net on synthetic data.

    python -m lib.tools.launch -n 2 -s 1 -- python -m lib.train.dist_check --out DIR [--steps 3]
    python -m lib.train.dist_check --verify DIR

Every worker builds the net from its own seed (seed + 1000 * rank: different on purpose), takes rank
0's parameters through the kvstore (DistributedInfo.sync_start), then trains --steps SGD
steps on its shard of the synthetic set (lib.train.distributed.shard), --batch samples per worker
and step, split over --contexts, gradients summed by the kvstore (dist_sync by default), and writes
DIR/rank<R>.npz (its parameters after the steps) and DIR/rank<R>.json (rank, job size and the
sample indices of each of its steps). ``--verify DIR`` then checks that every rank holds the same
parameters and that they equal one single-process run, on one context, over the union of the
workers' batches of each step (prints the largest difference; exit 1 if above --tolerance).
On a cluster, DIR must be on a filesystem every host writes to (or copy the files together).
``--fail-rank R`` makes rank R raise after its first step (to see how a job ends when a worker dies).
Workers started with different settings stop at once (DistributedInfo.check_same_on_all).
"""
import argparse
import json
import os
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from lib.fileio import atomic_save

from ..config import ConfigError
from .distributed import (
    DistributedError,
    DistributedInfo,
    create_kvstore,
    mark_finished,
    parse_contexts,
    shard,
    split_batch,
)

NUM_CLASSES = 3


def build_net(seed, ctxs, width=4, image_size=8):
    """A small conv net (no BatchNorm: its running statistics are per device and per worker). Its
    first convolution is frozen, as a detector's stem: the Trainer does not hold it, so a worker
    gets rank 0's copy only from DistributedInfo.sync_start's broadcast of the other parameters."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(width, 3, padding=1, activation="relu"),
            nn.Conv2D(width, 3, strides=2, padding=1, activation="relu"),
            nn.GlobalAvgPool2D(),
            nn.Dense(NUM_CLASSES))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(magnitude=2.0), ctx=ctxs)
    net[0].collect_params().setattr("grad_req", "null")
    net(mx.nd.zeros((1, 3, image_size, image_size), ctx=ctxs[0]))  # shapes known before any broadcast
    return net


def trained_parameters(net):
    return {name: p for name, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}


def make_data(num_samples, image_size, seed):
    """Synthetic images (N,3,S,S) float32 and labels (N,) from ``seed``."""
    rng = np.random.RandomState(seed)
    images = rng.standard_normal((num_samples, 3, image_size, image_size)).astype(np.float32)
    labels = rng.randint(0, NUM_CLASSES, num_samples).astype(np.float32)
    return images, labels


def make_trainer(net, kvstore, lr=0.1):
    return gluon.Trainer(trained_parameters(net), "sgd", {"learning_rate": lr, "momentum": 0.9, "wd": 1e-4},
                         kvstore=kvstore, update_on_kvstore=False)


def train_step(net, trainer, images, labels, ctxs, rescale):
    """One step: the batch split over ``ctxs``, summed losses, ``trainer.step(rescale)``."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    parts = split_batch((mx.nd.array(images), mx.nd.array(labels)), ctxs, even_split=False)
    with autograd.record():
        losses = [loss_fn(net(x), y).sum() for x, y in parts]
    autograd.backward(losses)
    trainer.step(rescale)
    return sum(float(l.asscalar()) for l in losses)


def parameters_numpy(net):
    return {name: p.data().asnumpy() for name, p in net._collect_params_with_prefix().items()}


def _atomic_write(path, write):
    atomic_save(path, write)


def run_worker(args):
    ctxs = parse_contexts(args.contexts, key="--contexts")
    kvstore = create_kvstore(args.kvstore, key="--kvstore")
    info = DistributedInfo(kvstore, ctxs)
    print(f"dist_check: {info.describe()}", flush=True)
    info.check_same_on_all([args.steps, args.batch, args.samples, args.seed, args.width, args.image_size],
                           "--steps --batch --samples --seed --width --image-size")
    watchdog = info.watchdog(args.step_timeout, what="broadcast of rank 0's parameters")
    images, labels = make_data(args.samples, args.image_size, args.seed)
    net = build_net(args.seed + 1000 * info.rank, ctxs, args.width, args.image_size)
    trainer = make_trainer(net, kvstore, args.lr)
    info.sync_start(trainer, net)
    mine = shard(args.samples, info.rank, info.num_workers, args.seed, epoch=0)
    if len(mine) < args.steps * args.batch:
        raise SystemExit(f"dist_check: --samples {args.samples} gives each of {info.num_workers} workers "
                         f"{len(mine)} samples, fewer than --steps x --batch = {args.steps * args.batch}")
    steps = []
    for step in range(args.steps):
        watchdog.kick(f"step {step + 1}")
        chosen = mine[step * args.batch:(step + 1) * args.batch]
        loss = train_step(net, trainer, images[chosen], labels[chosen], ctxs, args.batch * info.num_workers)
        steps.append(chosen.tolist())
        if info.is_chief:
            print(f"dist_check: step {step + 1} loss {loss / args.batch:.4f} (rank 0's batch)", flush=True)
        if args.fail_rank == info.rank:
            raise RuntimeError(f"dist_check: simulated failure on rank {info.rank} after step {step + 1}")
    mx.nd.waitall()
    watchdog.stop()
    os.makedirs(args.out, exist_ok=True)
    params = parameters_numpy(net)
    _atomic_write(os.path.join(args.out, f"rank{info.rank}.npz"),
                  lambda tmp: np.savez(open(tmp, "wb"), **params))
    record = {"rank": info.rank, "num_workers": info.num_workers, "kvstore": info.kind,
              "contexts": [str(c) for c in ctxs], "launch_index": info.launch_index, "steps": steps,
              "samples": args.samples, "image_size": args.image_size, "width": args.width,
              "seed": args.seed, "lr": args.lr}

    def write_json(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
    _atomic_write(os.path.join(args.out, f"rank{info.rank}.json"), write_json)
    print(f"dist_check: rank {info.rank} wrote {args.out}/rank{info.rank}.npz", flush=True)
    mark_finished()
    return 0


def load_ranks(folder):
    """{rank: (record, parameters)} of the files a dist_check job wrote into ``folder``."""
    ranks = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("rank") and name.endswith(".json"):
            with open(os.path.join(folder, name), "r", encoding="utf-8") as f:
                record = json.load(f)
            with np.load(os.path.join(folder, name[:-5] + ".npz")) as npz:
                ranks[record["rank"]] = (record, {k: npz[k] for k in npz.files})
    return ranks


def reference_parameters(record, union_steps):
    """One process, one context, no kvstore: the same steps over the union of the workers' batches."""
    ctxs = [mx.cpu()]
    images, labels = make_data(record["samples"], record["image_size"], record["seed"])
    net = build_net(record["seed"], ctxs, record["width"], record["image_size"])  # rank 0's seed
    trainer = make_trainer(net, None, record["lr"])
    for chosen in union_steps:
        chosen = np.asarray(chosen)
        train_step(net, trainer, images[chosen], labels[chosen], ctxs, len(chosen))
    return parameters_numpy(net)


def verify(folder, tolerance):
    if not os.path.isdir(folder):
        print(f"dist_check: --verify {folder}: no such folder", file=sys.stderr)
        return 2
    ranks = load_ranks(folder)
    if not ranks:
        print(f"dist_check: no rank*.json in {folder}", file=sys.stderr)
        return 2
    record = ranks[0][0]
    if sorted(ranks) != list(range(record["num_workers"])):
        print(f"dist_check: {folder} holds ranks {sorted(ranks)} of a {record['num_workers']}-worker job",
              file=sys.stderr)
        return 1
    chief = ranks[0][1]
    for rank, (_, params) in ranks.items():
        for name, value in params.items():
            if not np.array_equal(value, chief[name]):
                print(f"dist_check: rank {rank} differs from rank 0 in {name}", file=sys.stderr)
                return 1
    union = [sum((ranks[r][0]["steps"][s] for r in sorted(ranks)), []) for s in range(len(record["steps"]))]
    reference = reference_parameters(record, union)
    worst = max(float(np.max(np.abs(chief[name] - reference[name]))) for name in reference)
    print(f"dist_check: {len(ranks)} ranks hold identical parameters; largest difference to one process "
          f"over the union of their batches: {worst:.2e} (tolerance {tolerance:g})")
    return 0 if worst <= tolerance else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.train.dist_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for rank<R>.npz / rank<R>.json (worker mode)")
    parser.add_argument("--verify", metavar="DIR", help="check the files a job wrote into DIR")
    parser.add_argument("--kvstore", default="dist_sync")
    parser.add_argument("--contexts", default="cpu", help="e.g. 'cpu', '[cpu(0), cpu(1)]', 'gpu:0,gpu:1'")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="samples per worker and step")
    parser.add_argument("--samples", type=int, default=24, help="size of the synthetic training set")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=8,
                        help="channels of the conv layers (8 at 16x16: oneDNN keeps the second conv's weights in its own layout)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-timeout", type=float, default=120.0,
                        help="a worker waiting longer than this for a step ends itself (0 = never)")
    parser.add_argument("--fail-rank", type=int, default=-1, help="this rank raises after its first step")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="--verify: largest allowed difference")
    args = parser.parse_args(argv)
    if args.verify:
        return verify(args.verify, args.tolerance)
    if not args.out:
        parser.error("--out DIR (worker mode) or --verify DIR")
    try:
        return run_worker(args)
    except (ConfigError, DistributedError) as err:   # settings that differ between workers, too
        print(f"dist_check: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
