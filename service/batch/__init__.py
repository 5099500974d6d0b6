"""Bulk jobs on the service's models, in-process or on Ray: classify an archive of images,
generate a labelled synthetic image folder (docs/batch.md).

`cli.py` (the command), `jobs.py` (what each job computes and writes), `models.py`
(`--model` → the engine's model), `sources.py` (the files a classify job reads),
`joblog.py` (resumable parts), `writers.py` (Parquet/CSV/JSONL), `local.py` and
`ray_runner.py` (the two runners).
"""
