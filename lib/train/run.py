"""The run folder: one layout for every detector family, written and read by ``RunFolder``.

    run.json        {"format": 1, "family": "rfcn", "classes": [...], "config": "config.yaml",
                     "recipe": "recipe.yaml" or null}
    config.yaml     the family's resolved config (loadable again with that family's loader)
    recipe.yaml     the recipe config, for runs of experiments/custom/train.py
    ckpt-NNNN.*     checkpoints (lib.train.checkpoint), best.params / best.json
    history.json, loss_curve.png, train.log, tb/

Folders of earlier releases are read too, with a warning: the recipe's ``detector.json`` +
``family.yaml`` + ``custom.yaml``, M2Det's ``m2det_config.yaml`` + ``classes.json`` (a list) and
FGFA's ``classes.json`` (``{"classes": [...]}``, no config: its family comes from the caller).
"""
import json
import logging
import os
import warnings

from lib.config import dump_config, read_yaml
from lib.errors import UserError
from lib.fileio import atomic_write_json

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
RECIPE_FILE = "recipe.yaml"
FORMAT = 1

# earlier layouts: (marker file, family or None, config file, classes file)
LEGACY = (
    ("detector.json", None, "family.yaml", "detector.json"),
    ("m2det_config.yaml", "m2det", "m2det_config.yaml", "classes.json"),
    ("classes.json", None, None, "classes.json"),
)

log = logging.getLogger("lib.train.run")


class RunFolderError(UserError, FileNotFoundError):
    """The folder is not a run folder (or its files contradict each other); the message says which file."""


class RunFolder:
    """A training run's folder. ``write`` at the start of training; ``family``, ``classes``,
    ``config_path``, ``recipe_path`` to read it back."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.family, self.classes = None, None
        self.config_path, self.recipe_path, self.legacy = None, None, None

    # ---- writing ----------------------------------------------------------------------------
    def write(self, family, classes, config, recipe=None):
        """Record the family, the classes and the resolved config(s) (atomic writes)."""
        os.makedirs(self.path, exist_ok=True)
        dump_config(config, os.path.join(self.path, CONFIG_FILE))
        if recipe is not None:
            dump_config(recipe, os.path.join(self.path, RECIPE_FILE))
        atomic_write_json(os.path.join(self.path, RUN_FILE),
                          {"format": FORMAT, "family": family, "classes": [str(c) for c in classes],
                           "config": CONFIG_FILE, "recipe": RECIPE_FILE if recipe is not None else None})
        self.family, self.classes = family, list(classes)
        self.config_path = os.path.join(self.path, CONFIG_FILE)
        self.recipe_path = os.path.join(self.path, RECIPE_FILE) if recipe is not None else None
        return self

    # ---- reading ----------------------------------------------------------------------------
    @classmethod
    def read(cls, path, family=None):
        """Open an existing run folder. ``family``: what a legacy folder without that record holds."""
        run = cls(path)
        if not os.path.isdir(run.path):
            raise RunFolderError(f"run folder not found: {run.path}")
        run_file = os.path.join(run.path, RUN_FILE)
        if os.path.isfile(run_file):
            meta = _read_json(run_file)
            if not isinstance(meta, dict) or "family" not in meta or "classes" not in meta:
                raise RunFolderError(f"{run_file}: not a run record (needs 'family' and 'classes')")
            run.family, run.classes = meta["family"], list(meta["classes"])
            run.config_path = os.path.join(run.path, meta.get("config") or CONFIG_FILE)
            run.recipe_path = os.path.join(run.path, meta["recipe"]) if meta.get("recipe") else None
        else:
            run._read_legacy(family)
        if family is not None and run.family is not None and run.family != family:
            raise RunFolderError(f"{run.path} holds a {run.family} run, not {family}")
        if run.config_path and not os.path.isfile(run.config_path):
            raise RunFolderError(f"{run.config_path} missing: the run folder {run.path} is incomplete")
        return run

    def _read_legacy(self, family):
        for marker, legacy_family, config, classes_file in LEGACY:
            if not os.path.isfile(os.path.join(self.path, marker)):
                continue
            classes = _read_json(os.path.join(self.path, classes_file))
            if marker == "detector.json":
                self.family, classes = classes.get("detector"), classes.get("classes")
                custom = os.path.join(self.path, "custom.yaml")
                self.recipe_path = custom if os.path.isfile(custom) else None
            else:
                self.family = legacy_family or family
            if isinstance(classes, dict):
                classes = classes.get("classes")
            if not isinstance(classes, list):
                raise RunFolderError(f"{os.path.join(self.path, classes_file)}: no class list")
            self.classes = [str(c) for c in classes]
            self.config_path = os.path.join(self.path, config) if config else None
            self.legacy = marker
            message = (f"{self.path}: run folder of an earlier release ({marker}); it loads, and the next "
                       f"training into it writes {RUN_FILE} (this layout is read until the next release)")
            warnings.warn(message, DeprecationWarning, stacklevel=3)
            log.warning(message)
            return
        raise RunFolderError(f"{self.path}: not a run folder (no {RUN_FILE}); train into it first")

    def config(self):
        """The saved family config as a plain dict (None for a legacy FGFA folder, which has none)."""
        return read_yaml(self.config_path) if self.config_path else None

    def recipe(self):
        return read_yaml(self.recipe_path) if self.recipe_path else None

    def file(self, name):
        return os.path.join(self.path, name)

    def __repr__(self):
        return f"RunFolder({self.path!r}, family={self.family!r})"


def _read_json(path):
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None


def resolve_run(path):
    """A run folder or a checkpoint file inside one (ckpt-NNNN.json / .params) -> (folder, checkpoint or None)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return path, None
    if os.path.isfile(path):
        if not path.endswith((".json", ".params")):
            raise RunFolderError(f"{path}: expected a run folder, a ckpt-*.json or a .params file")
        return os.path.dirname(path), path
    raise RunFolderError(f"model not found: {path}")
