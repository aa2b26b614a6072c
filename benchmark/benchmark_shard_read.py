"""What reading a preprocess output's shards costs before the first batch:
``shard_dataset`` (Ray Data's first Parquet datasource, footers read in the
driver) against a plain ``ray.data.read_parquet`` of the same files (Ray
2.60's default datasource, a pool of footer-reading actors per execution).

One local Ray (2 CPUs; its start is not counted); each round builds the
dataset and iterates it ``--passes`` times (a training loop's epochs), the
two readers alternating. CPU is the whole machine's (``/proc/stat``: the
driver, Ray's daemons and every worker the read starts), so run it on an
idle machine (Linux only).

    python jobs/preprocess.py --input videos/ --output /tmp/out
    python benchmark/benchmark_shard_read.py /tmp/out --json benchmark/out/shard_read.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _machine import describe, machine_info
from _report import write_json


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        user, nice, system = (int(v) for v in f.readline().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _measure(make, passes: int) -> dict:
    busy, start = _busy_seconds(), time.perf_counter()
    ds = make()
    rows = [sum(1 for _ in ds.iter_rows()) for _ in range(passes)]
    time.sleep(0.5)  # workers the read started settle (counted)
    return {"cpu_s": round(_busy_seconds() - busy, 2),
            "wall_s": round(time.perf_counter() - start - 0.5, 2), "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="a preprocess output (shards/, manifest.json)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()

    import ray

    from cps_ray._store import OutputRoot, read_output
    from cps_ray.pipeline import shard_dataset

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    output = OutputRoot(args.output)
    files = [output.path(s["file"]) for s in read_output(output).manifest["shards"]]
    readers = {
        "shard_dataset": lambda: shard_dataset(args.output),
        "read_parquet (default)": lambda: ray.data.read_parquet(files),
    }
    time.sleep(3)  # Ray's start settles
    results: dict[str, list[dict]] = {name: [] for name in readers}
    for _ in range(args.rounds):
        for name, make in readers.items():
            results[name].append(_measure(make, args.passes))
    ray.shutdown()

    info = machine_info()
    print(describe(info))
    print(f"{len(files)} shards, {args.passes} passes per round, {args.rounds} rounds")
    summary = {}
    for name, runs in results.items():
        cpu = statistics.median(r["cpu_s"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        summary[name] = {"median_cpu_s": cpu, "median_wall_s": wall, "runs": runs}
        print(f"{name:24s} median {cpu:6.2f} CPU-s {wall:6.2f} s  (rounds: "
              + ", ".join(f"{r['cpu_s']:.1f}" for r in runs) + " CPU-s)")  # fmt: skip
    if args.json:
        write_json(args.json, {"machine": info, "shards": len(files), "passes": args.passes,
                               "results": summary})  # fmt: skip


if __name__ == "__main__":
    main()
