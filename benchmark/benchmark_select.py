"""Patch-selection throughput: clips/s on CPU (Numba) and CUDA (Numba CUDA) at
several batch sizes, with the bytes of frames read per second next to the
device's copy bandwidth; per-clip milliseconds of the CPU kernel at 1 and 2
Numba threads, phase by phase; with ``--corpus``, selection's share of
``patch_stream``'s time per video; and, with ``--motion-corpus``, what
``motion="global"`` costs per clip on one core: the motion estimate and the
compensated energies against ``patch_stream``'s whole time for that clip
(issue 39: at most 5 %).

    python benchmark/benchmark_select.py [--batches 1 16 64 256] [--corpus DIR] [--json PATH]
    python benchmark/benchmark_select.py --backends --motion-corpus .cache/photo_clips --limit 40

A backend the machine cannot run is reported as skipped with its reason.
Prints a table and writes JSON; nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from _report import write_json


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compiles, allocates)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_copy_bandwidth() -> float:
    """Bytes read + written per second of a large host copy."""
    src = np.ones(256 * 2**20, np.uint8)
    dst = np.empty_like(src)
    seconds = _median_time(lambda: np.copyto(dst, src), 5)
    return 2 * src.nbytes / seconds


def cuda_copy_bandwidth(device) -> float:
    src = torch.ones(1024 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize(device)

    return 2 * src.numel() / _median_time(copy, 10)


def run_cpu(frames: np.ndarray, patch_size: int, k_keep: int, repeats: int) -> float:
    from cps_ray._kernels import cpu

    cpu.warmup()
    return _median_time(lambda: [cpu.select(clip, patch_size, k_keep) for clip in frames], repeats)


def run_cuda(frames: np.ndarray, patch_size: int, k_keep: int, repeats: int) -> float:
    from cps_ray._kernels import cuda

    device = torch.device("cuda", 0)
    on_device = torch.from_numpy(frames).to(device)

    def once():
        cuda.select_batch(on_device, patch_size, k_keep, device_id=0)
        torch.cuda.synchronize(device)

    return _median_time(once, repeats)


def per_clip_cpu(frames: np.ndarray, patch_size: int, k_keep: int, repeats: int) -> list[dict]:
    """Milliseconds per clip of the CPU kernel by phase, and of the public
    ``select_patches(..., output_dtype="bf16")``, at 1 and 2 Numba threads."""
    import numba

    from cps_ray import select_patches
    from cps_ray._convert import bits_table
    from cps_ray._kernels import cpu

    cpu.warmup()
    table = bits_table("bf16")
    energies = np.empty(frames.shape[0] * (frames.shape[-1] // patch_size) ** 2, np.int64)
    cpu._energies(frames, patch_size, energies)
    flat = cpu._top_k(energies, k_keep)
    out = np.empty((k_keep, 3, patch_size, patch_size), table.dtype)
    phases = {
        "energies": lambda: cpu._energies(frames, patch_size, energies),
        "top_k": lambda: cpu._top_k(energies, k_keep),
        "gather_bf16": lambda: cpu._gather(frames, flat, patch_size, table, out),
        "kernel_total": lambda: cpu.select(frames, patch_size, k_keep, table=table),
        "select_patches_bf16": lambda: select_patches(
            frames, patch_size=patch_size, k_keep=k_keep, output_dtype="bf16"
        ),
    }
    records = []
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        numba.set_num_threads(threads)
        record = {"threads": threads}
        for name, fn in phases.items():
            record[f"{name}_ms"] = 1000 * _median_time(fn, max(repeats, 30))
        record["frames_mb_per_s"] = frames.nbytes / 1e6 / (record["kernel_total_ms"] / 1000)
        records.append(record)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return records


def corpus_share(video_dir: str, limit: int) -> list[dict]:
    """Per video: ``patch_stream``'s decode and select seconds (CPU, defaults)."""
    from _report import video_paths

    from cps_ray import PatchStreamConfig, patch_stream

    records = []
    for path in video_paths(video_dir, limit):
        cfg = PatchStreamConfig(video_path=path, decode_backend="cpu", process_backend="cpu")
        with patch_stream(cfg):  # warm: FFmpeg libraries, the file in the page cache
            pass
        runs = []
        for _ in range(3):
            with patch_stream(cfg) as session:
                runs.append((session.decode_seconds, session.select_seconds))
        decode = statistics.median(r[0] for r in runs)
        select = statistics.median(r[1] for r in runs)
        records.append(
            {
                "video": os.path.basename(path),
                "decode_s": decode,
                "select_s": select,
                "select_share": select / (decode + select),
            }
        )
    return records


def _motion_steps(path: str) -> tuple[dict, int]:
    """The timed steps of :func:`motion_cost` for one clip, and the number of
    its frames with motion."""
    from cps_ray import DecodeConfig, PatchStreamConfig, decode_only, patch_stream
    from cps_ray._kernels import cpu
    from cps_ray._kernels.reference import IDENTITY_WARP, identity_warp
    from cps_ray._motion import global_warp

    base = dict(video_path=path, decode_backend="cpu", process_backend="cpu", ffmpeg_threads=1)
    configs = {m: PatchStreamConfig(**base, motion=m) for m in ("none", "global")}
    frames = decode_only(DecodeConfig(**configs["none"].decode_fields())).frames.numpy()
    p = configs["none"].patch_size
    energies = np.empty(frames.shape[0] * (frames.shape[-1] // p) ** 2, np.int64)
    still = identity_warp(frames.shape[0])
    warp = global_warp(frames)

    def stream(config):
        start = time.perf_counter()
        with patch_stream(config):
            pass
        return time.perf_counter() - start

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    steps = {
        "patch_stream_none_s": lambda: stream(configs["none"]),
        "patch_stream_global_s": lambda: stream(configs["global"]),
        "energy_none_s": lambda: timed(lambda: cpu._energies(frames, p, still, energies)),
        # in the order select_patches runs them: the estimate, then the energies
        "estimate_s": lambda: timed(lambda: global_warp(frames)),
        "energy_global_s": lambda: timed(lambda: cpu._energies(frames, p, warp, energies)),
    }
    return steps, sum(tuple(w) != IDENTITY_WARP for w in warp[1:])


def motion_cost(video_dir: str, limit: int, repeats: int) -> list[dict]:
    """Per clip, on one core (1 Numba, torch and FFmpeg thread), medians of
    ``repeats`` rounds, each timing in turn: ``patch_stream`` with
    ``motion="none"`` and ``"global"``, the motion estimate (luma included),
    and the energy kernel without and with the clip's warp."""
    import numba
    from _report import video_paths

    from cps_ray._kernels import cpu

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    cpu.warmup()
    records = []
    for path in video_paths(video_dir, limit):
        steps, moved = _motion_steps(path)
        for fn in steps.values():  # warm: compiled kernels, the file in the page cache
            fn()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(repeats):
            for name, fn in steps.items():
                times[name].append(fn())
        r = {"video": os.path.basename(path), "frames_with_motion": moved}
        r.update({name: statistics.median(v) for name, v in times.items()})
        r["share"] = (r["estimate_s"] + r["energy_global_s"]) / r["patch_stream_none_s"]
        r["patch_stream_ratio"] = r["patch_stream_global_s"] / r["patch_stream_none_s"]
        records.append(r)
        print(f"  {r['video'][:30]:30} patch_stream {1000 * r['patch_stream_none_s']:6.1f} ms, "
              f"estimate {1000 * r['estimate_s']:5.2f} + energy {1000 * r['energy_global_s']:5.2f}"
              f" ms = {r['share']:5.1%}; global/none {r['patch_stream_ratio']:.3f}",
              flush=True)  # fmt: skip
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--k-keep", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", nargs="*", default=["cpu", "gpu"], help="none: skip")
    ap.add_argument("--corpus", default=None, help="videos for patch_stream's select share")
    ap.add_argument("--limit", type=int, default=12, help="videos of --corpus to use")
    ap.add_argument("--motion-corpus", default=None, help="clips for motion='global''s cost")
    ap.add_argument("--motion-repeats", type=int, default=7)
    ap.add_argument("--json", default="benchmark/out/select.json")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    t, s = args.sequence_length, args.input_size
    clip_bytes = t * 3 * s * s
    machine = {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "gpu": None,
    }
    bandwidth = {"cpu": cpu_copy_bandwidth()}
    skipped: dict[str, str] = {}
    if "gpu" in args.backends:
        if not torch.cuda.is_available():
            skipped["gpu"] = "no CUDA device on this machine"
        else:
            try:
                import cps_ray._kernels.cuda  # noqa: F401
            except ImportError as e:
                skipped["gpu"] = str(e)
            else:
                machine["gpu"] = torch.cuda.get_device_name(0)
                bandwidth["gpu"] = cuda_copy_bandwidth(torch.device("cuda", 0))

    results = []
    for backend in args.backends:
        for batch in args.batches:
            record = {"backend": backend, "batch": batch, "clip_bytes": clip_bytes}
            if backend in skipped:
                record.update(skipped=True, reason=skipped[backend])
                results.append(record)
                continue
            frames = rng.integers(0, 256, (batch, t, 3, s, s), dtype=np.uint8)
            runner = run_cpu if backend == "cpu" else run_cuda
            seconds = runner(frames, args.patch_size, args.k_keep, args.repeats)
            read = batch * clip_bytes / seconds
            record.update(
                skipped=False,
                seconds=seconds,
                clips_per_second=batch / seconds,
                bytes_read_per_second=read,
                copy_bandwidth=bandwidth[backend],
                share_of_copy_bandwidth=read / bandwidth[backend],
            )
            results.append(record)

    print(
        f"{'backend':7} {'batch':>5} {'clips/s':>10} {'GB/s read':>10} {'copy GB/s':>10} "
        f"{'share':>6}"
    )
    for r in results:
        if r["skipped"]:
            print(f"{r['backend']:7} {r['batch']:5d}   skipped: {r['reason']}")
            continue
        print(
            f"{r['backend']:7} {r['batch']:5d} {r['clips_per_second']:10.1f} "
            f"{r['bytes_read_per_second'] / 1e9:10.2f} {r['copy_bandwidth'] / 1e9:10.2f} "
            f"{r['share_of_copy_bandwidth']:6.1%}"
        )
    report = {"machine": machine, "config": vars(args), "results": results}
    if "cpu" in args.backends:
        clip = rng.integers(0, 256, (t, 3, s, s), dtype=np.uint8)
        report["per_clip_cpu"] = per_clip_cpu(clip, args.patch_size, args.k_keep, args.repeats)
        print(f"\nCPU kernel, one {t}x3x{s}x{s} clip, ms (median):")
        keys = [k for k in report["per_clip_cpu"][0] if k.endswith("_ms")]
        print(f"{'threads':>7} " + " ".join(f"{k[:-3]:>19}" for k in keys) + "  frames MB/s")
        for r in report["per_clip_cpu"]:
            cells = " ".join(f"{r[k]:19.3f}" for k in keys)
            print(f"{r['threads']:7d} {cells}  {r['frames_mb_per_s']:11.0f}")
    if args.corpus:
        shares = corpus_share(args.corpus, args.limit)
        report["patch_stream_select_share"] = shares
        print("\npatch_stream on the corpus (CPU): decode s, select s, select share")
        for r in shares:
            print(f"  {r['video'][:44]:44} {r['decode_s']:7.3f} {r['select_s']:7.4f} "
                  f"{r['select_share']:6.1%}")  # fmt: skip
        mean = statistics.fmean(r["select_share"] for r in shares)
        total = sum(r["select_s"] for r in shares) / sum(
            r["decode_s"] + r["select_s"] for r in shares
        )
        report["select_share_mean"], report["select_share_of_total"] = mean, total
        print(f"  mean share {mean:.1%}; of the total time {total:.1%}")
    if args.motion_corpus:
        print("\nmotion='global' per clip, one core: estimate + compensated energies "
              "against patch_stream (motion='none')")  # fmt: skip
        records = motion_cost(args.motion_corpus, args.limit, args.motion_repeats)
        shares = [r["share"] for r in records]
        ratios = [r["patch_stream_ratio"] for r in records]
        report["motion_cost"] = {
            "per_clip": records,
            "share_median": statistics.median(shares),
            "share_max": max(shares),
            "patch_stream_global_over_none_median": statistics.median(ratios),
        }
        print(f"  share: median {statistics.median(shares):.1%}, max {max(shares):.1%} "
              f"(target <= 5%); patch_stream global/none median "
              f"{statistics.median(ratios):.3f}")  # fmt: skip
    write_json(args.json, report)


if __name__ == "__main__":
    main()
