"""Isolated children forked from a zygote against children started afresh.

Each run is a fresh process that streams the sample videos through
``local_stream`` (``num_workers`` isolated children) twice, then makes one
child crash on a video (the test-only fault switch) and times the video
after it, which needs a new child. It alternates ``CPS_RAY_FORK_CHILDREN=1``
(the default on Linux: children fork from a zygote that imported torch,
torchcodec and Numba once) with ``=0`` (each child a fresh interpreter), so
both see the same machine. Memory: the proportional set size (PSS, shared
pages split between the processes sharing them) of the children and the
zygote, summed, with the pool warm.

    python benchmark/benchmark_children.py --runs 3 --json benchmark/out/children.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from _report import run_fresh

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
start = time.perf_counter()
from cps_ray import PatchStreamConfig, local_stream
from cps_ray._faults import CRASH_ENV

def pss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += sum(int(l.split()[1]) for l in f if l.startswith("Pss:"))
        except OSError:
            pass
    return total / 1024

def family():
    ours = os.getpid()
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            out.append((int(pid), ppid))
    kids = {p for p, pp in out if pp == ours}
    return kids | {p for p, pp in out if pp in kids}

videos, workers = sys.argv[2:], int(sys.argv[1])
cfg = PatchStreamConfig(sequence_length=16, input_size=224, patch_size=16, k_keep=256)
first_row = None
calls = []
for _ in range(2):
    t = time.perf_counter()
    for row in local_stream(videos, cfg, num_workers=workers):
        assert row["error"] is None, row["error"]
        if first_row is None:
            first_row = time.perf_counter() - start
    calls.append(time.perf_counter() - t)
# one crash, then the next video on a fresh child
os.environ[CRASH_ENV] = os.path.basename(videos[0])
stream = local_stream([videos[0], videos[1]], cfg, num_workers=1, max_attempts=1)
crashed = next(stream)
t = time.perf_counter()
after = next(stream)
restart = time.perf_counter() - t
assert crashed["error"] and after["error"] is None
del os.environ[CRASH_ENV]
from cps_ray.pipeline._worker import Worker
pool = Worker(cfg, concurrent_videos=workers, isolation="process", max_attempts=1)
memory = pss_mib(family())
pool.close()
print(json.dumps({"first_row_s": first_row, "first_call_s": calls[0], "second_call_s": calls[1],
                  "video_after_crash_s": restart, "children_pss_mib": memory}))
"""


def run_once(fork: bool, workers: int, videos: list[str]) -> dict:
    env = dict(os.environ, CPS_RAY_FORK_CHILDREN="1" if fork else "0")
    return run_fresh(CHILD, [str(workers), *videos], env, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from cps_ray._media import make_sample_videos

    videos = [str(v) for v in make_sample_videos(REPO / ".cache" / "demo_videos")]
    results: dict[str, list[dict]] = {"fork": [], "fresh": []}
    for _ in range(args.runs):
        for name, fork in (("fork", True), ("fresh", False)):
            results[name].append(run_once(fork, args.workers, videos))
            print(name, json.dumps(results[name][-1]), flush=True)
    summary = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    print(json.dumps({"workers": args.workers, "videos": len(videos), "median": summary}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"workers": args.workers, "runs": results,
                                         "median": summary}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
