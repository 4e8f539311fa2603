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
from lib.cli import describe_os_error, user_errors_exit_2

# The tools' name of the shared decorator (lib.cli): OSErrors (an unwritable or missing output folder, a
# file where a folder is needed, a full disk), the project's user-error types and SystemExit("error: ...")
# become one 'error:' line naming the path / key / value, exit status 2; any other exception is a bug
# and shows its traceback.
os_errors_are_user_errors = user_errors_exit_2

__all__ = ["describe_os_error", "os_errors_are_user_errors"]
