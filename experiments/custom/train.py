"""Train the detector of a recipe config (DETECTOR: ssdlite | lstm_ssd | rfcn | fgfa | m2det).

    python experiments/custom/train.py --cfg experiments/custom/m2det.yaml [--set TRAIN.ITERATIONS=200]

Loads DATASET.TRAIN (one dataset spec or a list, e.g. your labelled frames plus a folder of background
images), optionally cuts training tiles (TILING.TRAIN), maps the recipe keys onto the family's own
config (experiments.custom.recipe.family_config) and runs that family's training (lib.family). OUTPUT_DIR
then holds run.json, config.yaml (the family config), recipe.yaml and the checkpoints that
lib.tools.export and experiments/custom/evaluate.py read. Several workers: ``python -m lib.tools.launch -n 2
-s 1 -- python experiments/custom/train.py --cfg ... --set TRAIN.KVSTORE=dist_sync`` (rank 0 alone writes).
"""
import argparse
import json
import logging
import sys

from experiments.custom import recipe
from lib.cli import user_errors_exit_2
from lib.runtime import relaunch_with_huge_pages


@user_errors_exit_2
def main(argv=None):
    relaunch_with_huge_pages(argv)   # faster CPU training (lib.runtime)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True, help="recipe yaml (experiments/custom/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. TRAIN.ITERATIONS=200 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = recipe.load_recipe_config(args.cfg, args.overrides)
    result = recipe.train(cfg, progress=False if args.no_progress else None)
    summary = result["summary"]
    if summary.get("rank", 0) != 0:      # another worker of a distributed job: rank 0 reports
        return 0
    print(json.dumps({"detector": cfg.DETECTOR, "out_dir": result["out_dir"], "classes": result["classes"],
                      "train_images": result["train_images"], "checkpoint": summary.get("checkpoint"),
                      "wall_time": summary.get("wall_time")}, indent=1, default=str))
    # the run folder keeps its config (recipe.yaml, with any --set applied): export needs no --cfg
    print(f"next: python -m lib.tools.export --model {result['out_dir']} --format mxnet "
          f"--out {result['out_dir']}/export")
    return 0


if __name__ == "__main__":
    sys.exit(main())
