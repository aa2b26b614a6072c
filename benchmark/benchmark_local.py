"""Per-video decode and select time, and local_stream throughput by worker count.

    python benchmark/benchmark_local.py [VIDEO_DIR] [--json PATH]

Without VIDEO_DIR it uses the demo's sample videos (made on first use).
Prints a table and writes JSON; nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from _report import write_json

import cps_ray
from cps_ray import DecodeConfig, PatchStreamConfig, decode_only, local_stream, select_patches
from cps_ray._kernels import cpu as cpu_kernel
from cps_ray._media import find_videos, make_sample_videos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="?", help="folder of videos (default: demo samples)")
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--k-keep", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--stream-videos", type=int, default=96, help="videos per local_stream throughput run"
    )
    ap.add_argument("--json", default="benchmark/out/local.json")
    args = ap.parse_args()

    paths = find_videos(args.videos) if args.videos else make_sample_videos(".cache/demo_videos")
    cfg = PatchStreamConfig(
        sequence_length=args.sequence_length,
        input_size=args.input_size,
        k_keep=args.k_keep,
        decode_backend="cpu",
    )
    cpu_kernel.warmup()
    per_video = []
    for path in paths:
        dec, sel = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = decode_only(
                DecodeConfig(
                    path,
                    sequence_length=cfg.sequence_length,
                    input_size=cfg.input_size,
                    decode_backend="cpu",
                )
            )
            t1 = time.perf_counter()
            select_patches(
                out.frames,
                patch_size=cfg.patch_size,
                k_keep=cfg.k_keep,
                output_dtype=cfg.output_dtype,
            )
            t2 = time.perf_counter()
            dec.append(t1 - t0)
            sel.append(t2 - t1)
        per_video.append(
            {
                "video": os.path.basename(path),
                "route": out.route,
                "decode_s": statistics.median(dec),
                "select_s": statistics.median(sel),
            }
        )

    throughput = []
    work = paths * max(1, args.stream_videos // max(1, len(paths)))
    for isolation in ("none", "process"):
        for workers in (1, 2, 4):
            list(local_stream(paths[:1], cfg, num_workers=workers, isolation=isolation))  # warm
            t0 = time.perf_counter()
            stream = local_stream(work, cfg, num_workers=workers, isolation=isolation)
            started = time.perf_counter()  # isolated workers' children are up
            rows = list(stream)
            end = time.perf_counter()
            throughput.append(
                {
                    "isolation": isolation,
                    "workers": workers,
                    "videos": len(rows),
                    "start_seconds": started - t0,
                    "seconds": end - started,
                    "videos_per_second": len(rows) / (end - started),
                    "errors": sum(r["error"] is not None for r in rows),
                }
            )

    print(f"{'video':28} {'route':10} {'decode s':>9} {'select s':>9}")
    for r in per_video:
        print(f"{r['video']:28} {r['route']:10} {r['decode_s']:9.4f} {r['select_s']:9.4f}")
    head = f"{'isolation':9} {'workers':>7} {'videos':>6} {'start s':>8} {'seconds':>8}"
    print(f"\n{head} {'videos/s':>9}")
    for r in throughput:
        print(
            f"{r['isolation']:9} {r['workers']:7d} {r['videos']:6d} {r['start_seconds']:8.2f} "
            f"{r['seconds']:8.2f} {r['videos_per_second']:9.2f}"
        )
    result = {
        "machine": {
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cps_ray": cps_ray.__version__,
        },
        "config": {
            "sequence_length": cfg.sequence_length,
            "input_size": cfg.input_size,
            "patch_size": cfg.patch_size,
            "k_keep": cfg.k_keep,
        },
        "per_video": per_video,
        "local_stream": throughput,
    }
    write_json(args.json, result)


if __name__ == "__main__":
    main()
