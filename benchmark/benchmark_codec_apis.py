"""cps_ray's decode_only and patch_stream against decord and plain torchcodec,
under the parallel strategies of torchcodec's parallel-decoding tutorial.

    python benchmark/benchmark_codec_apis.py VIDEO_DIR \\
        --apis decode_only patch_stream decord torchcodec \\
        --decode-backends cpu gpu --process-backends cpu gpu --limit 10 \\
        --json benchmark/out/codec_apis.json --png benchmark/out/codec_apis.png

Same work for every API: the same videos (the first ``--limit`` of the sorted
folder, less any video one of the APIs cannot decode, listed as excluded),
the same ``T`` frame indices (cps_ray's, handed to the others), the same
uint8 ``[T, 3, S, S]`` output (short side to ``S``, center crop), back in
this process. Strategies over many videos, as in torchcodec's tutorial:

- ``sequential``: one video at a time, 1 FFmpeg thread;
- ``ffmpeg_threads``: one video at a time, FFmpeg threads = cores;
- ``thread_pool``: ``--workers`` videos at once in threads, FFmpeg threads =
  cores // workers; for ``patch_stream`` this is cps_ray's own ``local_stream``;
- ``process_pool``: the same in spawned processes (started and warmed before
  timing; torch intra-op threads = cores // workers in each, as PyTorch's
  DataLoader does; outputs are pickled back).

Warm-up: one untimed pass of every API over every video (it also finds the
videos an API cannot decode), then each strategy once on a few videos. Timed
passes are interleaved (every combination once per repeat) so that load from
elsewhere hits all alike; each figure is the median of ``--repeats``.
A combination this machine cannot run (GPU without CUDA, a library without a
GPU build) is a ``skipped`` record with its reason. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import _codec_runners as runners
import _report
from _machine import describe, load_average, machine_info, require, usable_cores

STRATEGIES = ("sequential", "ffmpeg_threads", "thread_pool", "process_pool")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video_dir", help="folder of videos (searched recursively)")
    ap.add_argument("--apis", nargs="+", choices=runners.APIS, default=list(runners.APIS))
    ap.add_argument("--decode-backends", nargs="+", choices=("cpu", "gpu"), default=["cpu"])
    ap.add_argument("--process-backends", nargs="+", choices=("cpu", "gpu"), default=["cpu"])
    ap.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    ap.add_argument("--limit", type=int, default=10, help="use the first N videos (sorted)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--k-keep", type=int, default=2048)
    ap.add_argument(
        "--workers", type=int, default=usable_cores(), help="pool size (default: cores)"
    )
    ap.add_argument(
        "--decord-resize",
        choices=("decoder", "torch"),
        default="decoder",
        help="decord: decode at the resized size (default) or native then resize in torch",
    )
    ap.add_argument(
        "--per-video",
        action="store_true",
        help="also time each video alone per API (1 thread), including excluded ones",
    )
    ap.add_argument("--json", default="benchmark/out/codec_apis.json")
    ap.add_argument("--png", default=None, help="bar chart of videos/s (needs matplotlib)")
    args = ap.parse_args(argv)
    for name in ("limit", "repeats", "workers", "sequence_length", "input_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def prepare(paths: list[str], args, job_for) -> tuple[list, list[dict]]:
    """(plans, records): a plan for each video cps_ray can plan (``None``
    otherwise) and one record per video; a video an API fails on is
    ``excluded`` from the timed strategies."""
    plans, videos = [], []
    cores = usable_cores()
    for path in paths:
        record: dict = {"path": path}
        try:
            plan = runners.make_plan(path, args.sequence_length, args.input_size)
        except Exception as err:
            record["excluded"] = f"cps_ray: {_reason(err)}"
            plan = None
        else:
            record.update(
                num_frames=plan.num_frames,
                width=plan.width,
                height=plan.height,
                frame_indices=list(plan.frame_indices),
            )
            try:
                record["decoded_per_frame"] = runners.decoded_per_frame(
                    path, plan, args.sequence_length
                )
            except Exception as err:  # no packet index: only the times are reported
                record["decoded_per_frame"] = {"error": _reason(err)}
            failed = {}
            for api in args.apis:
                try:
                    runners.run_checked(job_for(api, "cpu", "cpu").with_threads(cores), plan)
                except Exception as err:
                    failed[api] = _reason(err)
            if failed:
                record["failed"] = failed
                record["excluded"] = "; ".join(f"{a}: {r}" for a, r in failed.items())
        plans.append(plan)
        videos.append(record)
        state = record.get("excluded", "ok")
        print(f"  {os.path.basename(path):44} {state[:90]}", file=sys.stderr, flush=True)
    return plans, videos


def per_video(plans: list, videos: list[dict], args, job_for) -> None:
    """Seconds per video and API, one at a time with 1 FFmpeg thread (the
    work itself, free of scheduling); stored in each video's record."""
    print(f"\nper video, 1 thread, fastest of {args.repeats} (s) / packets decoded per frame")
    print(f"{'video':44} " + " ".join(f"{api[-21:]:>21}" for api in args.apis))
    for plan, record in zip(plans, videos):
        if plan is None:
            continue
        cells, seconds = [], {}
        for api in args.apis:
            if api in record.get("failed", {}):
                cells.append(f"{'failed':>21}")
                continue
            job = job_for(api, "cpu", "cpu").with_threads(1)
            times = []
            try:
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    runners.run(job, plan)
                    times.append(time.perf_counter() - start)
            except Exception as err:
                seconds[api] = {"error": _reason(err)}
                cells.append(f"{'failed':>21}")
                continue
            seconds[api] = {"fastest": round(min(times), 4), "median": statistics.median(times)}
            per_frame = record.get("decoded_per_frame", {}).get(api)
            cells.append(f"{min(times):12.3f} / {per_frame if per_frame is not None else '-':>5}")
        record["seconds_1_thread"] = seconds
        print(f"{os.path.basename(plan.path)[:44]:44} " + " ".join(cells), flush=True)


class Runner:
    """Runs one pass of a strategy over all plans; owns the process pool."""

    def __init__(self, workers: int):
        self.workers = workers
        self.cores = usable_cores()
        self._pool: ProcessPoolExecutor | None = None

    def threads(self, strategy: str) -> int:
        if strategy == "sequential":
            return 1
        if strategy == "ffmpeg_threads":
            return self.cores
        return max(1, self.cores // self.workers)

    def width(self, strategy: str) -> int:
        return self.workers if strategy in ("thread_pool", "process_pool") else 1

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=runners.worker_init,
                initargs=(max(1, self.cores // self.workers),),
            )
            # Start every process now, not inside a timed pass.
            list(self._pool.map(time.sleep, [0.2] * self.workers))
        return self._pool

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of this process and its pool processes so
        far: the work done, which load from elsewhere hardly changes."""
        total = time.process_time()
        pids = list(getattr(self._pool, "_processes", None) or {})  # Linux /proc below
        tick = os.sysconf("SC_CLK_TCK")
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return total

    def run_pass(self, strategy: str, job, plans: list) -> None:
        job = job.with_threads(self.threads(strategy))
        if strategy in ("sequential", "ffmpeg_threads"):
            for plan in plans:
                runners.run(job, plan)
        elif strategy == "thread_pool" and job.api == "patch_stream":
            from cps_ray import local_stream

            cfg = runners.patch_config(job.with_threads(0), None)  # 0: cores // workers
            rows = list(local_stream([p.path for p in plans], cfg, num_workers=self.workers))
            bad = [r["error"] for r in rows if r["error"]]
            if bad:
                raise RuntimeError(f"local_stream: {len(bad)} error rows, first: {bad[0]}")
        elif strategy == "thread_pool":
            with ThreadPoolExecutor(max_workers=self.workers) as ex:
                list(ex.map(lambda plan: runners.run(job, plan), plans))
        else:
            list(self.pool().map(runners.run_in_worker, [job] * len(plans), plans))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "decord" in args.apis:
        require("decord", "--apis decord")
    if args.png:
        require("matplotlib", "--png")
    paths = _report.video_paths(args.video_dir, args.limit)
    machine = machine_info()
    header = describe(machine)
    print(header, file=sys.stderr)

    def job_for(api, dec, proc):
        return runners.Job(
            api=api,
            decode_backend=dec,
            process_backend=proc if api == "patch_stream" else None,
            sequence_length=args.sequence_length,
            input_size=args.input_size,
            patch_size=args.patch_size,
            k_keep=args.k_keep,
            decord_resize=args.decord_resize,
        )

    print(f"warm-up pass over {len(paths)} videos", file=sys.stderr)
    all_plans, videos = prepare(paths, args, job_for)
    plans = [p for p, v in zip(all_plans, videos) if p is not None and "excluded" not in v]
    if args.per_video:
        per_video(all_plans, videos, args, job_for)
    if not plans:
        raise SystemExit("no video could be decoded by every API; see the list above")

    combos, results = [], []
    for api in args.apis:
        for dec in args.decode_backends:
            for proc in args.process_backends if api == "patch_stream" else [None]:
                job = job_for(api, dec, proc)
                reason = runners.skip_reason(api, dec, proc)
                if reason is None:
                    try:
                        runners.run_checked(job, plans[0])
                    except Exception as err:
                        reason = _reason(err)
                for strategy in args.strategies:
                    base = {
                        "api": api,
                        "decode_backend": dec,
                        "process_backend": proc,
                        "strategy": strategy,
                    }
                    if reason is not None:
                        results.append({**base, "skipped": True, "reason": reason})
                    else:
                        combos.append((base, job))
                        results.append(base)

    runner = Runner(args.workers)
    times: dict[int, list[float]] = {id(base): [] for base, _ in combos}
    cpu_times: dict[int, list[float]] = {id(base): [] for base, _ in combos}
    failed: dict[int, str] = {}
    try:
        for base, job in combos:  # each strategy warmed on a few videos
            try:
                runner.run_pass(base["strategy"], job, plans[: runner.width(base["strategy"])])
            except Exception as err:
                failed[id(base)] = _reason(err)
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
            for base, job in combos:
                if id(base) in failed:
                    continue
                cpu_start, start = runner.cpu_seconds(), time.perf_counter()
                try:
                    runner.run_pass(base["strategy"], job, plans)
                except Exception as err:
                    failed[id(base)] = _reason(err)
                    continue
                times[id(base)].append(time.perf_counter() - start)
                cpu_times[id(base)].append(runner.cpu_seconds() - cpu_start)
    finally:
        runner.close()

    for base, _ in combos:
        if id(base) in failed:
            base.update(skipped=True, reason=f"failed while timing: {failed[id(base)]}")
            continue
        seconds = statistics.median(times[id(base)])
        n = len(plans)
        base.update(
            skipped=False,
            workers=runner.width(base["strategy"]),
            ffmpeg_threads=runner.threads(base["strategy"]),
            videos=n,
            frames=n * args.sequence_length,
            seconds=round(seconds, 4),
            seconds_per_repeat=[round(t, 4) for t in times[id(base)]],
            videos_per_second_fastest_repeat=round(n / min(times[id(base)]), 3),
            cpu_seconds_per_video=round(statistics.median(cpu_times[id(base)]) / n, 4),
            videos_per_second=round(n / seconds, 3),
            frames_per_second=round(n * args.sequence_length / seconds, 2),
        )
        if base["api"] == "patch_stream" and base["strategy"] == "thread_pool":
            base["note"] = "cps_ray local_stream"

    summary = {
        "median": _report.targets(results),
        "fastest_repeat": _report.targets(results, "videos_per_second_fastest_repeat"),
    }
    machine["load_average_at_end"] = load_average()
    print()
    _report.print_table(results, header)
    excluded = [v for v in videos if "excluded" in v]
    for v in excluded:
        print(f"excluded {os.path.basename(v['path'])}: {v['excluded'][:120]}")
    _report.print_targets(summary["median"])
    _report.print_targets(summary["fastest_repeat"])

    config = {k: v for k, v in vars(args).items() if k not in ("json", "png")}
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine,
        "config": config,
        "videos": videos,
        "results": results,
        "targets": summary,
    }
    _report.write_json(args.json, report)
    if args.png:
        os.makedirs(os.path.dirname(args.png) or ".", exist_ok=True)
        title = f"{len(plans)} videos, T={args.sequence_length}, S={args.input_size}\n{header}"
        _report.plot(results, args.png, title)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
