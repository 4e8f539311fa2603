"""The base class of the errors a user causes (a config key, a dataset file, a checkpoint, a run folder,
a frame source, pretrained weights, a value given on the command line). Commands turn them into one
'error:' line and exit status 2 (lib.cli); any other exception is a bug and keeps its traceback.

Each concrete error also derives from the built-in type callers have always caught (ConfigError is a
ValueError, CheckpointError a RuntimeError, RunFolderError a FileNotFoundError, ...). This module
imports nothing, so the lightest modules (lib.frames, the exported-model runner) can use it.
"""


class UserError(Exception):
    """An error in what the user gave; the message names the file / key / value and what is wrong."""
