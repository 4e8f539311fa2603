"""Data-parallel training on MXNet's parameter server: images per second and bytes per step,
1 worker vs 2 workers on loopback.

    python -m bench.dist [--model tiny|resnet18_v1|...] [--workers 1,2] [--servers 1] [--batch 8]
                         [--image-size 64] [--steps 20] [--warmup 3] [--json OUT.json]
    python -m bench.dist --quick               # tiny sizes (a smoke run)
    python -m bench.dist --param-bytes fgfa [--macs]   # parameter bytes (and a training step's GMACs)
                                                       # of the paper-size FGFA (docs/distributed.md)

Rows: one process without a kvstore (the baseline), then for each worker count a dist_sync job
started by lib.tools.launch (1 scheduler, --servers servers, W workers, each on its own shard of
random data, --batch images per worker and step). Images per second = W x batch x steps / the timed
seconds of rank 0 (the workers run in lockstep). Bytes per step:
- model: every worker pushes its gradients of the trained parameters and pulls their sum back, so
  it sends P and receives P bytes per step (P = trained parameter bytes); the servers together
  receive and send W x P.
- measured: the servers' ps-lite message log (PS_VERBOSE=2 lists every message with its data
  sizes; ps-lite has no traffic counters), summed over two extra short jobs of 1 and 3 steps, so
  the per-step bytes, (bytes(3) - bytes(1)) / 2, exclude start-up broadcasts. Values only: ps-lite
  also sends 8 bytes of key and 4 of length per array, and its headers, which are not counted.
On 2 shared cores no speed-up is expected: workers compete for the same cores and loopback is
memory copies. The numbers are for the scaling model in docs/distributed.md, not for a cluster.

Models (``MODELS``): ``tiny`` (lib.train.dist_check's conv net, --width channels) or any gluoncv
classification network by name (``resnet18_v1``, ...; random weights).

R-FCN (``RFCN_CONFIGS``: ``rfcn_tiny``, ``rfcn_speedtrap_cpu``): the real training path, the entry
point experiments/rfcn/train_test.py --skip-test (lib.train.Trainer), with TRAIN.BATCH_SIZE = --batch
images per worker and step. Each run trains 2 epochs of --steps steps per worker (TRAIN.MAX_BATCHES =
workers x steps: the epoch's batches are dealt out to the workers); epoch 1 is the warm-up, images per
second = workers x batch x the steps of epoch 2 / its seconds (rank 0's history.json). The baseline
is the same entry point in one process (kvstore device, one context). Bytes as above, from jobs of
1 and 3 steps per worker. --image-size and --width do not apply (the config's input sizes).
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.dist [--quick]")

import argparse  # noqa: E402
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import lib  # noqa: F401  (before mxnet: it sets the OpenMP threads, see lib.runtime)
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from lib.config import PROJECT_ROOT
from lib.runtime import threads
from lib.train import dist_check
from lib.train.distributed import DistributedInfo, create_kvstore, mark_finished, shard

NUM_CLASSES = 3
# a ps-lite message line, e.g. "... 9 => 8. Meta: request=1, ..., push=1, ... Body: data_size=8 data_size=12 data_size=4"
MESSAGE = re.compile(r"Meta: request=(?P<request>\d).*?Body:(?P<body>( data_size=\d+)+)")


# ----------------------------------------------------------------------------------------------
# models

def tiny_model(args, ctx):
    return dist_check.build_net(args.seed, [ctx], args.width, args.image_size)


def gluoncv_model(name):
    def build(args, ctx):
        from gluoncv import model_zoo
        net = model_zoo.get_model(name, pretrained=False, classes=NUM_CLASSES)
        mx.random.seed(args.seed)
        net.initialize(mx.init.Xavier(), ctx=ctx)
        net(mx.nd.zeros((1, 3, args.image_size, args.image_size), ctx=ctx))
        return net
    return build


MODELS = {"tiny": tiny_model}


def build_model(args, ctx):
    if args.model in MODELS:
        return MODELS[args.model](args, ctx)
    return gluoncv_model(args.model)(args, ctx)


def trained_bytes(net):
    params = [p for p in net._collect_params_with_prefix().values() if p.grad_req != "null"]
    return (sum(int(np.prod(p.shape)) for p in params),
            sum(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize for p in params))


# ----------------------------------------------------------------------------------------------
# one worker (run by lib.tools.launch) or the single-process baseline

def run_worker(args):
    ctx = mx.cpu()
    kvstore = create_kvstore(args.kvstore, key="--kvstore") if args.kvstore != "none" else None
    info = DistributedInfo(kvstore, [ctx])
    net = build_model(args, ctx)
    trained = {n: p for n, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}
    trainer = gluon.Trainer(trained, "sgd", {"learning_rate": 1e-3, "momentum": 0.9},
                            kvstore=kvstore, update_on_kvstore=False)
    info.sync_start(trainer, net)
    rng = np.random.RandomState(args.seed)
    pool = 4 * args.batch * info.num_workers       # random images: the step's cost does not depend on them
    images = mx.nd.array(rng.standard_normal((pool, 3, args.image_size, args.image_size)).astype(np.float32), ctx=ctx)
    labels = mx.nd.array(rng.randint(0, NUM_CLASSES, pool).astype(np.float32), ctx=ctx)
    mine = shard(pool, info.rank, info.num_workers, args.seed, epoch=0)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    watchdog = info.watchdog(600, what="benchmark step")

    def step(index):
        chosen = mx.nd.array(np.resize(mine, (index + 1) * args.batch)[-args.batch:], ctx=ctx)
        with autograd.record():
            loss = loss_fn(net(images.take(chosen)), labels.take(chosen)).sum()
        loss.backward()
        trainer.step(args.batch * info.num_workers)
        watchdog.kick()

    for index in range(args.warmup):
        step(index)
    mx.nd.waitall()
    start = time.perf_counter()
    for index in range(args.steps):
        step(args.warmup + index)
    mx.nd.waitall()
    seconds = time.perf_counter() - start
    watchdog.stop()
    count, nbytes = trained_bytes(net)
    result = {"rank": info.rank, "num_workers": info.num_workers, "kvstore": args.kvstore, "seconds": seconds,
              "steps": args.steps, "batch": args.batch, "trained_parameters": count, "trained_bytes": nbytes,
              "images_per_second": info.num_workers * args.batch * args.steps / seconds if args.steps else 0.0}
    if info.is_chief and args.result:
        with open(args.result, "w", encoding="utf-8") as f:
            json.dump(result, f)
    mark_finished()
    return result


# ----------------------------------------------------------------------------------------------
# the driver

def worker_args(args, steps, warmup, result):
    return ["--worker", "--model", args.model, "--batch", str(args.batch), "--image-size", str(args.image_size),
            "--width", str(args.width), "--seed", str(args.seed), "--steps", str(steps), "--warmup", str(warmup),
            "--kvstore", "dist_sync", "--result", result]


def launch_job(args, workers, steps, warmup, verbose=False):
    """Run one dist_sync job through lib.tools.launch; returns (rank 0's result, launcher stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "lib.tools.launch", "-n", str(workers), "-s", str(args.servers),
               "--timeout", str(args.timeout)] + (["--env", "PS_VERBOSE=2"] if verbose else []) + \
              ["--", sys.executable, "-m", "bench.dist"] + worker_args(args, steps, warmup, result)
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=args.timeout + 60)
        if proc.returncode != 0:
            raise SystemExit(f"bench.dist: the {workers}-worker job failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
        with open(result, "r", encoding="utf-8") as f:
            return json.load(f), proc.stderr


def server_value_bytes(log):
    """Value bytes the servers received (requests) and sent (responses), from PS_VERBOSE=2 lines."""
    received = sent = 0
    for line in log.splitlines():
        if not line.startswith("[server"):
            continue
        match = MESSAGE.search(line)
        if not match:
            continue
        sizes = [int(s) for s in re.findall(r"data_size=(\d+)", match.group("body"))]
        values = sizes[1] if len(sizes) >= 2 else 0       # keys, values[, lengths]
        if match.group("request") == "1":
            received += values
        else:
            sent += values
    return received, sent


def measured_bytes_per_step(args, workers):
    _, short = launch_job(args, workers, steps=1, warmup=0, verbose=True)
    _, longer = launch_job(args, workers, steps=3, warmup=0, verbose=True)
    r1, s1 = server_value_bytes(short)
    r3, s3 = server_value_bytes(longer)
    return (r3 - r1) / 2, (s3 - s1) / 2


def human_bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000.0


def fgfa_param_bytes(settings, macs=False):
    """Parameter counts of the FGFA configs (built with fgfa.train.build_model, random weights);
    with ``macs`` also the convolution work of a training step (fgfa_forward_gmacs)."""
    from fgfa.config import get_config
    from fgfa.train import build_model
    cfg_dir = os.path.join(PROJECT_ROOT, "experiments", "fgfa_rfcn", "cfgs")
    rows = []
    for name, (cfg_name, overrides, classes) in settings.items():
        cfg = get_config(os.path.join(cfg_dir, cfg_name), overrides + ["NETWORK.PRETRAINED=''"])
        mx.random.seed(0)
        model = build_model(cfg, classes, ctx=mx.cpu())
        parts = {}
        for part in ("features", "embed", "flownet", "rpn", "rfcn"):
            block = getattr(model, part, None)
            if block is not None:
                parts[part] = trained_bytes(block)[1]
        total = sum(int(np.prod(p.shape)) for p in model._collect_params_with_prefix().values())
        count, nbytes = trained_bytes(model)
        row = {"setting": name, "config": cfg_name, "parameters": total, "trained_parameters": count,
               "trained_bytes": nbytes, "trained_bytes_by_part": parts}
        if macs:
            row["forward_gmacs"] = fgfa_forward_gmacs(model, cfg)
        rows.append(row)
        del model
    return rows


def fgfa_forward_gmacs(model, cfg):
    """Convolution GMACs of one training step's forward pass (lib.flops.conv_macs, one real forward
    of each part on random input at the training scale): the features (+ embedding) of every frame
    of the step, the flows of the key frame to each reference frame, the R-FCN head's convolutions
    (the position-sensitive pooling is not a convolution). Backward costs about twice the forward."""
    from lib.flops import conv_macs
    height, width = cfg.IMAGE.SCALES[0]
    image = mx.nd.random.uniform(shape=(1, 3, height, width))
    frames = 3 if model.aggregate else 1           # the key frame and 2 reference frames (reference repo)
    per_frame = conv_macs(model.features, image)
    feat = model.features(image)
    out = {"features_per_frame": per_frame / 1e9, "frames_per_step": frames}
    if model.aggregate:
        out["embed_per_frame"] = conv_macs(model.embed, feat) / 1e9
        out["flow_per_pair"] = conv_macs(model.flownet, image, image) / 1e9
    half = model.feat_channels // 2
    rois = mx.nd.array([[0, 0, 0, 15, 15]])
    out["head"] = (conv_macs(model.rpn, feat[:, :half]) + conv_macs(model.rfcn, feat[:, half:], rois)) / 1e9
    out["step_forward"] = (frames * (out["features_per_frame"] + out.get("embed_per_frame", 0.0))
                           + (frames - 1) * out.get("flow_per_pair", 0.0) + out["head"])
    return out


FGFA_SETTINGS = {
    # the paper's FGFA: ResNet-101 (conv1 + res2 frozen, frozen BN), FlowNet, embedding, R-FCN head, 30 classes
    "fgfa_paper": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml", [], 30),
    "rfcn_paper": ("resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml", ["NETWORK.AGGREGATE=false"], 30),
}


# ----------------------------------------------------------------------------------------------
# R-FCN through its entry point

RFCN_CONFIGS = {
    "rfcn_tiny": os.path.join("experiments", "rfcn", "cfgs", "rfcn_tiny.yaml"),
    "rfcn_speedtrap_cpu": os.path.join("experiments", "rfcn", "cfgs", "rfcn_speedtrap_cpu.yaml"),
}


def rfcn_config(name):
    from fgfa.config import get_config
    return get_config(os.path.join(PROJECT_ROOT, RFCN_CONFIGS[name]))


def rfcn_trained_bytes(name, num_classes):
    """(count, bytes) of the parameters the Trainer trains (FREEZE patterns, frozen stages applied)."""
    from fgfa.train import build_model
    from lib.train import training_config
    from lib.train.loop import prepare_params
    cfg = rfcn_config(name)
    mx.random.seed(0)
    model = build_model(cfg, num_classes, ctx=mx.cpu())
    params = prepare_params(model, training_config(cfg.TRAIN)).values()
    return (sum(int(np.prod(p.shape)) for p in params),
            sum(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize for p in params))


def rfcn_prepare_data(name):
    """Load (and for synthetic sets generate) the training data once, before several workers read it;
    returns (images, classes)."""
    from fgfa.train import load_train_set
    dataset = load_train_set(rfcn_config(name))
    return len(dataset), dataset.num_classes


def rfcn_command(args, out_dir, workers, steps, epochs, kvstore):
    return [sys.executable, os.path.join("experiments", "rfcn", "train_test.py"), "--cfg",
            RFCN_CONFIGS[args.model], "--skip-test", "--set", f"OUTPUT_DIR={out_dir}", f"TRAIN.EPOCHS={epochs}",
            f"TRAIN.MAX_BATCHES={workers * steps}", f"TRAIN.BATCH_SIZE={args.batch}", f"TRAIN.KVSTORE={kvstore}",
            "TRAIN.PROGRESS=false", "TRAIN.CHECKPOINT_EVERY=1000"]


def rfcn_run(args, workers, steps, epochs=2, verbose=False):
    """One R-FCN training run (``workers`` 0: one process without the launcher); returns (rank 0's
    {images_per_second, seconds, steps, ...}, the launcher's output)."""
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = os.path.join(tmp, "run")
        if workers == 0:
            cmd = rfcn_command(args, out_dir, 1, steps, epochs, "device")
        else:
            cmd = [sys.executable, "-m", "lib.tools.launch", "-n", str(workers), "-s", str(args.servers),
                   "--timeout", str(args.timeout)] + (["--env", "PS_VERBOSE=2"] if verbose else []) + \
                  ["--"] + rfcn_command(args, out_dir, workers, steps, epochs, "dist_sync")
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=args.timeout + 60)
        if proc.returncode != 0:
            raise SystemExit(f"bench.dist: the {workers or 'single'}-worker {args.model} run failed (exit "
                             f"{proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
        with open(os.path.join(out_dir, "history.json"), "r", encoding="utf-8") as f:
            history = json.load(f)
    ends = [0] + history["epoch_ends"]
    last = history["epochs"][-1]
    timed_steps = ends[-1] - ends[-2]
    images = max(1, workers) * args.batch * timed_steps
    return ({"num_workers": max(1, workers), "seconds": last["seconds"], "steps": timed_steps, "batch": args.batch,
             "images_per_second": images / last["seconds"] if last["seconds"] > 0 else 0.0}, proc.stderr)


def rfcn_measured_bytes_per_step(args, workers):
    _, short = rfcn_run(args, workers, steps=1, epochs=1, verbose=True)
    _, longer = rfcn_run(args, workers, steps=3, epochs=1, verbose=True)
    r1, s1 = server_value_bytes(short)
    r3, s3 = server_value_bytes(longer)
    return (r3 - r1) / 2, (s3 - s1) / 2


def rfcn_rows(args, counts):
    samples, num_classes = rfcn_prepare_data(args.model)
    count, nbytes = rfcn_trained_bytes(args.model, num_classes)
    baseline, _ = rfcn_run(args, 0, args.steps)
    base = {"trained_parameters": count, "trained_bytes": nbytes, "samples": samples}
    rows = [{"workers": 1, "kvstore": "none", **baseline, **base, "measured_in": 0.0, "measured_out": 0.0}]
    for workers in counts:
        result, _ = rfcn_run(args, workers, args.steps)
        received, sent = (None, None) if args.no_measure else rfcn_measured_bytes_per_step(args, workers)
        rows.append({"workers": workers, "kvstore": "dist_sync", **result, **base, "measured_in": received,
                     "measured_out": sent})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.dist", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, rfcn_tiny, rfcn_speedtrap_cpu or a gluoncv "
                                                         "classification model name")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="images per worker and step")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32, help="tiny: channels of its convolutions")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="bound of each job (seconds)")
    parser.add_argument("--no-measure", action="store_true", help="skip the PS_VERBOSE byte-count jobs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 timed steps (a smoke run)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--param-bytes", choices=("fgfa",), help="print the FGFA parameter bytes and exit")
    parser.add_argument("--macs", action="store_true",
                        help="with --param-bytes: also count a training step's convolution GMACs (one "
                             "forward pass of each part at the training scale: seconds on a CPU)")
    # worker mode (started by lib.tools.launch)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kvstore", default="dist_sync", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.param_bytes:
        rows = fgfa_param_bytes(FGFA_SETTINGS, macs=args.macs)
        for row in rows:
            parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in row["trained_bytes_by_part"].items())
            print(f"{row['setting']}: {row['parameters'] / 1e6:.2f} M parameters, {row['trained_parameters'] / 1e6:.2f} M "
                  f"trained = {human_bytes(row['trained_bytes'])} float32 ({parts})")
            if "forward_gmacs" in row:
                print("  forward GMACs of a training step: " + ", ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row["forward_gmacs"].items()))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rows, f, indent=1)
        return 0
    rfcn = args.model in RFCN_CONFIGS
    if args.quick:
        args.batch, args.image_size, args.width, args.steps, args.warmup = 2, 16, 8, 2, 1
        if rfcn:
            args.batch = 1
    try:
        counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        print(f"bench.dist: --workers {args.workers!r}: expected counts like 1,2", file=sys.stderr)
        return 2
    if rfcn:
        rows = rfcn_rows(args, counts)
        baseline = rows[0]
        shape = f"config {RFCN_CONFIGS[args.model]} ({baseline['samples']} training images)"
        schedule = f"epoch 2 of {args.steps} steps per worker timed after epoch 1"
    else:
        rows = []
        base_args = argparse.Namespace(**{**vars(args), "kvstore": "none", "result": None})
        baseline = run_worker(base_args)
        rows.append({"workers": 1, "kvstore": "none", **baseline, "measured_in": 0.0, "measured_out": 0.0})
        for workers in counts:
            result, _ = launch_job(args, workers, args.steps, args.warmup)
            received, sent = (None, None) if args.no_measure else measured_bytes_per_step(args, workers)
            rows.append({"workers": workers, "kvstore": "dist_sync", **result, "measured_in": received,
                         "measured_out": sent})
        shape = f"{args.image_size}x{args.image_size}"
        schedule = f"{args.steps} timed steps after {args.warmup}"
    nbytes = baseline["trained_bytes"]
    print(f"bench.dist: model {args.model}, {baseline['trained_parameters']} trained parameters = "
          f"{human_bytes(nbytes)} float32; batch {args.batch} per worker, {shape}, "
          f"{schedule}; {args.servers} server(s); OMP threads {threads()}")
    print(f"{'workers':>7} {'kvstore':>9} {'images/s':>9} {'s/step':>8} {'model: push+pull per worker':>28} "
          f"{'measured: servers in / out per step':>36}")
    for row in rows:
        per_step = row["seconds"] / max(1, row["steps"])
        model = "-" if row["kvstore"] == "none" else f"{human_bytes(nbytes)} + {human_bytes(nbytes)}"
        if row["kvstore"] == "none":
            measured = "-"
        elif row["measured_in"] is None:
            measured = "(not measured)"
        else:
            measured = f"{human_bytes(row['measured_in'])} / {human_bytes(row['measured_out'])}"
        print(f"{row['workers']:>7} {row['kvstore']:>9} {row['images_per_second']:>9.1f} {per_step:>8.4f} "
              f"{model:>28} {measured:>36}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "batch": args.batch, "image_size": args.image_size,
                       "servers": args.servers, "threads": threads(), "quick": args.quick, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
