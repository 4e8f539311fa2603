"""Command-line tools, each run as ``python -m lib.tools.<name> --help``:

- extract_frames: frames of a video (every Nth, time range) into numbered JPEGs
- check_dataset: problems in a dataset, class counts, box-size histogram PNG, snippets
- split: train/test lists, random or by snippet
- convert: between dataset formats
- draw: annotations into PNGs, green/red by anchor coverage
- pack_records: dataset -> MXNet RecordIO (.rec/.idx/.lst)
- launch: a distributed training job on MXNet's parameter server (scheduler, servers, workers)
- evaluate, infer, quantize, import_tf_pipeline: see their own --help

A user error is one 'error:' line naming the option, file or key, and exit status 2.
"""
import errno
import functools
import os
import sys


def os_errors_are_user_errors(main):
    """Decorate a tool's ``main``: an OSError that reaches it (an unwritable or missing output folder,
    a file where a folder is needed, a full disk) is one 'error:' line naming the path, exit status 2,
    not a traceback. Bugs (any other exception) still show their traceback."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 2
    return wrapper


def describe_os_error(exc):
    """'<path>: what is wrong' for an OSError, in words for the cases users meet."""
    where = exc.filename if exc.filename is not None else "output"
    if exc.errno == errno.EEXIST and os.path.isfile(str(where)):
        return f"{where}: is a file, and a folder is needed here"
    if exc.errno == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a folder"
    if exc.errno == errno.ENOSPC:
        return f"{where}: the disk is full"
    return f"{where}: {exc.strerror or exc}"
