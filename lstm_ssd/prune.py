"""Filter pruning after Li et al., "Pruning Filters for Efficient ConvNets" (arXiv 1608.08710).

Each prunable conv's output filters are ranked by the L1 norm of their weights; the smallest fraction
is removed, per layer or with one global threshold. Removal is physical: the conv, its BatchNorm, the
depthwise convs that follow those channels and the input channels of the next dense convs all shrink
(see ``PruneGroup``), so parameters, MACs and latency drop. Then optionally fine-tune.

    python -m lstm_ssd.prune --cfg CFG.yaml --model MODEL.params --ratio 0.5 [--mode layer|global]
                             [--finetune-epochs N] [--output PRUNED.params]
"""
import argparse
import sys

import numpy as np

from lib.cli import UsageError, user_errors_exit_2
from lib.fileio import atomic_write_json

from . import config as lstm_config
from .detector import load_model, save_model
from .flops import count_macs, count_params, measure_step_latency
from .train import evaluate, train


def filter_l1(conv):
    """L1 norm of each output filter of a ConvBN (sum of |w| over input channels and kernel)."""
    w = conv.weight.data().asnumpy()
    return np.abs(w).reshape(w.shape[0], -1).sum(axis=1)


def plan_pruning(groups, ratio, mode="layer", min_channels=1):
    """Channels to keep: {group name: sorted indices}.

    layer: each group drops floor(ratio * C) filters with the smallest L1 norm.
    global: filters of all groups ranked together by mean |w| (L1 over the filter's weight count, so
    layers with different fan-in compare), the lowest ``ratio`` of all filters dropped; every group
    keeps at least ``min_channels``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"--ratio must be in [0, 1), got {ratio}")
    if mode not in ("layer", "global"):
        raise ValueError(f"--mode must be 'layer' or 'global', got {mode!r}")
    norms = {g.name: filter_l1(g.producer) for g in groups}
    keep = {}
    if mode == "layer":
        for g in groups:
            n = norms[g.name]
            drop = min(int(np.floor(ratio * len(n))), len(n) - min_channels)
            order = np.argsort(n, kind="stable")          # smallest first
            keep[g.name] = np.sort(order[max(drop, 0):]).tolist()
        return keep
    scored = []
    for g in groups:
        fan = g.producer.weight.shape[1] * g.producer.kernel ** 2
        scored += [(v / fan, g.name, i) for i, v in enumerate(norms[g.name])]
    scored.sort(key=lambda t: t[0])
    budget = int(np.floor(ratio * len(scored)))
    removed = {g.name: set() for g in groups}
    size = {g.name: len(norms[g.name]) for g in groups}
    for _, name, i in scored:
        if budget == 0:
            break
        if size[name] - len(removed[name]) > min_channels:
            removed[name].add(i)
            budget -= 1
    for g in groups:
        keep[g.name] = [i for i in range(size[g.name]) if i not in removed[g.name]]
    return keep


def prune_detector(net, ratio, mode="layer", min_channels=1):
    """Prune ``net`` in place; returns {group: (before, after)} channel counts."""
    groups = net.prune_groups()
    keep = plan_pruning(groups, ratio, mode, min_channels)
    changes = {}
    for g in groups:
        before = g.channels
        if len(keep[g.name]) != before:
            g.apply(keep[g.name])
        changes[g.name] = (before, g.channels)
    net.clear_cached_graphs()
    return changes


def measure(net, repeats=10):
    out = {"params": count_params(net)}
    for e in net.extractor_names:
        out[f"macs_{e}"] = count_macs(net, e)
        out[f"latency_ms_{e}"] = 1000 * measure_step_latency(net, e, repeats=repeats)
    return out


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", required=True, help="yaml config the model was trained with")
    ap.add_argument("--model", required=True, help="trained .params file")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of filters to remove")
    ap.add_argument("--mode", choices=["layer", "global"], default="layer")
    ap.add_argument("--finetune-epochs", type=int, default=0)
    ap.add_argument("--finetune-lr-factor", type=float, default=0.5, help="fine-tuning rate = TRAIN.LR x this")
    ap.add_argument("--output", default=None, help="pruned .params (default: <model>-pruned<ratio>.params)")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps for the latency figures")
    args = ap.parse_args(argv)
    if not 0.0 <= args.ratio < 1.0:     # checked before the model is loaded and measured
        raise UsageError(f"--ratio {args.ratio:g}: the fraction of filters to remove must be in [0, 1)")
    if args.finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs {args.finetune_epochs}: must be >= 0")
    if args.repeats < 1:
        raise UsageError(f"--repeats {args.repeats}: must be at least 1")
    cfg = lstm_config.load(args.cfg)
    net = load_model(cfg, args.model)
    try:
        net.prune_groups()      # what this model's extractors allow, checked before anything is measured
    except ValueError as err:
        raise UsageError(f"{args.cfg}: {err}") from None
    before = measure(net, args.repeats)
    map_unpruned = None
    if args.finetune_epochs > 0:
        map_unpruned = evaluate(cfg, net)["mAP"]
    changes = prune_detector(net, args.ratio, args.mode)
    after = measure(net, args.repeats)
    out = args.output or args.model.replace(".params", "") + f"-pruned{args.ratio:g}.params"
    report = {"ratio": args.ratio, "mode": args.mode, "before": before, "after": after,
              "groups": {k: list(v) for k, v in changes.items()}}
    if args.finetune_epochs > 0:
        report["map_unpruned"] = map_unpruned
        report["map_before_finetune"] = evaluate(cfg, net)["mAP"]
        # a fresh folder: the original run's checkpoints hold the unpruned shapes
        # constant rate, no warm-up: a short recovery run, not a new schedule
        train(cfg, net, epochs=args.finetune_epochs, out_dir=out.replace(".params", "") + "_finetune", resume=False,
              train_overrides={"LR_SCHEDULE": "step", "LR_STEPS": [], "WARMUP_ITERS": 0, "WARMUP_EPOCHS": 0.0,
                               "LR": cfg.TRAIN.LR * args.finetune_lr_factor})
        report["map_after_finetune"] = evaluate(cfg, net)["mAP"]
    save_model(net, out)
    atomic_write_json(out.replace(".params", "") + ".prune.json", report, sort_keys=False)
    for key in before:
        print(f"{key:>20}: {before[key]:>14,.2f} -> {after[key]:>14,.2f}")
    for key in ("map_unpruned", "map_before_finetune", "map_after_finetune"):
        if key in report:
            print(f"{key}: {report[key]:.4f}")
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    result = main()       # the report, or the exit status of a user error
    sys.exit(result if isinstance(result, int) else 0)
