"""Error rows out of a dataset before it is split between training workers
(see :mod:`cps_ray.pipeline._train`), each one logged for the run's summary.

No torch here: the filter runs as a Ray task in a worker that needs none
(its import is 2-3 CPU-s and 300 MiB per worker process).
"""

from __future__ import annotations

import numpy as np


def _ok_rows(batch: dict, log) -> dict:
    keep = np.array([not (isinstance(e, str) and e) for e in batch["error"]], dtype=bool)
    if not keep.all():
        bad = ~keep
        log.add.remote([str(p) for p in batch["path"][bad]], [str(e) for e in batch["error"][bad]])
    return {key: np.asarray(value)[keep] for key, value in batch.items()}


class FailureLog:
    """``path -> error`` of every error row seen, the first reason kept."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def add(self, paths: list[str], reasons: list[str]) -> None:
        for path, reason in zip(paths, reasons):
            self.seen.setdefault(path, reason)

    def failures(self) -> dict[str, str]:
        return self.seen


def without_error_rows(ds):
    """``(ds without its error rows, log)``: a zero-CPU task stage drops them
    before any split and records ``path -> error`` in ``log``, a
    :class:`FailureLog` actor whose ``failures.remote()`` returns what it saw
    (every epoch re-runs a live pipeline; a path is recorded once)."""
    import ray

    log = ray.remote(num_cpus=0)(FailureLog).remote()
    kept = ds.map_batches(_ok_rows, fn_kwargs={"log": log}, batch_format="numpy", num_cpus=0)
    return kept, log
