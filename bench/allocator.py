"""Training-step time with glibc's default malloc vs huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1).

    python -m bench.allocator [--case m2det_lite0_384x672_b8] [--steps N] [--rounds R] [--quick]

MXNet 1.9 has no CPU memory pool: an imperative training step mallocs every operator's output anew,
and glibc maps the large ones fresh from the kernel, 4 KiB page by page. M2Det's training commands
therefore re-launch themselves with the tunable (lib.runtime.relaunch_with_huge_pages). This bench
runs the same step in child processes, one per allocator setting, alternating in rounds so drift in
the machine's speed hits both alike, and prints seconds per step, page faults and kernel time per step
of each, and the ratio. Random weights and inputs (the step's cost does not depend on the values).
``--case rfcn_lite0_speedtrap_tiles_b2`` times the R-FCN training command itself instead (its second
epoch; needs ../shared/data/speedtrap).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from lib.config import PROJECT_ROOT
from lib.runtime import HUGE_PAGES_TUNABLE

SETTINGS = {"glibc default": "", "huge pages": HUGE_PAGES_TUNABLE}
CASES = {
    # the 16:9 M2Det of the speedtrap hold-out (imperative, as m2det.train runs it), untrained trunk
    "m2det_lite0_384x672_b8": ("speedtrap47_tum2_384x672_lite0_ssdaug.yaml", ["PRETRAINED="]),
    "m2det_mobilenetv2_384_b2": ("speedtrap_mobilenet.yaml", ["TRAIN.BATCH_SIZE=2"]),    # --quick
}
# the R-FCN recipe's network (Lite0 at stride 16, frozen BN and first stages; untrained trunk) on the
# speedtrap tiles, timed by its own training command (hybridized parts, data loading included)
RFCN_CASE = "rfcn_lite0_speedtrap_tiles_b2"
RFCN_SETTINGS = ["NETWORK.BACKBONE=efficientnet_lite0", "NETWORK.NORM=frozen", "NETWORK.FROZEN_STAGES=2",
                 "TRAIN.PROGRESS=false", "TRAIN.CHECKPOINT_EVERY=1000"]


def child(case, warmup, steps):
    """Time ``steps`` steps after ``warmup``; print one JSON line."""
    import mxnet as mx
    from bench.train_step import m2det_step
    config, overrides = CASES[case]
    step = m2det_step(False, config, overrides)
    for _ in range(warmup):
        step()
    mx.nd.waitall()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    mx.nd.waitall()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"step_s": seconds / steps, "faults": (after.ru_minflt - before.ru_minflt) / steps,
                      "sys_s": (after.ru_stime - before.ru_stime) / steps}))


def run_rfcn(tunables, steps):
    """The R-FCN training command for two epochs of ``steps`` batches: the first is the warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, os.path.join("experiments", "rfcn", "train_test.py"), "--cfg",
                   os.path.join("experiments", "rfcn", "cfgs", "rfcn_speedtrap_cpu.yaml"), "--skip-test",
                   "--set", f"OUTPUT_DIR={tmp}/run", "--set", "TRAIN.EPOCHS=2", "--set", f"TRAIN.MAX_BATCHES={steps}"]
        for setting in RFCN_SETTINGS:
            command += ["--set", setting]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, cwd=PROJECT_ROOT, env=dict(os.environ, GLIBC_TUNABLES=tunables), check=True,
                       capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(os.path.join(tmp, "run", "history.json"), encoding="utf-8") as f:
            seconds = json.load(f)["epochs"][-1]["seconds"]
    # page faults and kernel time of the whole command (start-up and both epochs), per timed step
    return {"step_s": seconds / steps, "faults": (after.ru_minflt - before.ru_minflt) / (2 * steps),
            "sys_s": (after.ru_stime - before.ru_stime) / (2 * steps)}


def run_child(case, tunables, warmup, steps):
    if case == RFCN_CASE:
        return run_rfcn(tunables, steps)
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    out = subprocess.run([sys.executable, "-m", "bench.allocator", "--child", "--case", case,
                          "--warmup", str(warmup), "--steps", str(steps)],
                         cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--case", default="m2det_lite0_384x672_b8", choices=sorted(CASES) + [RFCN_CASE])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per child process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="child processes per setting, alternating")
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 x0.5 at 384, batch 2, 1 round of 2 steps")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.case, args.steps, args.warmup, args.rounds = "m2det_mobilenetv2_384_b2", 2, 1, 1
    if args.child:
        child(args.case, args.warmup, args.steps)
        return 0
    runs = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, tunables in SETTINGS.items():
            runs[name].append(run_child(args.case, tunables, args.warmup, args.steps))
    print(f"{args.case}: training step (forward, loss, backward, SGD update), median of {args.rounds} "
          f"processes of {args.steps} steps each")
    result = {"case": args.case, "settings": {}}
    for name, rows in runs.items():
        summary = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        result["settings"][name] = summary
        print(f"| {name:<13} | {summary['step_s']:.3f} s/step | {summary['faults']:>9.0f} page faults/step "
              f"| {summary['sys_s']:.2f} s kernel/step |")
    ratio = result["settings"]["glibc default"]["step_s"] / result["settings"]["huge pages"]["step_s"]
    result["speedup"] = ratio
    print(f"huge pages: {ratio:.2f}x the steps per second of glibc's default")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
