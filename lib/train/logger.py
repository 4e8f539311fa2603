"""Console + file logging for training runs.

The console handler writes through ``tqdm.write`` so log lines do not break an active progress bar.
"""
import logging
import os
import sys

import tqdm

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
# Attribute set on the handlers we add, so a second call replaces them instead of duplicating.
_TAG = "_videodet_handler"


class TqdmConsoleHandler(logging.StreamHandler):
    """A stream handler that prints via tqdm.write (safe while a tqdm bar is shown)."""

    def __init__(self, stream=None):
        super().__init__(stream or sys.stderr)

    def emit(self, record):
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging must never crash training
            self.handleError(record)


def setup_logger(out_dir, name, level=logging.INFO, console=True):
    """Return logger ``name`` writing to the console and to ``out_dir/<name>.log`` (appending).

    Calling it again (e.g. on resume, or with another ``out_dir``) replaces the handlers it added
    before, so no line is ever written twice. ``out_dir=None`` gives a console-only logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False  # the root logger would print every line a second time
    for handler in [h for h in logger.handlers if getattr(h, _TAG, False)]:
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    if console:
        stream_handler = TqdmConsoleHandler()
        stream_handler.setFormatter(formatter)
        setattr(stream_handler, _TAG, True)
        logger.addHandler(stream_handler)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(out_dir, f"{name}.log"), encoding="utf-8")
        file_handler.setFormatter(formatter)
        setattr(file_handler, _TAG, True)
        logger.addHandler(file_handler)
    return logger
