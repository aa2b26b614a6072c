"""Peak RSS of the process that holds isolated decoder children (a
``local_stream`` caller, a fused or decode actor without Ray's own share).

The children's own peaks are ``benchmark_memory.py``'s per-actor bound.
Run ``benchmark_memory.py`` first: it makes the 4K input used here.
"""

from __future__ import annotations

import argparse
import glob
import resource

import numpy as np

from cps_ray import PatchStreamConfig
from cps_ray.pipeline._stages import DecodeStage
from cps_ray.pipeline._worker import Worker


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--video", default=None, help="default: the 4K H.264 input of benchmark_memory.py"
    )
    args = ap.parse_args()
    video = args.video or sorted(glob.glob("benchmark/out/memory_inputs/2160p_h264*"))[0]
    config = PatchStreamConfig()

    worker = Worker(config, 1, isolation="process", max_attempts=2)
    for _ in range(5):
        assert worker(video)["error"] is None
    worker.close()
    fused = peak_mib()

    stage = DecodeStage(config, 1)
    for _ in range(3):
        out = stage({"path": np.array([video] * 8, dtype=object)})
        assert all(e == "" for e in out["error"])
    print(f"{video}")
    print(f"parent of a fused worker's child, 5 videos: {fused:.0f} MiB")
    print(f"parent of a decode actor's child, 3 blocks of 8 videos: {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
