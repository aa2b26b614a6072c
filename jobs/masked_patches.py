"""The training job's own model and loops (``jobs/train_stream.py`` parses
the flags and calls :func:`train`): a tiny transformer over the kept patches
learns to fill in masked ones (their pixels, from the others and the
(t, row, col) positions), in this process or on Ray Train workers. The
feeding is the library's (``patch_dataset`` or ``shard_dataset``,
``TrainingBatches``, ``Lockstep``, ``train_on_workers``).
"""

import json
import os
import tempfile
import time

import torch
from torch import nn

from cps_ray import PatchStreamConfig, TrainingBatches, patch_dataset, shard_dataset
from cps_ray.jobs import JobError, connect_ray, pipeline_from_flags, read_manifest
from cps_ray.pipeline import Lockstep, train_on_workers


class TinyPatchTransformer(nn.Module):
    """float ``[B, k, 3, p, p]`` patches, int ``[B, k, 3]`` (t, row, col) and a
    bool ``[B, k]`` mask of hidden tokens -> float ``[B, k, 3 p p]`` pixels."""

    def __init__(self, config: PatchStreamConfig, dim: int, depth: int, heads: int):
        super().__init__()
        values = 3 * config.patch_size**2
        self.embed = nn.Linear(values, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.pos_t = nn.Embedding(config.sequence_length, dim)
        self.pos_row = nn.Embedding(config.grid_size, dim)
        self.pos_col = nn.Embedding(config.grid_size, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)  # fmt: skip
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
    order = torch.rand(b, k, device=patches.device).argsort(dim=1)
    mask = torch.zeros(b, k, dtype=torch.bool, device=patches.device)
    mask.scatter_(1, order[:, : max(1, round(mask_ratio * k))], True)
    predicted = model(patches, batch["meta_fields"], mask)
    return ((predicted - patches.flatten(2)) ** 2)[mask].mean()


def _unwrapped(model):
    return model.module if hasattr(model, "module") else model


def _report(metrics, model, optimizer, epoch, step, rank) -> None:
    """``ray.train.report`` from every worker; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        state = {"model": _unwrapped(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch, "step": step}  # fmt: skip
        torch.save(state, os.path.join(folder, "state.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop_per_worker(options: dict) -> None:
    """One Ray Train worker: epochs over its share, in lockstep; the last
    report carries every worker's record (rank 0's metrics are the result)."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, device = context.get_world_rank(), ray.train.torch.get_device()
    torch.manual_seed(options["seed"])  # the same initial weights on every worker
    config = PatchStreamConfig(**options["stream_config"])
    model = TinyPatchTransformer(config, options["dim"], options["depth"], options["heads"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options["lr"])
    epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu")
        _unwrapped(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step = state["epoch"] + 1, state["step"]
    torch.manual_seed(options["seed"] * 1000 + rank + 1)  # masks differ between workers
    shard = ray.train.get_dataset_shard("train")
    record = {"rank": rank, "device": str(device), "samples": 0, "steps": 0, "skipped": 0,
              "dropped": 0, "paths": [], "epochs": [], "resumed_at_step": step, "losses": [],
              "wait_seconds": 0.0, "compute_seconds": 0.0, "first_wait_seconds": None}  # fmt: skip
    epochs, max_steps = options["epochs"], options["steps"]
    while (epochs is None or epoch < epochs) and (max_steps is None or step < max_steps):
        feed = TrainingBatches(shard, options["batch_size"], device=device, prefetch_batches=2)
        steps = Lockstep(feed)
        asked = time.perf_counter()
        for batch in steps:
            fetched = time.perf_counter()
            loss = masked_loss(model, batch, options["mask_ratio"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record["losses"].append(loss.item())  # waits for the device: compute timed whole
            if record["first_wait_seconds"] is None:
                record["first_wait_seconds"] = fetched - asked
            else:
                record["wait_seconds"] += fetched - asked
                record["compute_seconds"] += time.perf_counter() - fetched
            record["samples"] += len(batch["path"])
            record["paths"].extend(batch["path"])
            step += 1
            record["steps"] += 1
            asked = time.perf_counter()
            if max_steps is not None and step >= max_steps:
                break
        record["skipped"] += feed.skipped
        record["dropped"] += steps.dropped_rows
        record["epochs"].append({"epoch": epoch, "steps": steps.steps,
                                 "dropped": steps.dropped_rows})  # fmt: skip
        if (steps.steps == 0 or (epochs is not None and epoch + 1 >= epochs)
                or (max_steps is not None and step >= max_steps)):  # fmt: skip
            break
        loss = record["losses"][-1] if record["losses"] else None
        _report({"epoch": epoch, "step": step, "loss": loss}, model, optimizer, epoch, step, rank)
        epoch += 1
    gathered = [None] * context.get_world_size()
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(gathered, record)
    else:
        gathered = [record]
    metrics = {"epoch": epoch, "step": step, "workers": gathered if rank == 0 else []}
    _report(metrics, model, optimizer, epoch, step, rank)


def _share(part: float, whole: float):
    return round(part / whole, 4) if whole > 0 else None


def _summary(workers: list[dict], fit_seconds: float) -> dict:
    records = []
    for w in sorted(workers, key=lambda r: r["rank"]):
        steady, first = w["wait_seconds"] + w["compute_seconds"], w["first_wait_seconds"] or 0.0
        records.append({
            **{k: w[k] for k in ("rank", "device", "samples", "steps", "skipped", "dropped",
                                 "resumed_at_step", "epochs", "paths")},
            "data_wait_share": _share(w["wait_seconds"], steady),
            "first_batch_seconds": round(first, 3), "seconds": round(steady + first, 3),
            "loss_first": w["losses"][0] if w["losses"] else None,
            "loss_last": w["losses"][-1] if w["losses"] else None,
        })  # fmt: skip
    samples = sum(r["samples"] for r in records)
    seconds = max((r["seconds"] for r in records), default=0.0)
    waits = [r["data_wait_share"] for r in records if r["data_wait_share"] is not None]
    return {
        "num_workers": len(records), "samples": samples,
        "steps": max((r["steps"] for r in records), default=0),
        "dropped": sum(r["dropped"] for r in records), "seconds": round(seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "samples_per_second": round(samples / seconds, 3) if seconds else None,
        "data_wait_share": round(sum(waits) / len(waits), 4) if waits else None,
        "workers": records,
    }  # fmt: skip


def build_dataset(args, **pool_options):
    """(dataset, config, whether it is shards): the shards of a preprocess
    output (a folder or URI holding a manifest), or the live pipeline."""
    try:
        manifest = read_manifest(args.input)
    except (OSError, ValueError):  # not an output (no pyarrow filesystem, say): videos
        manifest = None
    if manifest is not None:
        if not manifest["shards"]:
            raise JobError(f"{args.input!r} holds no shards (every video failed?)")
        return shard_dataset(args.input), PatchStreamConfig(**manifest["config"]), True
    config, options = pipeline_from_flags(args)
    options = {**options, **pool_options}
    return patch_dataset(args.input, config, **options), config, False


def worker_cpus(args, cluster_cpus: float) -> float:
    """``--worker-cpus``, or by default what leaves the pipeline a CPU (at most 1 each)."""
    if args.worker_cpus is not None:
        return args.worker_cpus
    return max(0.25, min(1.0, (cluster_cpus - 1.0) / args.num_workers))


def train_workers(args) -> dict:
    """``--num-workers N``: Ray Train workers over the dataset."""
    import ray

    connect_ray(args.address)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    each = worker_cpus(args, cpus)
    if cpus - args.num_workers * each < 0.5:
        raise JobError(
            f"--num-workers {args.num_workers} x --worker-cpus {each:g} leaves "
            f"{cpus - args.num_workers * each:g} of the cluster's {cpus:g} CPUs to the pipeline, "
            "which needs at least 0.5: lower --worker-cpus or --num-workers"
        )
    reserve = {"reserve_cpus": args.num_workers * each}
    if args.use_gpu:
        reserve["reserve_gpus"] = float(args.num_workers)
    ds, config, shards = build_dataset(args, **reserve)
    import dataclasses

    options = {"batch_size": args.batch_size, "epochs": args.epochs,
               "steps": None if args.epochs is not None else args.steps, "lr": args.lr,
               "dim": args.dim, "depth": args.depth, "heads": args.heads,
               "mask_ratio": args.mask_ratio, "seed": args.seed,
               "stream_config": dataclasses.asdict(config)}  # fmt: skip
    storage = args.checkpoint_dir
    if storage and "://" not in storage:
        storage = os.path.abspath(storage)
    result, failed, seconds = train_on_workers(
        ds, train_loop_per_worker, options, num_workers=args.num_workers, use_gpu=args.use_gpu,
        worker_cpus=each, storage_path=storage, run_name=args.run_name, error_rows=not shards,
    )  # fmt: skip
    summary = _summary(result.metrics["workers"], seconds)
    summary.update(failed=len(failed), failures=failed,
                   checkpoint=result.checkpoint.path if result.checkpoint else None)  # fmt: skip
    for w in summary["workers"]:
        wait = "n/a" if w["data_wait_share"] is None else f"{100 * w['data_wait_share']:.1f}%"
        print(f"worker {w['rank']} on {w['device']}: {w['steps']} steps, {w['samples']} "
              f"samples, {w['dropped']} dropped at epoch ends; waiting for data {wait} after "
              f"the first batch ({w['first_batch_seconds']:.2f} s); loss {w['loss_first']} -> "
              f"{w['loss_last']}")  # fmt: skip
    print(f"train_stream: {summary['num_workers']} workers, {summary['samples']} samples in "
          f"{summary['seconds']:.2f} s: {summary['samples_per_second']} samples/s; "
          f"{summary['failed']} videos failed (left out before the split)")  # fmt: skip
    return summary


def train(args) -> dict:
    if args.num_workers:
        return _written(train_workers(args), args.json)
    if args.steps is None:
        raise JobError("--epochs needs --num-workers; the one-process loop counts --steps")
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    torch.manual_seed(args.seed)
    connect_ray(args.address)
    ds, config, _ = build_dataset(args)
    model = TinyPatchTransformer(config, args.dim, args.depth, args.heads).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    print(f"train_stream: {sum(p.numel() for p in model.parameters())} parameters on {device}; "
          f"tokens per sample {config.k_keep}, T={config.sequence_length} "
          f"S={config.input_size} p={config.patch_size}")  # fmt: skip
    batches = _batches_forever(ds, args.batch_size, device)
    waits, computes, losses, samples = [], [], [], 0
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        loss = masked_loss(model, batch, args.mask_ratio)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # .item() waits for the device: compute is timed whole
        waits.append(fetched - started)
        computes.append(time.perf_counter() - fetched)
        samples += len(batch["path"])
        print(f"step {step}/{args.steps}  loss {losses[-1]:.5f}  batch {len(batch['path'])}  "
              f"data wait {waits[-1]:.3f} s  compute {computes[-1]:.3f} s")  # fmt: skip
    total, steady = sum(waits) + sum(computes), sum(waits[1:]) + sum(computes[1:])
    summary = {
        "steps": args.steps, "samples": samples, "seconds": round(total, 3),
        "samples_per_second": round(samples / total, 3) if total else None,
        "data_wait_share": round(sum(waits) / total, 4) if total else None,
        "first_batch_seconds": round(waits[0], 3),
        "data_wait_share_after_first": round(sum(waits[1:]) / steady, 4) if steady else None,
        "loss_first": losses[0], "loss_last": losses[-1], "device": device,
    }  # fmt: skip
    after = summary["data_wait_share_after_first"]
    print(f"train_stream: {samples} samples in {total:.2f} s: {summary['samples_per_second']} "
          f"samples/s; waiting for data {100 * summary['data_wait_share']:.1f}% of the time "
          f"(first batch {waits[0]:.2f} s, pipeline start-up included; after it "
          f"{'n/a' if after is None else f'{100 * after:.1f}%'}); "
          f"loss {losses[0]:.5f} -> {losses[-1]:.5f}")  # fmt: skip
    return _written(summary, args.json)


def _batches_forever(ds, batch_size: int, device: str):
    """Training batches, iterating ``ds`` again each time it runs out."""
    while True:
        feed = TrainingBatches(ds, batch_size, device=device)
        produced = 0
        for batch in feed:
            produced += 1
            yield batch
        if produced == 0:
            raise JobError(f"no video could be used ({feed.skipped} failed)")


def _written(summary: dict, path: str | None) -> dict:
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
