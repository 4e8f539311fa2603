"""The one error convention of every command: a user error is ONE line on stderr,
``error: <file / key / value>: what is wrong``, and exit status 2; a bug keeps its traceback.

    from lib.cli import user_errors_exit_2

    @user_errors_exit_2                      # or @user_errors_exit_2(MyOwnError) for more types
    def main(argv=None):
        ...

    if __name__ == "__main__":
        sys.exit(main())

User errors are the project's ``lib.errors.UserError`` types, which name what the user gave
(ConfigError: a config key; DatasetError: a dataset file; CheckpointError: a checkpoint;
RunFolderError: a run folder; FrameSourceError: a frame source; PretrainedError: pretrained weights;
UsageError: a command-line value), an ``OSError`` (a missing input, an unwritable output folder, a full
disk: the path is named) and ``SystemExit("error: ...")`` as some tools raise it. Anything else is a
bug: its traceback is shown. argparse's own errors (status 2, usage + message) are left as they are.
This module imports only lib.errors: the exported-model runner (lib.tools.infer) stays free of
training code.
"""
import errno
import functools
import math
import os
import sys

from lib.errors import UserError

EXIT_USER_ERROR = 2


class UsageError(UserError, ValueError):
    """A value given on the command line that makes no sense (the message names the flag and value)."""


def describe_os_error(exc):
    """'<path>: what is wrong' for an OSError, in words for the cases users meet. An OSError raised
    with a message of our own (no errno) is that message."""
    if exc.errno is None and exc.filename is None:
        return str(exc)
    where = exc.filename if exc.filename is not None else "output"
    if exc.errno == errno.EEXIST and os.path.isfile(str(where)):
        return f"{where}: is a file, and a folder is needed here"
    if exc.errno == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a folder"
    if exc.errno == errno.ENOSPC:
        return f"{where}: the disk is full"
    return f"{where}: {exc.strerror or exc}"


def error_line(message):
    """``message`` as the one 'error:' line (a leading 'error: ' is not doubled; line breaks are
    joined, so the line stays one line)."""
    text = " ".join(str(message).split("\n")).strip()
    return text if text.startswith("error:") else f"error: {text}"


def report_user_error(message):
    """Print the error line; returns the exit status of a user error."""
    print(error_line(message), file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def user_errors_exit_2(*extra):
    """Decorate a command's ``main(argv=None)``: user errors (module docstring, plus the exception
    types in ``extra``) become one 'error:' line and exit status 2. Use bare (``@user_errors_exit_2``)
    or with extra types (``@user_errors_exit_2(SomeLibraryError)``)."""
    if len(extra) == 1 and callable(extra[0]) and not isinstance(extra[0], type):
        return _wrap(extra[0], ())
    return lambda main: _wrap(main, tuple(extra))


def _wrap(main, extra):
    handled = (UserError,) + extra

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except handled as exc:
            return report_user_error(exc)
        except OSError as exc:
            return report_user_error(describe_os_error(exc))
        except SystemExit as exc:
            if isinstance(exc.code, str):      # SystemExit("error: ..."): a message, not a status
                return report_user_error(exc.code)
            raise
    return wrapper


def output_folder(path, flag="--output"):
    """Create the output folder ``path`` now, before any long work: a file in its place, a part of the
    path that is a file, or a folder that cannot be written is a UsageError naming the flag and path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a file, and a folder is needed here")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag}: {describe_os_error(err)}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: this folder is not writable")
    return path


def check_fps(value, flag="--fps"):
    """A frame rate given on the command line: a finite number > 0 (UsageError naming the flag)."""
    if value is None or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{flag} {value:g}: the frame rate of the video must be a number > 0")
    return float(value)


def check_fraction(value, flag, low_open=False):
    """A threshold in [0, 1] (or (0, 1] with ``low_open``); UsageError naming the flag otherwise."""
    if value is None or not math.isfinite(value) or value > 1 or value < 0 or (low_open and value == 0):
        raise UsageError(f"{flag} {value:g}: must be in {'(0' if low_open else '[0'}, 1]")
    return float(value)
