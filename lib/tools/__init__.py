"""Command-line tools, each run as ``python -m lib.tools.<name> --help``:

- extract_frames: frames of a video (every Nth, time range) into numbered JPEGs
- check_dataset: problems in a dataset, class counts, box-size histogram PNG, snippets
- split: train/test lists, random or by snippet
- convert: between dataset formats
- draw: annotations into PNGs, green/red by anchor coverage
- pack_records: dataset -> MXNet RecordIO (.rec/.idx/.lst)
- launch: a distributed training job on MXNet's parameter server (scheduler, servers, workers)
- evaluate, infer, quantize, import_tf_pipeline: see their own --help

A user error is one 'error:' line naming the option, file or key, and exit status 2 (lib.cli.user_errors_exit_2).
"""
