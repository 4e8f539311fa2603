"""Command-line driver shared by experiments/fgfa_rfcn/train_test.py and experiments/rfcn/train_test.py.

Under ``python -m lib.tools.launch`` with ``--set TRAIN.KVSTORE=dist_sync`` every worker trains; rank 0
alone writes OUTPUT_DIR (logs, checkpoints) and runs the test.
"""
import argparse

from lib.cli import user_errors_exit_2
from lib.config import ConfigError
from lib.train import setup_logger
from lib.train.distributed import config_contexts, join_job

from .config import get_config
from .test import run_test
from .train import output_dir, train


def parse_args(argv=None, description=""):
    parser = argparse.ArgumentParser(description=description.strip().split("\n\n")[0],
                                     epilog="\n\n".join(description.strip().split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="yaml config file")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. TRAIN.EPOCHS=1 TEST.K=4 (repeatable)")
    parser.add_argument("--skip-train", action="store_true", help="only test (latest checkpoint)")
    parser.add_argument("--skip-test", action="store_true", help="only train")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to test (.params or .json)")
    return parser.parse_args(argv)


@user_errors_exit_2
def main(argv=None, description="", aggregate=None):
    """Train then test; ``aggregate`` (True/False) rejects configs meant for the other script. A user
    error (config, data, checkpoint, path) is one 'error:' line and exit status 2 (lib.cli)."""
    args = parse_args(argv, description)
    cfg = get_config(args.cfg, args.set)
    if aggregate is not None and bool(cfg.NETWORK.AGGREGATE) != aggregate:
        raise ConfigError(f"{args.cfg}: NETWORK.AGGREGATE is {cfg.NETWORK.AGGREGATE}; this script runs "
                          f"{'FGFA (experiments/fgfa_rfcn)' if aggregate else 'the R-FCN baseline (experiments/rfcn)'}")
    job = join_job(cfg.TRAIN.KVSTORE, config_contexts(cfg)) if not args.skip_train else None
    if job is not None and not job.is_chief:    # another worker of a distributed job: train only
        train(cfg)
        return 0
    logger = setup_logger(output_dir(cfg), "train_test")
    model = classes = None
    if not args.skip_train:
        summary = train(cfg, logger=logger)
        model, classes = summary["model"], summary["classes"]
        logger.info("training wall time %.1f s", summary["wall_time"])
    if not args.skip_test:
        if args.checkpoint is not None:
            model = None
        result = run_test(cfg, model=model, classes=classes, checkpoint=args.checkpoint, logger=logger)
        print(f"mAP {result['mAP']:.4f}")
    return 0
