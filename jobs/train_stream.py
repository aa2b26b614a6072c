"""A short training run fed by the patch pipeline: a tiny transformer over the
kept patches learns to fill in masked ones (their pixels, from the others and
the (t, row, col) positions). It prints samples/s and the share of the time
the loop waited for data.

    python jobs/train_stream.py --input videos/ --steps 20 --batch-size 4
    python jobs/train_stream.py --input out/            # shards of preprocess.py
    python jobs/train_stream.py --input videos/ --num-workers 2 --epochs 3 --json run.json
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/train_stream.py --input /data/videos --num-workers 8 --use-gpu

With ``--num-workers N`` it trains on N Ray Train workers (``TorchTrainer``,
data-parallel; one GPU each with ``--use-gpu``), each reading its own share of
the dataset, in lockstep (see :mod:`cps_ray.pipeline._train`), with a
checkpoint at every epoch end; started again with the same
``--checkpoint-dir`` and ``--run-name`` it continues from the last one.
Without it, the driver trains in one process.

IN is a folder of videos, a manifest or a glob (decoded and selected on the
fly by ``patch_dataset``), or the output folder of ``jobs/preprocess.py``
(its shards are read, nothing is decoded). The pipeline is iterated again
when it runs out before ``--steps``; that restart counts as waiting.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

try:
    import cps_ray  # noqa: F401
except ImportError:  # a checkout whose package is not installed: use it, here and in Ray's workers
    _root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, _root)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))

import torch  # noqa: E402

from cps_ray import PatchStreamConfig, TrainingBatches  # noqa: E402
from cps_ray.jobs import (  # noqa: E402
    JobError,
    add_address_option,
    add_config_options,
    add_isolation_options,
    add_pool_options,
    config_from_args,
    connect_ray,
    find_inputs,
    non_negative_int,
    pipeline_options_from_args,
    positive_int,
    run_entry_point,
)
from cps_ray.pipeline import shard_dataset, train_on_workers  # noqa: E402
from cps_ray.pipeline._inputs import is_manifest  # noqa: E402
from cps_ray.pipeline._listing import is_listing  # noqa: E402
from cps_ray.pipeline._output import read_manifest  # noqa: E402
from cps_ray.pipeline._train import TinyPatchTransformer, masked_loss  # noqa: E402


def _output_manifest(spec: str) -> dict | None:
    """The manifest of the preprocess output ``spec`` names, or ``None``: a
    folder or URI prefix without one holds videos to list."""
    if not is_listing(spec):
        return None
    try:
        return read_manifest(spec)
    except ValueError:  # a scheme with no pyarrow filesystem (https://): videos, not an output
        return None


def build_dataset(args, **pool_options):
    """(dataset, config, whether it is shards): the shards of a preprocess
    output (a folder or a URI holding a manifest), or the live pipeline
    (``pool_options`` go to ``patch_dataset``)."""
    manifest = _output_manifest(args.input)
    if manifest is not None:
        if not manifest["shards"]:
            raise JobError(f"{args.input!r} holds no shards (every video failed?)")
        return shard_dataset(args.input), PatchStreamConfig(**manifest["config"]), True
    from cps_ray import patch_dataset

    config = config_from_args(args)
    options = {**pipeline_options_from_args(args), **pool_options}
    # A manifest, folder or prefix streams through Ray Data; a glob is listed here.
    streamed = is_manifest(args.input) or is_listing(args.input)
    inputs = args.input if streamed else find_inputs(args.input)
    return patch_dataset(inputs, config, **options), config, False


def batches_forever(ds, batch_size: int, device: str):
    """Training batches, iterating ``ds`` again each time it runs out."""
    while True:
        feed = TrainingBatches(ds, batch_size, device=device, drop_last=False)
        produced = 0
        for batch in feed:
            produced += 1
            yield batch
        if produced == 0:
            raise JobError(f"no video could be used ({feed.skipped} failed)")


def train_workers(args) -> dict:
    """``--num-workers N``: Ray Train workers over the dataset's shards."""
    connect_ray(args.address)
    reserve = {"reserve_cpus": args.num_workers * args.worker_cpus}
    if args.use_gpu:
        reserve["reserve_gpus"] = float(args.num_workers)
    ds, config, shards = build_dataset(args, **reserve)
    options = {
        "batch_size": args.batch_size, "epochs": args.epochs,
        "steps": None if args.epochs is not None else args.steps, "lr": args.lr,
        "dim": args.dim, "depth": args.depth, "heads": args.heads,
        "mask_ratio": args.mask_ratio, "seed": args.seed, "prefetch_batches": 2,
    }  # fmt: skip
    storage = args.checkpoint_dir
    if storage and "://" not in storage:
        storage = os.path.abspath(storage)
    summary = train_on_workers(
        ds, config, options, num_workers=args.num_workers, use_gpu=args.use_gpu,
        worker_cpus=args.worker_cpus, storage_path=storage, run_name=args.run_name,
        error_rows=not shards,
    )  # fmt: skip
    for w in summary["workers"]:
        wait = w["data_wait_share"]
        print(
            f"worker {w['rank']} on {w['device']}: {w['steps']} steps, {w['samples']} samples, "
            f"{w['dropped']} dropped at epoch ends; "
            f"waiting for data {'n/a' if wait is None else f'{100 * wait:.1f}%'} after the "
            f"first batch ({w['first_batch_seconds']:.2f} s); loss {w['loss_first']} -> "
            f"{w['loss_last']}"
        )
    print(
        f"train_stream: {summary['num_workers']} workers, {summary['samples']} samples in "
        f"{summary['seconds']:.2f} s: {summary['samples_per_second']} samples/s; "
        f"{summary['failed']} videos failed (left out before the split)"
    )
    return _written(summary, args.json)


def _written(summary: dict, path: str | None) -> dict:
    """``summary``, also written as JSON to ``path`` when one is given."""
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def train(args) -> dict:
    if args.num_workers:
        return train_workers(args)
    if args.steps is None:
        raise JobError("--epochs needs --num-workers; the one-process loop counts --steps")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    connect_ray(args.address)
    ds, config, _ = build_dataset(args)
    model = TinyPatchTransformer(config, args.dim, args.depth, args.heads).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    print(
        f"train_stream: {sum(p.numel() for p in model.parameters())} parameters on "
        f"{args.device}; tokens per sample {config.k_keep}, T={config.sequence_length} "
        f"S={config.input_size} p={config.patch_size}"
    )
    batches = batches_forever(ds, args.batch_size, args.device)
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
        done = time.perf_counter()
        waits.append(fetched - started)
        computes.append(done - fetched)
        samples += len(batch["path"])
        print(
            f"step {step}/{args.steps}  loss {losses[-1]:.5f}  batch {len(batch['path'])}  "
            f"data wait {waits[-1]:.3f} s  compute {computes[-1]:.3f} s"
        )
    total = sum(waits) + sum(computes)
    steady = sum(waits[1:]) + sum(computes[1:])
    summary = {
        "steps": args.steps,
        "samples": samples,
        "seconds": round(total, 3),
        "samples_per_second": round(samples / total, 3) if total else None,
        "data_wait_share": round(sum(waits) / total, 4) if total else None,
        "first_batch_seconds": round(waits[0], 3),
        "data_wait_share_after_first": round(sum(waits[1:]) / steady, 4) if steady else None,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "device": args.device,
    }
    after = summary["data_wait_share_after_first"]
    print(
        f"train_stream: {samples} samples in {total:.2f} s: "
        f"{summary['samples_per_second']} samples/s; waiting for data "
        f"{100 * summary['data_wait_share']:.1f}% of the time (first batch "
        f"{waits[0]:.2f} s, pipeline start-up included; after it "
        f"{'n/a' if after is None else f'{100 * after:.1f}%'}); "
        f"loss {losses[0]:.5f} -> {losses[-1]:.5f}"
    )
    return _written(summary, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_stream.py",
        description="Train a tiny patch-token transformer for a few steps on the pipeline's "
        "batches; print samples/s and the share of time spent waiting for data.",
    )
    parser.add_argument(
        "--input", required=True, metavar="IN",
        help="videos (a folder, a manifest or a glob), or a jobs/preprocess.py output "
        "folder (its manifest's config then applies)",
    )  # fmt: skip
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="training steps (20)")
    length.add_argument(
        "--epochs", type=positive_int, default=None,
        help="passes over the data instead of --steps (needs --num-workers)",
    )  # fmt: skip
    workers = parser.add_argument_group("Ray Train (many workers)")
    workers.add_argument(
        "--num-workers", type=non_negative_int, default=0, metavar="N",
        help="Ray Train workers, data-parallel, each on its own share (0: train in this process)",
    )  # fmt: skip
    workers.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    workers.add_argument(
        "--worker-cpus", type=float, default=1.0, metavar="C",
        help="CPUs each worker holds; the pipeline's pools get the rest (1)",
    )  # fmt: skip
    workers.add_argument(
        "--checkpoint-dir", metavar="DIR",
        help="where runs and checkpoints are kept (Ray's default: ~/ray_results); the same "
        "DIR and --run-name continue a run from its last checkpoint",
    )  # fmt: skip
    workers.add_argument("--run-name", default=None, help="the run's name under DIR")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="videos per step (4)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda if any)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3)")
    parser.add_argument("--dim", type=positive_int, default=64, help="token width (64)")
    parser.add_argument("--depth", type=positive_int, default=2, help="encoder layers (2)")
    parser.add_argument("--heads", type=positive_int, default=4, help="attention heads (4)")
    parser.add_argument(
        "--mask-ratio", type=float, default=0.25, help="share of tokens to fill in (0.25)"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed (0)")
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    add_address_option(parser)
    add_isolation_options(parser)
    add_pool_options(parser)
    add_config_options(parser)  # for video inputs; a preprocess output brings its own
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 < args.mask_ratio < 1.0:
        parser.error(f"--mask-ratio must be in (0, 1), got {args.mask_ratio}")
    if args.dim % args.heads:
        parser.error(f"--dim ({args.dim}) must be a multiple of --heads ({args.heads})")
    if not args.worker_cpus > 0:
        parser.error(f"--worker-cpus must be > 0, got {args.worker_cpus}")
    if args.steps is None and args.epochs is None:
        args.steps = 20
    return run_entry_point("train_stream.py", train, args)


if __name__ == "__main__":
    from cps_ray._stderr import drop_ray_53727

    drop_ray_53727()
    raise SystemExit(main())
