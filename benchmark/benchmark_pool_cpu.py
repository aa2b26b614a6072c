"""CPU one pipeline costs, by pool layout: what a short ``patch_dataset`` run
spends starting its actors.

One local Ray (2 CPUs, no dashboard), the sample videos (three short clips),
then rounds of one pipeline per layout (the default plan, one decode actor,
one fused actor), the layouts alternating so they see the same machine. The
CPU is the whole machine's busy time from ``/proc/stat`` (Linux only) over
the run and the seconds after it in which its actors exit, so run it on an
otherwise idle machine. The first pipeline of the session (Ray Data's own
actors and their fork servers start then) is reported apart.

    python benchmark/benchmark_pool_cpu.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {
    "default plan": {},
    "decode_pool=1": {"decode_pool": 1},
    "fuse=True, decode_pool=1": {"fuse": True, "decode_pool": 1},
}
SETTLE_S = 3.0  # the actors of a finished pipeline exit in the background


def busy_cpu_seconds() -> float:
    """The machine's busy CPU time so far (user, nice, system, irq, softirq, steal excluded)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def one_run(videos, config, options) -> tuple[float, float]:
    from cps_ray import patch_dataset

    cpu, start = busy_cpu_seconds(), time.perf_counter()
    rows = patch_dataset(videos, config, **options).take_all()
    wall = time.perf_counter() - start
    assert len(rows) == len(videos)
    time.sleep(SETTLE_S)
    return wall, busy_cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import ray

    from cps_ray import PatchStreamConfig
    from cps_ray._media import make_sample_videos

    videos = make_sample_videos(REPO / ".cache" / "demo_videos")
    config = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    time.sleep(SETTLE_S)
    idle_cpu = busy_cpu_seconds()
    time.sleep(SETTLE_S)
    idle_cpu = busy_cpu_seconds() - idle_cpu
    first_wall, first_cpu = one_run(videos, config, LAYOUTS["default plan"])
    results = {name: [] for name in LAYOUTS}
    for _ in range(args.rounds):
        for name, options in LAYOUTS.items():
            results[name].append(one_run(videos, config, options))
    ray.shutdown()

    print(f"{len(videos)} videos, {args.rounds} rounds; machine idle over {SETTLE_S:g} s: "
          f"{idle_cpu:.1f} CPU-s (included below)")  # fmt: skip
    print(f"first pipeline of the session (default plan): {first_wall:.1f} s, "
          f"{first_cpu:.1f} CPU-s")  # fmt: skip
    print("| layout | wall s (median) | CPU-s (median, range) |")
    print("| --- | --- | --- |")
    for name, runs in results.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"| {name} | {statistics.median(walls):.1f} | {statistics.median(cpus):.1f} "
              f"({min(cpus):.1f}-{max(cpus):.1f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
