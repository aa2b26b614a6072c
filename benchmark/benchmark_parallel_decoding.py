"""One long video on every core: torchcodec's parallel-decoding tutorial
against ``decode_only`` (issue 36).

    python benchmark/benchmark_parallel_decoding.py --make SRC.mp4 OUT.mp4 --minutes 10
    python benchmark/benchmark_parallel_decoding.py OUT.mp4 --rounds 3 \\
        --json benchmark/out/parallel_decoding.json

``--make`` scales SRC to 640x360 (x264 veryfast, 25 fps) and loops it with
``-stream_loop N -c copy`` to about ``--minutes``, as the tutorial loops its
640x360 clip to 11.5 minutes.

The tutorial's four methods decode one frame every ``round(fps / 2)`` (12
at 25 fps) at the native size with torchcodec (``seek_mode="approximate"``):

- ``sequential``: one decoder, one FFmpeg thread (torchcodec's default);
- ``ffmpeg threads``: one decoder with ``--threads`` FFmpeg threads;
- ``processes``: the index list cut into ``--threads`` chunks, one decoder
  per chunk in a pool of processes (started once, like joblib's loky);
- ``threads``: the same chunks on threads.

Each is checked bit for bit against the tutorial's sequential decode.

``decode_only`` (CPU, ``input_size=None``) decodes as many frames, chosen by
``index``, ``time`` and ``keyframe``: ``1 thread`` (one decoder) and ``split``
(``--threads`` for the video: the plan split over decoders side by side, the
default); with ``--ffmpeg-threads`` also one decoder with ``--threads``
FFmpeg threads (the split switched off). Each is checked bit for bit against
its own one-thread decode. The frames are not the tutorial's: other indices,
another conversion (``swscale-bilinear-v1``).

Rounds alternate the runners (each round runs every runner once; the order
rotates) after ``--warmup`` untimed rounds; a figure is the median over rounds
(wall time; CPU time of this process, all its threads, beside it). The
speed-up is over the tutorial's sequential decode. Speeds only compare within
one run: the machine is shared. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import load_average, machine_info, usable_cores  # noqa: E402
from _report import write_json  # noqa: E402

STRATEGIES = ("index", "time", "keyframe")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", nargs="?", help="the long video")
    ap.add_argument("--make", nargs=2, metavar=("SRC", "OUT"), help="build the video and stop")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=usable_cores())
    ap.add_argument(
        "--ffmpeg-threads",
        action="store_true",
        help="also decode_only on one decoder with --threads FFmpeg threads",
    )
    ap.add_argument("--json", help="write the results here")
    return ap.parse_args(argv)


def make_video(source: str, out: str, minutes: float) -> None:
    short = Path(out).with_suffix(".short.mp4")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", source, "-vf",
           "scale=640:360,setsar=1", "-r", "25", "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", "-an", str(short)]  # fmt: skip
    subprocess.run(cmd, check=True)
    seconds = float(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
         str(short)], check=True, capture_output=True, text=True).stdout)  # fmt: skip
    loops = max(1, math.ceil(minutes * 60 / seconds))
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i",
           str(short), "-c", "copy", out]  # fmt: skip
    subprocess.run(cmd, check=True)
    short.unlink()
    print(f"{out}: {loops} x {seconds:.2f} s of {source} at 640x360")


# --- the tutorial's methods (torchcodec) ----------------------------------------------------


def _tc_decode(path: str, indices: list[int], threads: int = 1):
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, seek_mode="approximate", num_ffmpeg_threads=threads)
    return decoder.get_frames_at(indices).data


def _chunks(indices: list[int], n: int) -> list[list[int]]:
    """The tutorial's split_indices: n chunks, the last one the longest."""
    size = len(indices) // n
    return [indices[i * size : (i + 1) * size] for i in range(n - 1)] + [indices[(n - 1) * size :]]


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


class Tutorial:
    def __init__(self, path: str, threads: int):
        from torchcodec.decoders import VideoDecoder

        md = VideoDecoder(path, seek_mode="approximate").metadata
        step = max(1, round(md.average_fps / 2))
        self.path, self.threads = path, threads
        self.indices = list(range(0, md.num_frames, step))
        self.metadata = {"num_frames": md.num_frames, "fps": md.average_fps, "step": step,
                         "width": md.width, "height": md.height,
                         "seconds": md.duration_seconds}  # fmt: skip
        self.processes = ProcessPoolExecutor(threads, multiprocessing.get_context("spawn"),
                                             initializer=_one_torch_thread)  # fmt: skip
        list(self.processes.map(_one_torch_thread_ok, range(threads)))  # started, warm

    def runners(self) -> dict:
        import torch

        def sequential():
            return _tc_decode(self.path, self.indices)

        def ffmpeg_threads():
            return _tc_decode(self.path, self.indices, self.threads)

        def processes():
            chunks = _chunks(self.indices, self.threads)
            parts = self.processes.map(_tc_decode, [self.path] * len(chunks), chunks)
            return torch.cat(list(parts))

        def threads():
            chunks = _chunks(self.indices, self.threads)
            with ThreadPoolExecutor(self.threads) as pool:
                parts = pool.map(_tc_decode, [self.path] * len(chunks), chunks)
                return torch.cat(list(parts))

        return {
            ("torchcodec", "every 12th", "sequential"): sequential,
            ("torchcodec", "every 12th", "ffmpeg threads"): ffmpeg_threads,
            ("torchcodec", "every 12th", "processes"): processes,
            ("torchcodec", "every 12th", "threads"): threads,
        }

    def close(self) -> None:
        self.processes.shutdown()


def _one_torch_thread_ok(_) -> bool:
    return True


# --- decode_only --------------------------------------------------------------------------


def decode_only_runners(path: str, count: int, threads: int, ffmpeg_threads: bool) -> dict:
    import cps_ray._devices as devices
    from cps_ray import DecodeConfig, decode_only

    least = devices.MIN_WORK_PER_DECODER

    def runner(strategy: str, ffmpeg_threads: int, split: bool):
        cfg = DecodeConfig(path, sequence_length=count, uniform_strategy=strategy,
                           decode_backend="cpu", ffmpeg_threads=ffmpeg_threads)  # fmt: skip

        def run():
            devices.MIN_WORK_PER_DECODER = least if split else 2**62
            try:
                out = decode_only(cfg)
            finally:
                devices.MIN_WORK_PER_DECODER = least
            run.decoders = out.decoders
            return out.frames

        run.decoders = 0
        return run

    runners = {}
    for strategy in STRATEGIES:
        runners[("decode_only", strategy, "1 thread")] = runner(strategy, 1, False)
        if ffmpeg_threads:
            runners[("decode_only", strategy, "ffmpeg threads")] = runner(strategy, threads, False)
        runners[("decode_only", strategy, "split")] = runner(strategy, threads, True)
    return runners


# --- main -----------------------------------------------------------------------------------


def digest(frames) -> str:
    """The frames' bytes, hashed (so no run's frames stay held)."""
    import numpy as np

    array = np.ascontiguousarray(frames.numpy() if hasattr(frames, "numpy") else frames)
    return hashlib.blake2b(array.data, digest_size=16).hexdigest() + str(array.shape)


def reference_of(key: tuple) -> tuple:
    api, strategy, _ = key
    return (api, strategy, "sequential" if api == "torchcodec" else "1 thread")


def run(args) -> dict:
    _one_torch_thread()
    tutorial = Tutorial(args.video, args.threads)
    try:
        runners = tutorial.runners()
        runners.update(
            decode_only_runners(
                args.video, len(tutorial.indices), args.threads, args.ffmpeg_threads
            )
        )
        names = list(runners)
        times: dict[tuple, list[tuple[float, float]]] = {n: [] for n in names}
        digests: dict[tuple, set[str]] = {n: set() for n in names}
        shapes: dict[tuple, tuple] = {}
        loads = [load_average()]
        for r in range(args.warmup + args.rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                cpu, start = time.process_time(), time.perf_counter()
                frames = runners[name]()
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                digests[name].add(digest(frames))
                shapes[name] = tuple(frames.shape)
                del frames
                if r >= args.warmup:
                    times[name].append((wall, cpu))
            loads.append(load_average())
            print(f"round {r + 1}/{args.warmup + args.rounds} done, load {loads[-1]}", flush=True)
    finally:
        tutorial.close()
    base = statistics.median(w for w, _ in times[("torchcodec", "every 12th", "sequential")])
    rows = []
    for name in names:
        wall = statistics.median(w for w, _ in times[name])
        reference = reference_of(name)
        same = len(digests[name]) == 1 and digests[name] == digests[reference]
        decoders = getattr(runners[name], "decoders", None)
        rows.append({
            "api": name[0], "frames": name[1], "method": name[2], "shape": shapes[name],
            "seconds": round(wall, 3), "speedup": round(base / wall, 2),
            "cpu_seconds": round(statistics.median(c for _, c in times[name]), 3),
            "identical": same, "against": reference[2], "decoders": decoders or None,
            "all_seconds": [round(w, 3) for w, _ in times[name]],
        })  # fmt: skip
    return {"video": args.video, "tutorial": tutorial.metadata, "threads": args.threads,
            "rounds": args.rounds, "warmup": args.warmup, "load_averages": loads,
            "rows": rows, "targets": targets(rows)}  # fmt: skip


def targets(rows: list[dict]) -> dict:
    """The issue's done-when: decode_only with an exact strategy at least as
    fast as the tutorial's threads over chunks; keyframe 1.5x faster."""
    by = {(r["api"], r["frames"], r["method"]): r for r in rows}
    tutorial = by[("torchcodec", "every 12th", "threads")]["seconds"]
    exact = min(by[("decode_only", s, "split")]["seconds"] for s in ("index", "time"))
    keyframe = by[("decode_only", "keyframe", "split")]["seconds"]
    return {
        "exact_vs_tutorial_threads": round(tutorial / exact, 2),
        "exact_met": exact <= tutorial,
        "keyframe_vs_tutorial_threads": round(tutorial / keyframe, 2),
        "keyframe_met": tutorial / keyframe >= 1.5,
    }


def print_table(result: dict) -> None:
    md = result["tutorial"]
    count = len(range(0, md["num_frames"], md["step"]))
    print(f"\n{result['video']}: {md['seconds'] / 60:.1f} min, {md['width']}x{md['height']}, "
          f"{md['num_frames']} frames, every {md['step']}th: {count} frames; "
          f"{result['threads']} threads, {result['rounds']} rounds")  # fmt: skip
    print(f"{'api':<12}{'frames':<12}{'method':<16}{'dec':>4}{'seconds':>9}{'speed-up':>9}"
          f"{'CPU s':>8}  identical")  # fmt: skip
    for r in result["rows"]:
        same = ("yes" if r["identical"] else "NO") + f" (vs {r['against']})"
        decoders = "-" if r["decoders"] is None else str(r["decoders"])
        print(f"{r['api']:<12}{r['frames']:<12}{r['method']:<16}{decoders:>4}{r['seconds']:>9.2f}"
              f"{r['speedup']:>8.2f}x{r['cpu_seconds']:>8.2f}  {same}")  # fmt: skip
    t = result["targets"]
    print(f"exact decode_only (split) vs the tutorial's threads: {t['exact_vs_tutorial_threads']}x "
          f"({'met' if t['exact_met'] else 'missed'}: >= 1); keyframe: "
          f"{t['keyframe_vs_tutorial_threads']}x ({'met' if t['keyframe_met'] else 'missed'}: "
          ">= 1.5)")  # fmt: skip
    loads = result["load_averages"]
    print(f"load average (1, 5, 15 min) at the start and after each round: {loads}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.make:
        make_video(args.make[0], args.make[1], args.minutes)
        return 0
    if not args.video:
        raise SystemExit("give the long video (make one with --make)")
    result = run(args)
    print_table(result)
    if args.json:
        write_json(args.json, {"machine": machine_info(), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
