"""Local mode: the same TaskFineTune trained on this machine, no cluster.

`staging` (validate, embedded S3, uploads, copies out), `supervisor` (trainjob
processes behind the operator's Executor interface), `presentation` (progress and
the summary table), `command` (the CLI's `run` and `datasets check`).
"""
