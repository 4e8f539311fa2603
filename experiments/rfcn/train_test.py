"""Train then test the R-FCN single-frame baseline (FGFA's network with aggregation off).

    python experiments/rfcn/train_test.py --cfg experiments/rfcn/cfgs/<name>.yaml
        [--set KEY=VALUE ...] [--skip-train] [--skip-test] [--checkpoint FILE]

Same pipeline as experiments/fgfa_rfcn/train_test.py; these configs set NETWORK.AGGREGATE: false.
"""
import sys

from fgfa.experiment import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__, aggregate=False))
