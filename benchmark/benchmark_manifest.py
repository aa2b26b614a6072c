"""Driver memory and time to first row against the size of a manifest.

For each size (10k, 100k, 1M lines by default) a text manifest of paths that
do not exist is written (each becomes an error row quickly, so the figures
are the pipeline's own, not a decoder's). A fresh process per run starts a
local Ray, builds ``patch_dataset`` on the manifest and iterates it for
``--seconds`` after the first row. It reports:

- time to first row (from ``patch_dataset``: actor start-up included);
- the driver's peak RSS (``ru_maxrss``) at the end, and rows seen.

``--mode listed`` is the way before streaming: the driver reads the whole
manifest (``read_manifest``) and hands the list to ``patch_dataset``.

``--mode folder`` gives ``patch_dataset`` a folder of that many empty
``.mp4`` files (1,000 per subfolder; each an error row at once), which a task
lists (:mod:`cps_ray.pipeline._inputs`); ``--mode folder-listed`` lists it in
the driver first (``find_videos``), the way before.

    python benchmark/benchmark_manifest.py                   # streamed
    python benchmark/benchmark_manifest.py --mode listed     # for comparison
    python benchmark/benchmark_manifest.py --mode folder --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "manifests"

CHILD = r"""
import json, resource, sys, time
mode, manifest, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
import ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
from cps_ray import PatchStreamConfig, patch_dataset
from cps_ray._media import find_videos
from cps_ray.pipeline._inputs import input_paths as read_manifest
cfg = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=6)
start = time.perf_counter()
listed = {"listed": read_manifest, "folder-listed": find_videos}
inputs = listed[mode](manifest) if mode in listed else manifest
ds = patch_dataset(inputs, cfg, isolation="none")
first = None
rows = 0
for batch in ds.iter_batches(batch_size=64, batch_format="pyarrow"):
    rows += batch.num_rows
    now = time.perf_counter()
    if first is None:
        first = now - start
    if now - start - first > seconds:
        break
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first_row_s": round(first, 2), "rows": rows, "peak_rss_mib": round(peak)}))
"""


def make_manifest(lines: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"missing-{lines}.txt"
    if not path.exists():
        with open(path, "w") as f:
            for i in range(lines):
                f.write(f"/data/videos/not-here/clip_{i:08d}.mp4\n")
    return path


def make_folder(files: int) -> Path:
    root = CACHE / f"folder-{files}"
    done = root / ".complete"
    if not done.exists():
        for i in range(files):
            sub = root / f"part-{i // 1000:05d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True, exist_ok=True)
            (sub / f"clip_{i:08d}.mp4").touch()
        done.touch()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--mode", choices=["streamed", "listed", "folder", "folder-listed"],
                        default="streamed")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long to stream after the first row")  # fmt: skip
    args = parser.parse_args()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    print(f"mode={args.mode}, {args.seconds:.0f} s after the first row, 2 CPUs")
    print(f"{'lines':>10} {'MiB':>6} {'first row s':>12} {'peak RSS MiB':>13} {'rows':>8}")
    for lines in args.sizes:
        folder = args.mode.startswith("folder")
        manifest = make_folder(lines) if folder else make_manifest(lines)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, args.mode, str(manifest), str(args.seconds)],
            env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"the run on {lines} lines failed")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        size = 0.0 if folder else manifest.stat().st_size / 2**20
        print(f"{lines:>10} {size:>6.1f} {result['first_row_s']:>12} "
              f"{result['peak_rss_mib']:>13} {result['rows']:>8}"
              f"   ({time.perf_counter() - started:.0f} s in all)")  # fmt: skip


if __name__ == "__main__":
    main()
