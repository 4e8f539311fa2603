"""Train then test FGFA (R-FCN with flow-guided feature aggregation) from a yaml config.

    python experiments/fgfa_rfcn/train_test.py --cfg experiments/fgfa_rfcn/cfgs/<name>.yaml
        [--set KEY=VALUE ...] [--skip-train] [--skip-test] [--checkpoint FILE]

Relative paths in the config resolve against the project root. Outputs go to OUTPUT_DIR:
checkpoints, train.log, tb/, test/results.md, test/pr_curve.png, test/metrics.json.
"""
import sys

from fgfa.experiment import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__, aggregate=True))
