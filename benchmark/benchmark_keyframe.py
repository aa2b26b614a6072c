"""What ``uniform_strategy="keyframe"`` saves: per video, ``decode_only`` with
the exact ``index`` strategy and with ``keyframe``, and decord on the frames
``keyframe`` chose, one FFmpeg thread each, side by side in one process.

    python benchmark/benchmark_keyframe.py VIDEO_DIR [--limit 12] [--repeats 3]
        [--json benchmark/out/keyframe.json]

``vs decord``: decord decoding the exact uniform frames (what a decord user
asks for) over ``keyframe``'s time; ``same``: decord on ``keyframe``'s own
frames. Also reports the packets the plan decodes per sampled frame (the cost model of
``cps_ray._decode.packets``: from the keyframe before, in decode order) for both
strategies, and how far each chosen frame lies from its uniform target, as a
share of half the sampling interval (at most 1 by construction).
Prints a table and writes JSON; nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from _machine import describe, machine_info
from _report import video_paths, write_json


def _timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm: libraries, the file in the page cache
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video_dir")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--json", default="benchmark/out/keyframe.json")
    args = ap.parse_args()

    from cps_ray import DecodeConfig, decode_only
    from cps_ray._decode.packets import choose_keyframes, read_index
    from cps_ray._sampling import index_positions

    try:
        import decord
    except ImportError:
        decord = None
    t, s = args.sequence_length, args.input_size
    records = []
    for path in video_paths(args.video_dir, args.limit):

        def run(strategy, path=path):
            cfg = DecodeConfig(
                video_path=path, sequence_length=t, input_size=s, uniform_strategy=strategy,
                decode_backend="cpu", ffmpeg_threads=1,
            )  # fmt: skip
            return decode_only(cfg)

        index_s, exact = _timed(lambda: run("index"), args.repeats)
        keyframe_s, cheap = _timed(lambda: run("keyframe"), args.repeats)
        plan = read_index(path)
        n = plan.num_frames
        targets = index_positions(n, t)
        chosen = choose_keyframes(plan, t)
        half = max((n - 1) / max(t - 1, 1) / 2, 1e-9)
        record = {
            "video": os.path.basename(path),
            "frames": n,
            "keyframes": int(plan.keyframe.sum()),
            "index_s": index_s,
            "keyframe_s": keyframe_s,
            "speedup": index_s / keyframe_s,
            "route": cheap.route,
            "cost_per_frame_index": float(plan.cost[targets].mean()),
            "cost_per_frame_keyframe": float(plan.cost[chosen].mean()),
            "max_offset_share": float(np.abs(chosen - targets).max() / half),
            "same_frames_as_plan": cheap.frame_indices.tolist() == chosen.tolist(),
        }
        reader = None
        if decord is not None:
            try:
                reader = decord.VideoReader(path, num_threads=1)
            except decord.DECORDError as err:  # e.g. AV1: decord's FFmpeg 4.1 has no decoder
                record["decord_error"] = str(err).splitlines()[-1][-80:]
        if reader is not None:

            def with_decord(picked, reader=reader):
                reader.seek(0)
                return reader.get_batch(picked)

            picked = cheap.frame_indices.tolist()
            uniform = exact.frame_indices.tolist()
            record["decord_uniform_s"] = _timed(lambda u=uniform: with_decord(u), args.repeats)[0]
            record["decord_same_frames_s"] = _timed(lambda p=picked: with_decord(p), args.repeats)[
                0
            ]
            # what a decord user gets for uniform frames, against keyframe
            record["keyframe_vs_decord"] = record["decord_uniform_s"] / keyframe_s
            record["index_vs_decord"] = record["decord_uniform_s"] / index_s
            record["keyframe_vs_decord_same_frames"] = record["decord_same_frames_s"] / keyframe_s
        records.append(record)
        print(f"  {record['video'][:44]:44} {index_s:7.3f} {keyframe_s:7.3f}", file=sys.stderr)
    print(describe(machine_info()))
    print(f"T={t}, S={s}, one FFmpeg thread, median of {args.repeats}")
    head = f"{'video':44} {'frames':>6} {'keys':>5} {'index s':>8} {'keyframe s':>10} {'x':>5}"
    print(
        head + f" {'pkts/frame idx':>14} {'kf':>5} {'offset':>6} {'vs decord':>9} {'same':>6}"
        f" {'index vs decord':>15}"
    )
    for r in records:
        vs = r.get("keyframe_vs_decord")
        exact_vs = "n/a" if vs is None else f"{r['index_vs_decord']:.2f}x"
        same = r.get("keyframe_vs_decord_same_frames")
        print(
            f"{r['video'][:44]:44} {r['frames']:6d} {r['keyframes']:5d} {r['index_s']:8.3f} "
            f"{r['keyframe_s']:10.3f} {r['speedup']:5.1f} {r['cost_per_frame_index']:14.1f} "
            f"{r['cost_per_frame_keyframe']:5.1f} {r['max_offset_share']:6.2f} "
            f"{'n/a' if vs is None else f'{vs:.2f}x':>9} "
            f"{'n/a' if same is None else f'{same:.2f}x':>6} "
            f"{exact_vs:>15}"
        )
    write_json(
        args.json,
        {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "machine": machine_info(),
            "config": vars(args),
            "videos": records,
        },
    )


if __name__ == "__main__":
    main()
