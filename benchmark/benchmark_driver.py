"""What a preprocessing run costs its driver: CPU per written row, and the
bytes it receives per row, beside Ray Data's own ``write_parquet`` of the
same dataset.

    python benchmark/benchmark_driver.py VIDEO_DIR [--videos 40] [--rounds 3]
        [--json benchmark/out/driver.json]
    python benchmark/benchmark_driver.py VIDEO_DIR --cluster     # a simulated two-node cluster

Each way writes N and then 3N videos (the clips of VIDEO_DIR linked again and
again under names of their own) in one local Ray (2 CPUs); the driver's CPU
per row is the difference of the two runs' driver CPU (this process's user +
system time: Ray's core worker threads included, its raylet and workers not)
over 2N, so start-up costs cancel; rows/s is the 3N run's, start-up
included. The ways, each on the same pipeline (T=16, S=224, k=2048, bf16,
one fused actor per CPU):

- ``write_shards``: cps_ray's writer (workers write the shards, the driver
  commits small records);
- ``write_parquet``: Ray Data's own ``Dataset.write_parquet`` of the same
  dataset (its rows, not cps_ray's output layout);
- ``run_preprocess``: the job (``cps-ray preprocess LIST OUT``), its
  screening and ledger included;
- ``train_on_workers``: the streaming-training path, one Ray Train worker
  reading its share of the live pipeline (``get_dataset_shard``) and
  dropping each batch: the rows go to the trainer, not to the driver.

The bytes the driver receives per row are those of the write records it
commits (pickled), against a row's own size (what a driver consuming the
rows with ``iter_batches`` would receive). ``--cluster`` runs
``write_shards`` on a simulated two-node cluster (``ray.cluster_utils``; 8
rows per shard) and prints which node and process wrote each shard. Prints a table and writes
JSON; nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe, machine_info
from _report import video_paths, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def distinct_inputs(clips: list[str], n: int, folder: str) -> list[str]:
    """n inputs with paths of their own (hard links to the clips, again and
    again): a job screens repeated paths, so a repeated clip must not be."""
    os.makedirs(os.path.join(folder, "inputs"))
    paths = []
    for i in range(n):
        clip = clips[i % len(clips)]
        path = os.path.join(folder, "inputs", f"{i:05d}{os.path.splitext(clip)[1]}")
        try:
            os.link(clip, path)
        except OSError:  # another file system
            shutil.copyfile(clip, path)
        paths.append(path)
    return paths


def driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(way: str, paths: list[str], cfg, folder: str) -> dict:
    from cps_ray import patch_dataset, write_shards
    from cps_ray.jobs import run_preprocess

    out = tempfile.mkdtemp(dir=folder)
    start_cpu, start = driver_cpu(), time.perf_counter()
    received = None
    if way == "write_shards":
        manifest = write_shards(patch_dataset(paths, cfg, fuse=True), out, config=cfg)
        received = len(pickle.dumps(manifest))
    elif way == "write_parquet":
        patch_dataset(paths, cfg, fuse=True).write_parquet(out)
    elif way == "train_on_workers":
        from cps_ray.pipeline import train_on_workers

        train_on_workers(patch_dataset(paths, cfg, fuse=True, reserve_cpus=0.5), _consume, {},
                         num_workers=1, worker_cpus=0.5)  # fmt: skip
    else:
        listing = os.path.join(out, "inputs.txt")
        with open(listing, "w") as f:
            f.writelines(p + "\n" for p in paths)
        manifest = run_preprocess(listing, os.path.join(out, "job"), cfg, log=lambda *_: None,
                                  fuse=True)  # fmt: skip
        received = len(pickle.dumps(manifest))
    return {"cpu": driver_cpu() - start_cpu, "seconds": time.perf_counter() - start,
            "manifest_bytes": received}  # fmt: skip


def _consume(config: dict) -> None:
    """A Ray Train worker that reads its share and drops it."""
    import ray.train

    from cps_ray import TrainingBatches

    for _ in TrainingBatches(ray.train.get_dataset_shard("train"), batch_size=4):
        pass


def records_per_row(paths: list[str], cfg, folder: str) -> dict:
    """The write records the driver commits, pickled, per row; and a row's size."""
    import ray

    from cps_ray import patch_dataset
    from cps_ray.pipeline import _output

    output = _output.OutputRoot(tempfile.mkdtemp(dir=folder))
    ledger = _output.start_ledger(None, screen=False)
    sink = _output._sink_class()(output, ledger, 64)
    ds = patch_dataset(paths, cfg, fuse=True)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0})
    rows = sum(s["rows"] for r in sink.records for s in r["shards"]) + sum(
        len(r["failures"]) for r in sink.records
    )
    row = next(iter(patch_dataset(paths[:1], cfg, fuse=True).iter_rows()))
    ray.kill(ledger)
    return {
        "record_bytes_per_row": len(pickle.dumps(sink.records)) / max(1, rows),
        "row_bytes": len(pickle.dumps(row)),
    }


def cluster_run(paths: list[str], cfg, folder: str) -> dict:
    """write_shards on a simulated two-node cluster: who wrote the shards."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    from cps_ray import patch_dataset, write_shards

    driver_node = ray.get_runtime_context().get_node_id()[:12]
    manifest = write_shards(patch_dataset(paths, cfg, fuse=True, decode_pool=2),
                            tempfile.mkdtemp(dir=folder), config=cfg,
                            rows_per_shard=8)  # fmt: skip
    ray.shutdown()
    cluster.shutdown()
    return {"driver": f"{driver_node} pid {os.getpid()}", "writers": manifest["run"]["writers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video_dir")
    ap.add_argument("--videos", type=int, default=40, help="N: the runs write N and 3N videos")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ways", nargs="+", default=["write_shards", "write_parquet",
                                                 "run_preprocess"])  # fmt: skip
    ap.add_argument("--cluster", action="store_true")
    ap.add_argument("--json", default="benchmark/out/driver.json")
    args = ap.parse_args()

    import ray

    from cps_ray import PatchStreamConfig

    cfg = PatchStreamConfig(sequence_length=16, input_size=224, patch_size=14, k_keep=2048,
                            decode_backend="cpu", process_backend="cpu")  # fmt: skip
    folder = tempfile.mkdtemp(prefix="cps_ray-driver-")
    large = distinct_inputs(video_paths(args.video_dir), 3 * args.videos, folder)
    small = large[: args.videos]
    if args.cluster:
        result = cluster_run(small, cfg, folder)
        print(f"driver {result['driver']}; shards written by: {result['writers']}")
        write_json(args.json, {"command": " ".join(sys.argv), "cluster": result})
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    one_run("write_shards", small[:4], cfg, folder)  # warm: actors' code, Numba's cache
    per_row: dict[str, list[float]] = {way: [] for way in args.ways}
    rates: dict[str, list[float]] = {way: [] for way in args.ways}
    runs: dict[str, list[tuple[float, float]]] = {way: [] for way in args.ways}
    for _ in range(args.rounds):
        for way in args.ways:  # alternating: every way sees the same machine
            a = one_run(way, small, cfg, folder)
            b = one_run(way, large, cfg, folder)
            per_row[way].append(1000 * (b["cpu"] - a["cpu"]) / (2 * args.videos))
            rates[way].append(3 * args.videos / b["seconds"])
            runs[way].append((a["seconds"], b["seconds"]))
    sizes = records_per_row(small, cfg, folder)
    ray.shutdown()
    print(describe(machine_info()))
    print(f"N={args.videos}, {args.rounds} rounds; driver CPU ms per row (3N run - N run) / 2N")
    print(f"{'way':>15} {'driver ms/row':>14} {'rows/s':>8}  rounds")
    for way in args.ways:
        print(f"{way:>15} {statistics.median(per_row[way]):14.2f} "
              f"{statistics.median(rates[way]):8.2f}  "
              + ", ".join(f"{v:.2f}" for v in per_row[way]))  # fmt: skip
    print(
        f"bytes the driver receives per row: {sizes['record_bytes_per_row']:.0f} "
        f"(a row is {sizes['row_bytes']:,} bytes)"
    )
    write_json(args.json, {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine_info(), "videos": args.videos, "rounds": args.rounds,
        "driver_ms_per_row": per_row, "rows_per_second": rates, "seconds_n_3n": runs, **sizes,
    })  # fmt: skip


if __name__ == "__main__":
    main()
