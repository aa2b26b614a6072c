"""How long a stage actor takes to give its first batch: a fresh Ray actor
that builds ``SelectStage`` or ``DecodeStage`` (the default isolated
children) and runs one batch (one sample video; for selection, its frames),
timed from ``.remote()`` to the answer.

Each run is a fresh process with a local Ray (2 CPUs; not timed) that starts
two decode actors one after the other (the first starts the node's zygote,
the second forks from it), then a select actor. ``--checkout DIR`` runs
another checkout's code (a ``git worktree`` of an older commit), alternating.

    python benchmark/benchmark_actor_start.py --runs 3
    git worktree add /tmp/before HEAD~3
    python benchmark/benchmark_actor_start.py --runs 3 --checkout /tmp/before
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _report import alternate_checkouts

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import ray
ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
from cps_ray import PatchStreamConfig

CFG = PatchStreamConfig(sequence_length=16, input_size=224, patch_size=16, k_keep=256)

@ray.remote(num_cpus=0)
class Stage:
    def __init__(self, name):
        from cps_ray.pipeline import _stages as stages
        self.stage = getattr(stages, name)(CFG)

    def run(self, batch):
        out = self.stage(batch)
        assert not any(out["error"]), out["error"]
        return out

import numpy as np
batch = {"path": np.array([sys.argv[1]], dtype=object)}
out = {}
for key, name in (("decode_first", "DecodeStage"), ("decode_next", "DecodeStage"),
                  ("select", "SelectStage")):
    start = time.perf_counter()
    actor = Stage.remote(name)
    result = ray.get(actor.run.remote(batch))
    out[key] = time.perf_counter() - start
    if key == "decode_first":
        batch = {**result, "error": np.array([""], dtype=object)}  # the select stage's input
        first = actor  # alive: the node's zygote serves the next one
    time.sleep(1)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkout", type=Path, help="another checkout to compare against")
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(REPO))
    from cps_ray._media import make_sample_videos

    video = str(make_sample_videos(REPO / ".cache" / "demo_videos")[0])
    codes, results = alternate_checkouts(CHILD, [video], args.runs, REPO, args.checkout,
                                         CPS_RAY_FAKE_CUDA_DEVICES="0")  # fmt: skip
    for name, runs in results.items():
        medians = {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}
        print(f"{name} ({codes[name]}): median seconds to ready over {len(runs)} runs: {medians}")


if __name__ == "__main__":
    main()
