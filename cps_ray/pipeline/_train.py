"""Training on many workers with Ray Train, fed by a patch dataset.

Inside any Ray Train loop (``TorchTrainer(..., datasets={"train": ds})``),
each worker reads its own share of the dataset (Ray Data's
``streaming_split(equal=True)``: within an epoch a video reaches one worker
at most) and turns it into batches with :class:`~cps_ray.TrainingBatches`,
which accepts the worker's ``DataIterator`` as it is::

    shard = ray.train.get_dataset_shard("train")
    feed = TrainingBatches(shard, batch_size=32, device=ray.train.torch.get_device())
    for batch in Lockstep(feed):
        ...  # the same number of steps on every worker

Error rows would make shares uneven (a worker whose share holds more failed
videos has fewer batches), and data-parallel training deadlocks when one
worker runs one step more than another. The rule here: error rows are
dropped *before* the split (:func:`without_error_rows`, which logs them for
the run's summary), so Ray's equal split gives every worker the same number of
good rows, leaving out fewer rows than there are workers. :class:`Lockstep` is
the safety net for any other source of unevenness: before every step the
workers agree (one all-reduce of a flag) whether *all* of them have a batch;
the epoch ends for everyone at the first step one of them lacks, and the
others drain what is left of their share, counting it as ``dropped``.

:func:`train_loop_per_worker` is the loop of ``jobs/train_stream.py
--num-workers N``: a tiny patch-token transformer, data-parallel through
``ray.train.torch.prepare_model``, a checkpoint at every epoch end through
``ray.train.report``, resumed from the last one when the run is started
again with the same storage path and name.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .._config import PatchStreamConfig
from ._error_rows import without_error_rows
from ._feed import TrainingBatches


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


class TinyPatchTransformer(nn.Module):
    """Patch tokens -> pixels of every token.

    patches: float ``[B, k, 3, p, p]``; fields: int ``[B, k, 3]`` = (t, row,
    col); mask: bool ``[B, k]``, tokens whose pixels are hidden. Returns
    float ``[B, k, 3 * p * p]``.
    """

    def __init__(self, config: PatchStreamConfig, dim: int, depth: int, heads: int):
        super().__init__()
        values = 3 * config.patch_size**2
        self.embed = nn.Linear(values, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.pos_t = nn.Embedding(config.sequence_length, dim)
        self.pos_row = nn.Embedding(config.grid_size, dim)
        self.pos_col = nn.Embedding(config.grid_size, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, values)

    def forward(self, patches, fields, mask):
        x = self.embed(patches.flatten(2))
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        t, row, col = fields.long().unbind(-1)
        x = x + self.pos_t(t) + self.pos_row(row) + self.pos_col(col)
        return self.head(self.norm(self.encoder(x)))


def masked_loss(model, batch, mask_ratio: float):
    """Mean squared error on the pixels of a random ``mask_ratio`` of the tokens."""
    patches = batch["patches"].float()
    b, k = patches.shape[:2]
    hidden = max(1, round(mask_ratio * k))
    order = torch.rand(b, k, device=patches.device).argsort(dim=1)
    mask = torch.zeros(b, k, dtype=torch.bool, device=patches.device)
    mask.scatter_(1, order[:, :hidden], True)
    predicted = model(patches, batch["meta_fields"], mask)
    return ((predicted - patches.flatten(2)) ** 2)[mask].mean()


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _load(checkpoint, model, optimizer) -> tuple[int, int]:
    """Restore a checkpoint of :func:`_save`; returns ``(next_epoch, step)``."""
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu")
    _unwrapped(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state["step"]


def _report(metrics: dict, model, optimizer, epoch: int, step: int, rank: int) -> None:
    """``ray.train.report`` from every worker; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        state = {
            "model": _unwrapped(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
        }
        torch.save(state, os.path.join(folder, "state.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop_per_worker(options: dict) -> None:
    """One Ray Train worker of ``jobs/train_stream.py --num-workers N``.

    ``options``: ``stream_config`` (a :class:`PatchStreamConfig` as a dict),
    ``batch_size``, ``epochs`` or ``steps`` (one is None), ``lr``, ``dim``,
    ``depth``, ``heads``, ``mask_ratio``, ``seed``, ``prefetch_batches``.
    The last report's metrics carry ``workers``: every worker's record.
    """
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(options["seed"])  # the same initial weights on every worker
    config = PatchStreamConfig(**options["stream_config"])
    model = TinyPatchTransformer(config, options["dim"], options["depth"], options["heads"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options["lr"])
    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        start_epoch, step = _load(checkpoint, model, optimizer)
    torch.manual_seed(options["seed"] * 1000 + rank + 1)  # masks differ between workers
    shard = ray.train.get_dataset_shard("train")
    epochs, max_steps = options["epochs"], options["steps"]
    record: dict[str, Any] = {
        "rank": rank, "device": str(device), "samples": 0, "steps": 0, "skipped": 0,
        "skipped_paths": [], "dropped": 0, "dropped_paths": [], "paths": [], "epochs": [],
        "resumed_at_step": step,
        "wait_seconds": 0.0, "compute_seconds": 0.0, "first_wait_seconds": None, "losses": [],
    }  # fmt: skip
    epoch = start_epoch
    while (epochs is None or epoch < epochs) and (max_steps is None or step < max_steps):
        feed = TrainingBatches(
            shard, options["batch_size"], device=device,
            prefetch_batches=options["prefetch_batches"],
        )  # fmt: skip
        steps = Lockstep(feed)
        asked = time.perf_counter()
        for batch in steps:
            fetched = time.perf_counter()
            loss = masked_loss(model, batch, options["mask_ratio"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record["losses"].append(loss.item())  # waits for the device: compute timed whole
            done = time.perf_counter()
            if record["first_wait_seconds"] is None:
                record["first_wait_seconds"] = fetched - asked
            else:
                record["wait_seconds"] += fetched - asked
                record["compute_seconds"] += done - fetched
            record["samples"] += len(batch["path"])
            record["paths"].extend(batch["path"])
            step += 1
            record["steps"] += 1
            asked = time.perf_counter()
            if max_steps is not None and step >= max_steps:
                break
        record["skipped"] += feed.skipped
        record["skipped_paths"].extend(feed.skipped_paths)
        record["dropped"] += steps.dropped_rows
        record["dropped_paths"].extend(steps.dropped_paths)
        record["epochs"].append({"epoch": epoch, "steps": steps.steps,
                                 "dropped": steps.dropped_rows})  # fmt: skip
        last = (
            steps.steps == 0  # not one step anywhere: every row failed, or a share was empty
            or (epochs is not None and epoch + 1 >= epochs)
            or (max_steps is not None and step >= max_steps)
        )
        if last:
            break
        loss = record["losses"][-1] if record["losses"] else None
        _report({"epoch": epoch, "step": step, "loss": loss}, model, optimizer, epoch, step, rank)
        epoch += 1
    # The last report carries every worker's record (rank 0's metrics are the
    # run's result) and the final checkpoint.
    gathered: list[Any] = [None] * context.get_world_size()
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(gathered, record)
    else:
        gathered = [record]
    metrics = {"epoch": epoch, "step": step, "workers": gathered if rank == 0 else []}
    _report(metrics, model, optimizer, epoch, step, rank)


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def summarize(workers: list[dict], fit_seconds: float) -> dict:
    """The run's summary from every worker's record (see :func:`train_loop_per_worker`)."""
    records = []
    for w in sorted(workers, key=lambda r: r["rank"]):
        steady = w["wait_seconds"] + w["compute_seconds"]
        first = w["first_wait_seconds"] or 0.0
        records.append(
            {
                "rank": w["rank"], "device": w["device"], "samples": w["samples"],
                "steps": w["steps"], "skipped": w["skipped"], "dropped": w["dropped"],
                "data_wait_share": _share(w["wait_seconds"], steady),
                "data_wait_share_with_first": _share(w["wait_seconds"] + first, steady + first),
                "first_batch_seconds": round(first, 3), "seconds": round(steady + first, 3),
                "loss_first": w["losses"][0] if w["losses"] else None,
                "loss_last": w["losses"][-1] if w["losses"] else None,
                "resumed_at_step": w["resumed_at_step"], "epochs": w["epochs"],
                "skipped_paths": w["skipped_paths"], "dropped_paths": w["dropped_paths"],
                "paths": w["paths"],
            }
        )  # fmt: skip
    samples = sum(r["samples"] for r in records)
    seconds = max((r["seconds"] for r in records), default=0.0)
    waits = [r["data_wait_share"] for r in records if r["data_wait_share"] is not None]
    return {
        "num_workers": len(records),
        "samples": samples,
        "steps": max((r["steps"] for r in records), default=0),
        "skipped": sum(r["skipped"] for r in records),
        "dropped": sum(r["dropped"] for r in records),
        "seconds": round(seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "samples_per_second": round(samples / seconds, 3) if seconds else None,
        "data_wait_share": round(sum(waits) / len(waits), 4) if waits else None,
        "workers": records,
    }


def train_on_workers(
    ds,
    config: PatchStreamConfig,
    options: dict,
    *,
    num_workers: int,
    use_gpu: bool = False,
    worker_cpus: float = 1.0,
    storage_path: str | None = None,
    run_name: str | None = None,
    resources_per_worker: dict[str, float] | None = None,
    error_rows: bool = True,
) -> dict:
    """Run :func:`train_loop_per_worker` on ``num_workers`` Ray Train workers
    (one GPU each with ``use_gpu``) over ``ds``; returns :func:`summarize`'s
    summary. A run started again with the same ``storage_path`` and
    ``run_name`` continues from its last checkpoint. ``resources_per_worker``
    replaces what each worker holds (``worker_cpus`` and a GPU with ``use_gpu``).
    ``error_rows=False`` says ``ds`` holds none (a :func:`shard_dataset`'s
    rows): no filter stage runs in front of the split, and no log actor."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = resources_per_worker or {"CPU": worker_cpus, **({"GPU": 1} if use_gpu else {})}
    log = None
    if error_rows:
        ds, log = without_error_rows(ds)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**options, "stream_config": _config_dict(config)},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(name=run_name, storage_path=storage_path),
        datasets={"train": ds},
    )
    start = time.perf_counter()
    result = trainer.fit()
    summary = summarize(result.metrics["workers"], time.perf_counter() - start)
    failed = ray.get(log.failures.remote()) if log is not None else {}
    summary["failed"] = len(failed)
    summary["failures"] = failed
    summary["checkpoint"] = result.checkpoint.path if result.checkpoint is not None else None
    return summary


def _config_dict(config: PatchStreamConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(config)
