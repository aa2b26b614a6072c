"""What one streamed preprocess job costs on a running Ray: wall time and the
whole machine's CPU, the job's actors and tasks included.

Each round is a fresh process that starts a local Ray (2 CPUs; not counted),
runs one job to warm the node (Ray Data's own actors), then
times ``--jobs`` more, each a manifest of the sample videos written to a new
output (the job path of ``cps-ray preprocess LIST OUT``, one fused actor).
``--checkout DIR`` runs another checkout's code (a ``git worktree`` of an
older commit) in alternate rounds, so both see the same machine.
``--drivers``: each job is a driver process of its own that joins the Ray
(``cps-ray preprocess`` with ``RAY_ADDRESS``, as a script run on a cluster
or a job submitted to it: a Ray job of its own), its start included.

    python benchmark/benchmark_job_cost.py --runs 3
    python benchmark/benchmark_job_cost.py --runs 3 --drivers
    git worktree add /tmp/before HEAD~3
    python benchmark/benchmark_job_cost.py --runs 3 --checkout /tmp/before
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _report import alternate_checkouts

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, subprocess, sys, tempfile, time
import ray

def machine_cpu():
    with open("/proc/stat") as f:
        user, nice, system = (int(v) for v in f.readline().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
from cps_ray import PatchStreamConfig
from cps_ray.jobs import run_preprocess

jobs, drivers, videos = int(sys.argv[1]), sys.argv[2] == "drivers", sys.argv[3:]
cfg = PatchStreamConfig(sequence_length=8, input_size=112, patch_size=16, k_keep=64)
folder = tempfile.mkdtemp()
listing = os.path.join(folder, "videos.txt")
with open(listing, "w") as f:
    f.writelines(v + "\n" for v in videos)
env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
command = [sys.executable, "-m", "cps_ray._cli",
           "preprocess", listing, "--sequence-length", "8", "--input-size", "112",
           "--patch-size", "16", "--k-keep", "64", "--fuse", "--decode-pool", "1"]
seconds, cpu = [], []
for n in range(jobs + 1):
    start, used = time.perf_counter(), machine_cpu()
    out = os.path.join(folder, f"out{n}")
    if drivers:
        subprocess.run(command + [out], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    else:
        run_preprocess(listing, out, cfg, fuse=True, decode_pool=1, log=lambda _: None)
    if n:  # the first job warms the node
        seconds.append(time.perf_counter() - start)
        cpu.append(machine_cpu() - used)
print(json.dumps({"job_s": seconds, "job_cpu_s": cpu}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (fresh processes) per checkout")
    parser.add_argument("--jobs", type=int, default=4, help="timed jobs per round")
    parser.add_argument("--checkout", type=Path, help="another checkout to compare against")
    parser.add_argument("--drivers", action="store_true",
                        help="each job a driver process of its own joining the Ray")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from cps_ray._media import make_sample_videos

    videos = [str(v) for v in make_sample_videos(REPO / ".cache" / "demo_videos")]
    codes, results = alternate_checkouts(
        CHILD, [str(args.jobs), "drivers" if args.drivers else "in-process", *videos],
        args.runs, REPO, args.checkout,
    )  # fmt: skip
    for name, runs in results.items():
        seconds = statistics.median(s for r in runs for s in r["job_s"])
        cpu = statistics.median(c for r in runs for c in r["job_cpu_s"])
        print(f"{name} ({codes[name]}): median per job {seconds:.2f} s, {cpu:.2f} CPU-s "
              f"({len(runs)} rounds of {args.jobs} jobs, {len(videos)} videos each"
              f"{', each its own driver' if args.drivers else ''})")  # fmt: skip


if __name__ == "__main__":
    main()
