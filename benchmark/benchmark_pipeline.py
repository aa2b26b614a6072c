"""Videos/s of ``local_stream`` and ``patch_dataset`` on the same cores.

    python benchmark/benchmark_pipeline.py [VIDEO_DIR] [--videos 180] [--cpus 2]
        [--fuse auto yes] [--repeat 3] [--json PATH]

Without VIDEO_DIR the demo's sample videos are repeated up to ``--videos``.
Ray is started locally with ``--cpus`` CPUs; the pipeline's time includes
starting its actor pools (reported separately as the time to the first row).
``--fuse``: the pipeline layouts to time, one after the other on the same Ray
(``auto``: the plan's choice, split decode and select pools on CPU; ``yes``:
one fused pool whose actors decode and select). ``--repeat``: rounds of
local mode then each layout, on the same Ray; the median round is reported,
every round is in the JSON (a shared machine's load drifts by tens of
percent between runs minutes apart).
Prints a table and writes JSON; nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from _report import write_json


def _run_local(paths, cfg, workers):
    from cps_ray import local_stream

    t0 = time.perf_counter()
    rows = list(local_stream(paths, cfg, num_workers=workers))
    return time.perf_counter() - t0, rows


def _run_pipeline(paths, cfg, ray, fuse=None):
    from cps_ray import patch_dataset
    from cps_ray.pipeline import plan_pipeline

    plan = plan_pipeline(cfg, ray.cluster_resources(), fuse=fuse)
    t0 = time.perf_counter()
    first = None
    rows = []
    for row in patch_dataset(paths, cfg, fuse=fuse).iter_rows():
        if first is None:
            first = time.perf_counter() - t0
        rows.append(row)
    return time.perf_counter() - t0, first, rows, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos_dir", nargs="?")
    ap.add_argument("--videos", type=int, default=180)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--k-keep", type=int, default=2048)
    ap.add_argument("--fuse", nargs="+", choices=["auto", "yes"], default=["auto"])
    ap.add_argument("--repeat", type=int, default=3, help="rounds of local mode then each layout")
    ap.add_argument("--json", default="benchmark/out/pipeline.json")
    args = ap.parse_args()

    import ray

    from cps_ray import PatchStreamConfig
    from cps_ray._media import find_videos, make_sample_videos

    base = (
        find_videos(args.videos_dir)
        if args.videos_dir
        else make_sample_videos(".cache/demo_videos")
    )
    paths = (base * (args.videos // len(base) + 1))[: args.videos]
    cfg = PatchStreamConfig(
        sequence_length=args.sequence_length,
        input_size=args.input_size,
        k_keep=args.k_keep,
        decode_backend="cpu",
    )

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    _run_local(paths[:4], cfg, args.cpus)  # warm caches
    _run_pipeline(paths[:4], cfg, ray)  # warm Numba's cache and the OS page cache
    # Rounds of local mode then each layout, side by side: the machine's load
    # drifts between rounds, so each round's ratio compares runs minutes apart
    # at most, and the median round is reported.
    rounds = []  # (local seconds, {mode: (seconds, first row s, rows equal, plan)})
    first_row = None
    for _ in range(args.repeat):
        local_s, local_rows = _run_local(paths, cfg, args.cpus)
        layouts = {}
        for mode in args.fuse:
            t, f, rows, plan = _run_pipeline(paths, cfg, ray, fuse=True if mode == "yes" else None)
            equal = len(rows) == len(local_rows) and all(
                np.array_equal(a["patches"], b["patches"]) for a, b in zip(local_rows, rows)
            )
            layouts[mode] = (t, f, equal, plan)
            first_row = rows[0]
            del rows  # a run's rows hold ~1 GB
        rounds.append((local_s, layouts))
        del local_rows
    ray.shutdown()
    main_mode = args.fuse[0]
    ratios = [local_s / layouts[main_mode][0] for local_s, layouts in rounds]
    median = sorted(range(len(rounds)), key=ratios.__getitem__)[len(rounds) // 2]
    local_s, layouts = rounds[median]  # the upper middle round of an even count
    pipe_s, first_s, _, plan = layouts[main_mode]

    frame_bytes = cfg.sequence_length * 3 * cfg.input_size**2
    token_bytes = sum(
        np.asarray(first_row[k]).nbytes
        for k in ("patches", "meta_fields", "meta_scores", "frame_indices", "timestamps")
    )
    same = all(equal for _, layouts_ in rounds for _, _, equal, _ in layouts_.values())
    result = {
        "machine": {
            "cores": os.cpu_count(),
            "ray_cpus": args.cpus,
            "cpu": platform.processor() or platform.machine(),
        },
        "videos": len(paths),
        "config": {
            "sequence_length": cfg.sequence_length,
            "input_size": cfg.input_size,
            "k_keep": cfg.k_keep,
        },
        "local_stream": {
            "workers": args.cpus,
            "seconds": local_s,
            "videos_per_second": len(paths) / local_s,
        },
        "patch_dataset": {
            "seconds": pipe_s,
            "first_row_seconds": first_s,
            "videos_per_second": len(paths) / pipe_s,
            "steady_videos_per_second": (len(paths) - 1) / (pipe_s - first_s),
            "stages": [s.__dict__ for s in plan.stages],
        },
        "ratio_pipeline_to_local": local_s / pipe_s,
        "rounds": [
            {
                "local_seconds": round_local,
                **{
                    f"fuse_{mode}": {"seconds": t, "first_row_seconds": f, "ratio": round_local / t}
                    for mode, (t, f, _, _) in round_layouts.items()
                },
            }
            for round_local, round_layouts in rounds
        ],
        "object_store_bytes_per_video": {"frames_uint8": frame_bytes, "tokens": token_bytes},
        "rows_equal": same,
        "layouts": {
            mode: {
                "fused": p.fused,
                "seconds": t,
                "first_row_seconds": f,
                "ratio_pipeline_to_local": local_s / t,
            }
            for mode, (t, f, _, p) in layouts.items()
        },
    }
    for i, r in enumerate(result["rounds"], 1):
        print(
            f"round {i}: local {r['local_seconds']:.2f} s; "
            + "; ".join(
                f"fuse={mode} {r['fuse_' + mode]['seconds']:.2f} s "
                f"(first row {r['fuse_' + mode]['first_row_seconds']:.1f} s, "
                f"{r['fuse_' + mode]['ratio']:.2f}x)"
                for mode in args.fuse
            )
        )
    print(f"the median round of {len(rounds)}:")
    print(f"{'mode':16} {'videos':>6} {'seconds':>8} {'videos/s':>9}")
    print(f"{'local_stream':16} {len(paths):6d} {local_s:8.2f} {len(paths) / local_s:9.2f}")
    print(
        f"{'patch_dataset':16} {len(paths):6d} {pipe_s:8.2f} {len(paths) / pipe_s:9.2f}"
        f"   (first row after {first_s:.1f} s; steady "
        f"{result['patch_dataset']['steady_videos_per_second']:.2f}/s)"
    )
    print(
        f"pipeline / local: {result['ratio_pipeline_to_local']:.2f} "
        f"(rounds: {min(ratios):.2f}-{max(ratios):.2f}); stages: "
        + ", ".join(f"{s.name} x{s.pool} ({s.num_cpus} CPU, {s.num_gpus} GPU)" for s in plan.stages)
    )
    for mode, layout in result["layouts"].items():
        print(
            f"layout fuse={mode}: {layout['seconds']:.2f} s, first row after "
            f"{layout['first_row_seconds']:.1f} s, pipeline / local "
            f"{layout['ratio_pipeline_to_local']:.2f}"
        )
    print(
        f"object store per video: frames {frame_bytes / 1e6:.2f} MB uint8, "
        f"tokens {token_bytes / 1e6:.2f} MB; rows equal (every round, every layout): {same}"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
