"""Small clips, one at a time, one thread: decode_only against decord and
torchcodec (issue 40, "Decode small clips fast").

    python benchmark/benchmark_decode_small.py --make .cache/photo_clips OUT
    python benchmark/benchmark_decode_small.py OUT/360p OUT/720p --rounds 7 \\
        --base /path/to/older/checkout --json benchmark/out/decode_small.json

Every runner makes the same uint8 ``[T, 3, S, S]`` (T=16, S=224: the short
side scaled to S, the center cropped) of the same frame indices (cps_ray's,
handed to the others), one video at a time, with one FFmpeg thread:

- ``decode_only``: this checkout's ``cps_ray.decode_only`` (CPU);
- ``base``: ``decode_only`` of another checkout (``--base``, e.g. a git
  worktree of the commit before), in a child process that runs its round
  when this one tells it to, so the two alternate and never overlap;
- ``decord``: ``VideoReader(path, width=, height=, num_threads=1)`` at the
  resized size, ``get_batch`` of the indices, center crop;
- ``torchcodec``: ``VideoDecoder(seek_mode="approximate",
  num_ffmpeg_threads=1)`` with its decoder-side ``Resize`` + ``CenterCrop``.

torch runs one intra-op thread in both processes.

Rounds alternate the runners (each round, every runner decodes every clip
once; the order rotates), after one untimed round. A figure is the median
over clips of each clip's median over rounds (wall time; CPU time of the
process, all its threads, beside it); a ratio is the median over clips of
the per-clip ratio of wall times. ``--breakdown`` also times the stages of this
checkout's CPU decode (open, index, decode, conversion) on the same clips.
``--make SRC OUT`` builds the clips: SRC's videos re-encoded at 640x360 and
1280x720 (x264 veryfast, 25 fps) into ``OUT/360p`` and ``OUT/720p``.
Speeds only compare within one run: the machine is shared. Nothing here is
a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

T, S = 16, 224
SIZES = {"360p": "640:360", "720p": "1280:720"}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", help="folders of clips, one table each")
    ap.add_argument("--make", nargs=2, metavar=("SRC", "OUT"), help="build the clips and stop")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0, help="first N clips of each folder (0: all)")
    ap.add_argument("--runners", nargs="+", default=["decode_only", "base", "decord", "torchcodec"])
    ap.add_argument("--base", help="a checkout of cps_ray to time as 'base'")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def make_clips(source: Path, out: Path) -> None:
    for label, scale in SIZES.items():
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for clip in sorted(source.glob("*.mp4")):
            target = folder / clip.name
            if target.exists():
                continue
            cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(clip), "-vf",
                   f"scale={scale},setsar=1", "-r", "25", "-c:v", "libx264", "-preset",
                   "veryfast", "-pix_fmt", "yuv420p", "-an", str(target)]  # fmt: skip
            subprocess.run(cmd, check=True)
        print(f"{folder}: {len(list(folder.glob('*.mp4')))} clips")


# --- runners --------------------------------------------------------------------------------


def _decode_only(path: str, job: dict):
    from cps_ray import DecodeConfig, decode_only

    cfg = DecodeConfig(video_path=path, sequence_length=T, input_size=S,
                       decode_backend="cpu", ffmpeg_threads=1)  # fmt: skip
    return decode_only(cfg).frames


def _decord(path: str, job: dict):
    import decord
    import numpy as np

    rh, rw = job["resized"]
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=rw, height=rh, num_threads=1)
    hwc = reader.get_batch(job["indices"]).asnumpy()
    top, left = (rh - S) // 2, (rw - S) // 2
    return np.ascontiguousarray(hwc[:, top : top + S, left : left + S].transpose(0, 3, 1, 2))


def _torchcodec(path: str, job: dict):
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import CenterCrop, Resize

    transforms = [Resize(job["resized"]), CenterCrop((S, S))]
    decoder = VideoDecoder(path, seek_mode="approximate", num_ffmpeg_threads=1,
                           transforms=transforms, dimension_order="NCHW")  # fmt: skip
    return decoder.get_frames_at(job["indices"]).data


LOCAL = {"decode_only": _decode_only, "decord": _decord, "torchcodec": _torchcodec}


def time_round(runner, clips: list[str], jobs: dict) -> list[list[float]]:
    """Per clip: [wall seconds, CPU seconds of this process (all its threads)]."""
    times = []
    for path in clips:
        cpu, start = time.process_time(), time.perf_counter()
        runner(path, jobs[path])
        times.append([time.perf_counter() - start, time.process_time() - cpu])
    return times


def plan_jobs(clips: list[str]) -> dict:
    """Per clip: cps_ray's frame indices and the resized (h, w) of the policy."""
    import av

    from cps_ray._decode import decode_frames, resized_dims

    jobs = {}
    for path in clips:
        out = decode_frames(path, sequence_length=T, input_size=S)
        with av.open(path) as container:
            codec = container.streams.video[0].codec_context
            resized = resized_dims(codec.height, codec.width, S)
        jobs[path] = {"indices": [int(i) for i in out.frame_indices], "resized": list(resized)}
    return jobs


def serve() -> None:
    """The ``base`` child: one JSON request per line -> the round's times."""
    for line in sys.stdin:
        request = json.loads(line)
        times = time_round(_decode_only, request["clips"], request["jobs"])
        print(json.dumps(times), flush=True)


class BaseChild:
    def __init__(self, checkout: str):
        env = dict(os.environ, PYTHONPATH=checkout)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def round(self, clips: list[str], jobs: dict) -> list[float]:
        self.proc.stdin.write(json.dumps({"clips": clips, "jobs": jobs}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# --- where the time goes --------------------------------------------------------------------


def breakdown(clips: list[str], rounds: int) -> dict:
    """Median ms per clip of each stage of this checkout's CPU decode."""
    from cps_ray._decode.cpu import _converter, _video_stream
    from cps_ray._decode.opening import Request, open_for_plan
    from cps_ray._decode.planned import decode_plan, plan_packets
    from cps_ray._guards import Limits, check_file

    class Nothing:
        def output_shape(self, rotation):
            return (3, 1, 1)

        def __call__(self, frame, out=None):
            return out

    names = ("check", "open", "index", "decode", "convert")
    stages: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(rounds):
        for path in clips:
            t0 = time.perf_counter()
            check_file(path)
            t1 = time.perf_counter()
            req = Request(path, T, "auto", S, "cpu", 1, Limits(path, None, None))
            with open_for_plan(path) as container:
                stream = _video_stream(container, path)
                convert = _converter(stream, req)  # a new converter per decoder
                t2 = time.perf_counter()
                plan = plan_packets(container, stream, "auto", T, req.limits)
                t3 = time.perf_counter()
                decode_plan(plan, stream, req, lambda threads: Nothing())
                t4 = time.perf_counter()
            with open_for_plan(path) as container:  # again, converting
                stream = _video_stream(container, path)
                plan = plan_packets(container, stream, "auto", T, req.limits)
                t5 = time.perf_counter()
                decode_plan(plan, stream, req, convert)
                t6 = time.perf_counter()
            spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, (t6 - t5) - (t4 - t3))
            for key, value in zip(names, spans, strict=True):
                stages[key].append(value * 1e3)
    return {k: round(statistics.median(v), 2) for k, v in stages.items()}


# --- main -----------------------------------------------------------------------------------


def run_folder(folder: str, args, base: BaseChild | None) -> dict:
    clips = sorted(str(p) for p in Path(folder).glob("*.mp4"))
    if args.limit:
        clips = clips[: args.limit]
    jobs = plan_jobs(clips)
    names = [n for n in args.runners if n in LOCAL or (n == "base" and base is not None)]
    times: dict[str, list[list[list[float]]]] = {n: [] for n in names}

    def one(name):
        if name == "base":
            return base.round(clips, jobs)
        return time_round(LOCAL[name], clips, jobs)

    for name in names:  # untimed warm-up round
        one(name)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(one(name))
    # per clip, the median over rounds (wall, then CPU)
    per_clip = {n: [statistics.median(r[0] for r in col) * 1e3 for col in zip(*times[n])]
                for n in names}  # fmt: skip
    cpu_clip = {n: [statistics.median(r[1] for r in col) * 1e3 for col in zip(*times[n])]
                for n in names}  # fmt: skip
    summary = {}
    for name in names:
        row = {
            "ms_per_video": round(statistics.median(per_clip[name]), 2),
            "mean_ms": round(statistics.fmean(per_clip[name]), 2),
            "cpu_ms_per_video": round(statistics.median(cpu_clip[name]), 2),
        }
        if "decord" in per_clip:
            ratios = [d / x for d, x in zip(per_clip["decord"], per_clip[name])]
            row["speed_vs_decord"] = round(statistics.median(ratios), 3)
        summary[name] = row
    result = {
        "folder": folder,
        "clips": len(clips),
        "rounds": args.rounds,
        "summary": summary,
        "per_clip_ms": {n: [round(x, 3) for x in v] for n, v in per_clip.items()},
    }
    if args.breakdown:
        result["breakdown_ms"] = breakdown(clips, max(1, args.rounds // 2))
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['folder']}: {result['clips']} clips, {result['rounds']} rounds, "
          f"T={T} S={S}, one video at a time, one thread")  # fmt: skip
    print(f"{'runner':<14}{'ms/video':>10}{'mean':>9}{'CPU ms':>9}{'x decord':>10}")
    for name, row in result["summary"].items():
        ratio = row.get("speed_vs_decord")
        shown = "" if ratio is None else f"{ratio:.3f}"
        print(f"{name:<14}{row['ms_per_video']:>10.2f}{row['mean_ms']:>9.2f}"
              f"{row['cpu_ms_per_video']:>9.2f}{shown:>10}")  # fmt: skip
    if "breakdown_ms" in result:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in result["breakdown_ms"].items())
        print(f"decode_only stages (ms, median): {parts}")


def one_torch_thread() -> None:
    """torch's intra-op pool at one thread, in both processes: its idle
    OpenMP threads spin on the cores the decoders use (as workers set it)."""
    import torch

    torch.set_num_threads(1)


def main(argv=None) -> int:
    args = parse_args(argv)
    one_torch_thread()
    if args.serve:
        serve()
        return 0
    if args.make:
        make_clips(Path(args.make[0]), Path(args.make[1]))
        return 0
    base = BaseChild(args.base) if args.base and "base" in args.runners else None
    results = []
    try:
        for folder in args.folders:
            results.append(run_folder(folder, args, base))
            print_table(results[-1])
    finally:
        if base is not None:
            base.close()
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _machine import machine_info

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "base": args.base,
                                               "results": results}, indent=1))  # fmt: skip
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
