"""Train and/or test LSTM-SSD, its frame baseline or Looking Fast and Slow from one yaml config.

    python experiments/lstm_ssd/train_test.py --cfg experiments/lstm_ssd/cfgs/synthetic_lstm_ssd.yaml
        [--set TRAIN.EPOCHS=5 ...] [--model MODEL.params] [--print-images] [--policy fixed|large|...]

PHASE in the config lists what to do (train, test), as in the PyTorch LSTM-SSD port; ``policy`` trains
the adaptive interleaving policy (Double DQN) of a trained fast_slow model; ``assemble`` saves the model
built from PRETRAINED and MODEL.WEIGHTS without training (a new model type around trained parts). Training writes
OUTPUT_DIR/model.params (+ .channels.json) and the lib.train logs/checkpoints (resumable); testing
streams the TEST set with INTERLEAVE.POLICY, writes OUTPUT_DIR/test_results.json, annotated images to
OUTPUT_DIR/test_images when TEST.PRINT_IMAGES (or --print-images), and appends a row (config, mAP,
fps, params, MACs) to the run's results table, OUTPUT_DIR/results.{csv,md} (TEST.RESULTS_TABLE names
another .md, e.g. one table shared by several runs). For POLICY adaptive, training also trains the
Double-DQN policy (OUTPUT_DIR/policy.params). Under ``python -m lib.tools.launch`` with ``--set
TRAIN.KVSTORE=dist_sync`` every worker trains; rank 0 alone writes OUTPUT_DIR, trains the policy and tests.
A mistake in the config, the data or the model: one line ``error: ...`` and exit code 2 (lib.cli).
"""
import argparse
import datetime
import json
import os
import sys

from lib.cli import user_errors_exit_2
from lib.config import PROJECT_ROOT, ConfigError, dump_config, project_path
from lib.train.distributed import config_contexts, join_job
from lstm_ssd import config as lstm_config
from lstm_ssd.detector import load_model, save_model
from lstm_ssd.flops import model_summary
from lstm_ssd.policy import PolicyAgent, policy_features
from lstm_ssd.results import append_result
from lstm_ssd.train import MODEL_FILE, assemble_model, evaluate, train_adaptive_policy, train_model

# assemble: the model from PRETRAINED + MODEL.WEIGHTS saved as OUTPUT_DIR/model.params without training
PHASES = ("assemble", "train", "policy", "test")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", required=True, help="yaml config (experiments/lstm_ssd/cfgs/*.yaml)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--model", default=None, help="weights to test (default OUTPUT_DIR/model.params)")
    ap.add_argument("--print-images", action="store_true", help="save annotated test images")
    ap.add_argument("--policy", default=None, help="override INTERLEAVE.POLICY for the test")
    ap.add_argument("--note", default="", help="free text for the results table")
    return ap.parse_args(argv)


def results_table(cfg, out_dir):
    """The results table of a run: TEST.RESULTS_TABLE (relative to the project root), or by default
    OUTPUT_DIR/results.md (+ .csv): a run never writes into the tracked experiments/ folder."""
    return project_path(cfg.TEST.RESULTS_TABLE) if cfg.TEST.RESULTS_TABLE else os.path.join(out_dir, "results.md")


@user_errors_exit_2
def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = lstm_config.load(args.cfg, args.set)
    except ValueError as err:     # lstm_ssd.config's checks of the values (ConfigError is one too)
        raise ConfigError(str(err)) from None
    return train_test(args, cfg)


def train_test(args, cfg):
    for phase in cfg.PHASE:
        if phase not in PHASES:
            raise ConfigError(f"{cfg.CONFIG_FILE or args.cfg}: PHASE entries must be {', '.join(PHASES)}, "
                              f"got {phase!r}")
    if "assemble" in cfg.PHASE and "train" in cfg.PHASE:
        raise ConfigError(f"{cfg.CONFIG_FILE or args.cfg}: PHASE assemble saves the model without training; "
                          f"it does not go with train")
    out_dir = project_path(cfg.OUTPUT_DIR)
    if "train" in cfg.PHASE and not join_job(cfg.TRAIN.KVSTORE, config_contexts(cfg)).is_chief:
        train_model(cfg, out_dir=out_dir)      # another worker of a distributed job: rank 0 does the rest
        return 0
    os.makedirs(out_dir, exist_ok=True)
    if "train" in cfg.PHASE or "assemble" in cfg.PHASE:
        # the resolved config, loadable again with --cfg (CONFIG_FILE is set by the loader, not a key);
        # a test-only run (e.g. on other data) leaves the trained run's record as it was
        dump_config({k: v for k, v in cfg.items() if k != "CONFIG_FILE"}, os.path.join(out_dir, "config.yaml"))
    model_path = args.model or os.path.join(out_dir, MODEL_FILE)
    policy_path = os.path.join(out_dir, "policy.params")
    train_info = {}
    net = None
    if "train" in cfg.PHASE:
        net, summary, seconds = train_model(cfg, out_dir=out_dir)
        train_info = {"train_iters": summary["iterations"], "train_seconds": round(seconds, 1)}
        print(f"saved {os.path.join(out_dir, MODEL_FILE)}")
    if "assemble" in cfg.PHASE:
        net = assemble_model(cfg, config_contexts(cfg))
        print(f"saved {save_model(net, os.path.join(out_dir, MODEL_FILE))} (assembled, not trained)")
    if "policy" in cfg.PHASE or ("train" in cfg.PHASE and cfg.INTERLEAVE.POLICY == "adaptive"):
        if net is None:
            net = load_model(cfg, model_path)
        agent = train_adaptive_policy(cfg, net)
        agent.save(policy_path)
        print(f"saved {policy_path}")
    if "test" in cfg.PHASE:
        if net is None:
            net = load_model(cfg, model_path)
        policy = args.policy or cfg.INTERLEAVE.POLICY
        agent = None
        if policy == "adaptive":
            agent = PolicyAgent(cfg.POLICY_NET.HISTORY, cfg.POLICY_NET.HIDDEN)
            state = net.zero_state(1)
            agent.load(cfg.POLICY_NET.WEIGHTS or policy_path,
                       policy_features(state, state, [], cfg.POLICY_NET.HISTORY).shape[1])
        print_dir = os.path.join(out_dir, "test_images") if (args.print_images or cfg.TEST.PRINT_IMAGES) else None
        result = evaluate(cfg, net, policy=policy, print_dir=print_dir, policy_net=agent)
        sizes = model_summary(net)
        row = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
               "config": os.path.relpath(os.path.abspath(args.cfg), PROJECT_ROOT) + (" " + " ".join(args.set) if args.set else ""),
               "model": cfg.MODEL.TYPE, "policy": result["policy"],
               "dataset": ", ".join(str(s.get("ROOT", s.get("FORMAT", ""))) for s in cfg.DATASET.VAL),
               "frames": result["frames"], "mAP": float(result["mAP"]), "fps": float(result["fps"]),
               "params": sizes["params"], "macs_large": sizes.get("macs_large", ""),
               "macs_small": sizes.get("macs_small", ""), "large_share": float(result["large_share"]),
               "subsets": " ".join(f"{name}={sub['mAP']:.4f}/{sub['frames']}fr"
                                   for name, sub in result["subsets"].items()),
               "note": args.note, **train_info}
        table = results_table(cfg, out_dir)
        append_result(row, table)
        with open(os.path.join(out_dir, "test_results.json"), "w", encoding="utf-8") as f:
            json.dump({**row, "per_class": result["per_class"], "by_distance": result["by_distance"]}, f,
                      indent=1, default=str)
        print(json.dumps(row, indent=1))
        if result["by_distance"]:
            print("mAP by frames since the last large step: " + " ".join(
                f"{name}={b['mAP']:.4f}/{b['frames']}fr" for name, b in result["by_distance"].items()))
        print(f"results table: {table}")
        if print_dir:
            print(f"annotated test images in {print_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
