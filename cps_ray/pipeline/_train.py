"""Training on many workers with Ray Train, fed by a patch dataset.

Inside any Ray Train loop each worker reads its own share of the dataset
(``ray.train.get_dataset_shard``: Ray Data's ``streaming_split(equal=True)``,
so within an epoch a video reaches one worker at most) and turns it into
batches with :class:`~cps_ray.TrainingBatches`::

    shard = ray.train.get_dataset_shard("train")
    feed = TrainingBatches(shard, batch_size=32, device=ray.train.torch.get_device())
    for batch in Lockstep(feed):
        ...  # the same number of steps on every worker

Error rows would make shares uneven, and data-parallel training deadlocks
when one worker runs one step more than another. So error rows are dropped
*before* the split (:func:`without_error_rows`, which logs them for the
run's summary), and Ray's equal split gives every worker the same number of
good rows. :class:`Lockstep` is the safety net for any other unevenness:
before every step the workers agree (one all-reduce) whether *all* of them
have a batch; the epoch ends for everyone at the first step one lacks.

No torch at import: the error-row filter runs as a Ray task in a worker that
needs none (torch's import is the costliest of a worker's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np


def _ok_rows(batch: dict, log) -> dict:
    keep = np.array([not (isinstance(e, str) and e) for e in batch["error"]], dtype=bool)
    if not keep.all():
        bad = ~keep
        log.add.remote([str(p) for p in batch["path"][bad]], [str(e) for e in batch["error"][bad]])
    return {key: np.asarray(value)[keep] for key, value in batch.items()}


class ErrorRowLog:
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
    before any split and records ``path -> error`` in ``log``, an
    :class:`ErrorRowLog` actor whose ``failures.remote()`` returns what it saw
    (every epoch re-runs a live pipeline; a path is recorded once)."""
    import ray

    log = ray.remote(num_cpus=0)(ErrorRowLog).remote()
    kept = ds.map_batches(_ok_rows, fn_kwargs={"log": log}, batch_format="numpy", num_cpus=0)
    return kept, log


class Lockstep:
    """Batches of ``batches`` while every worker of the process group has one.

    Without an initialised ``torch.distributed`` group (or with one worker)
    it passes the batches through. ``steps``: batches yielded;
    ``dropped_rows`` and ``dropped_paths``: what this worker drained after
    another worker ran out.
    """

    def __init__(self, batches: Iterable[dict[str, Any]]):
        self.batches = batches
        self.steps = 0
        self.dropped_rows = 0
        self.dropped_paths: list[str] = []

    def _drop(self, batch: dict[str, Any]) -> None:
        self.dropped_rows += len(batch["path"])
        self.dropped_paths.extend(batch["path"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            for batch in self.batches:
                self.steps += 1
                yield batch
            return
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        batches = iter(self.batches)
        while True:
            batch = next(batches, None)
            flag = torch.tensor([0 if batch is None else 1], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if int(flag.item()) == 0:
                if batch is not None:
                    self._drop(batch)
                    for rest in batches:  # finish the epoch: the split stays in step
                        self._drop(rest)
                return
            self.steps += 1
            yield batch


def train_on_workers(ds, train_loop: Callable[[dict], None], loop_config: dict, *,
                     num_workers: int, use_gpu: bool = False, worker_cpus: float = 1.0,
                     storage_path: str | None = None, run_name: str | None = None,
                     error_rows: bool = True) -> tuple[Any, dict[str, str], float]:  # fmt: skip
    """Run ``train_loop(loop_config)`` on ``num_workers`` Ray Train workers
    (``worker_cpus`` each, and one GPU each with ``use_gpu``), each reading
    its share of ``ds`` as the dataset ``"train"``.

    ``error_rows=False`` says ``ds`` holds none (a :func:`shard_dataset`'s
    rows): no filter stage runs in front of the split. A run started again
    with the same ``storage_path`` and ``run_name`` continues from its last
    checkpoint. Returns ``(Ray Train's Result, path -> error of the error
    rows left out, seconds the fit took)``.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": worker_cpus, **({"GPU": 1} if use_gpu else {})}
    log = None
    if error_rows:
        ds, log = without_error_rows(ds)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),  # fmt: skip
        run_config=RunConfig(name=run_name, storage_path=storage_path),
        datasets={"train": ds},
    )
    start = time.perf_counter()
    result = trainer.fit()
    failed = ray.get(log.failures.remote()) if log is not None else {}
    return result, failed, time.perf_counter() - start
