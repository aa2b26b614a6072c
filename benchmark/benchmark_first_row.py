"""Time to the first row of ``patch_dataset``: the pools' start-up.

Each run is a fresh process that starts a local Ray (2 CPUs; not timed),
then builds ``patch_dataset`` over the sample videos and times its first row
and its last; then once more in the same Ray (the next pipeline of a
session: its actors are new, Ray's workers are not). ``--checkout DIR``
runs the code of another checkout (a ``git worktree`` of an older commit)
instead of this one, alternating with this one, so both see the same machine.

    python benchmark/benchmark_first_row.py --runs 3
    git worktree add /tmp/before HEAD~3
    python benchmark/benchmark_first_row.py --runs 3 --checkout /tmp/before
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _report import alternate_checkouts

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
from cps_ray import PatchStreamConfig, patch_dataset
cfg = PatchStreamConfig(sequence_length=16, input_size=224, patch_size=16, k_keep=256)
out = {}
for run in ("", "next_"):
    start = time.perf_counter()
    first = None
    rows = 0
    ds = patch_dataset(sys.argv[1:], cfg)
    for batch in ds.iter_batches(batch_size=1, batch_format="pyarrow"):
        rows += batch.num_rows
        if first is None:
            first = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    out |= {run + "first_row_s": first, run + "all_s": elapsed, run + "rows": rows}
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkout", type=Path, help="another checkout to compare against")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from cps_ray._media import make_sample_videos

    videos = make_sample_videos(REPO / ".cache" / "demo_videos")
    codes, results = alternate_checkouts(CHILD, videos, args.runs, REPO, args.checkout)
    for name, runs in results.items():
        for run, label in (("", "first pipeline"), ("next_", "next pipeline")):
            first = statistics.median(r[run + "first_row_s"] for r in runs)
            every = statistics.median(r[run + "all_s"] for r in runs)
            print(f"{name} ({codes[name]}), {label}: median first row {first:.2f} s, "
                  f"all {len(videos)} rows {every:.2f} s over {len(runs)} runs")  # fmt: skip


if __name__ == "__main__":
    main()
