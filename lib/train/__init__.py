"""Shared training utilities: logger, atomic checkpoints with exact resume, lr schedules, ``fit``."""
from .checkpoint import CheckpointError, CheckpointManager, CorruptCheckpointError, load_matching_parameters
from .logger import setup_logger
from .loop import TRAIN_DEFAULTS, TrainingError, seed_everything, training_config
from .trainer import Hook, Trainer, fit
from .schedule import LRSchedule, build_lr_schedule

__all__ = ["setup_logger", "CheckpointManager", "CheckpointError", "CorruptCheckpointError", "build_lr_schedule",
           "LRSchedule", "fit", "Trainer", "Hook", "TRAIN_DEFAULTS", "TrainingError", "seed_everything", "training_config", "load_matching_parameters"]
