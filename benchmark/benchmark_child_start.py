"""What an isolated child's start costs after its fork: the CPU it spends
building its worker (the decoders' check, the backends resolved, Numba's
kernels loaded from the disk cache) before its first video.

Each round is a fresh process that preloads what a zygote preloads
(``VIDEO_PRELOAD``), then forks ``--children`` children one after another and
times each child's ``child_video_worker`` (its own CPU, ``process_time``).
It alternates the zygote as it is (``cps_ray._kernels.cpu:load_serial``:
Numba's serial kernels and the bit tables loaded before the forks) with the
same modules imported only (the zygote before that entry), so both see the
same machine. Numba's cache is filled first.

    python benchmark/benchmark_child_start.py --runs 3 --children 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from _report import run_fresh

CHILD = r"""
import json, os, sys, time
from cps_ray import PatchStreamConfig
from cps_ray.pipeline._worker import VIDEO_PRELOAD, child_video_worker
from cps_ray.pipeline._zygote_serve import preload

children, loaded = int(sys.argv[1]), sys.argv[2] == "1"
preload(VIDEO_PRELOAD if loaded else [entry.split(":")[0] for entry in VIDEO_PRELOAD])
cfg = PatchStreamConfig(sequence_length=16, input_size=224, patch_size=16, k_keep=256)
spent = []
for _ in range(children):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        started = time.process_time()
        child_video_worker(cfg, 1)
        os.write(write, str(time.process_time() - started).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    spent.append(float(os.read(read, 64)))
print(json.dumps({"child_cpu_s": spent}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    run_fresh("from cps_ray._kernels import cpu; cpu.warmup(); print('{}')", [], dict(os.environ))
    results: dict[str, list[float]] = {"loaded": [], "imported": []}
    for _ in range(args.runs):
        for name, flag in (("loaded", "1"), ("imported", "0")):
            out = run_fresh(CHILD, [str(args.children), flag], dict(os.environ))
            results[name] += out["child_cpu_s"]
    for name, label in (("loaded", "serial kernels loaded in the zygote"),
                        ("imported", "modules imported only")):  # fmt: skip
        spent = results[name]
        print(f"{label}: median {statistics.median(spent):.3f} CPU-s per child "
              f"(min {min(spent):.3f}, max {max(spent):.3f}; {len(spent)} children)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
