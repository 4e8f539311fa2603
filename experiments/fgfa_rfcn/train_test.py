"""Train then test FGFA (R-FCN with flow-guided feature aggregation) from a yaml config.

    python experiments/fgfa_rfcn/train_test.py --cfg experiments/fgfa_rfcn/cfgs/<name>.yaml
        [--set KEY=VALUE ...] [--skip-train] [--skip-test] [--checkpoint FILE]

Relative paths in the config resolve against the project root. Outputs go to OUTPUT_DIR:
checkpoints, train.log, tb/, loss_curve.png, test/results.md, test/metrics.json, test/detections.json
and PR curves test/pr_all.png, test/pr_<class>.png (test_seqnms/ with TEST.SEQ_NMS).
"""
import sys

from fgfa.experiment import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__, aggregate=True))
