"""Peak memory (RSS) of one decode/fused actor on 720p, 1080p and 4K inputs.

    python benchmark/benchmark_memory.py [--calls 5] [--threads 1 0 8 16] [--only NAME]
                                         [--json PATH] [--inputs DIR]

About 4.5 minutes on 2 cores (plus about a minute to make the inputs once).

Each measurement runs in a fresh child process that does what one decode or
fused actor does: build ``cps_ray._core.VideoCore(config)`` (which
resolves the backends and warms the Numba kernel) and call it ``--calls``
times on one file, dropping each row before the next call. The parent reads
the child's peak RSS from ``os.wait4``'s rusage (``ru_maxrss``, KiB on Linux);
the child also reports its RSS after imports, after warmup (the baseline) and
its high-water mark after every call, so the per-video increment and any
creep over repeated calls are visible. ``decode_only`` rows do the same with
``input_size=None``, where the native frames (uint8 ``[T, 3, H, W]``) are
kept.

The inputs (long GOP, one H.264 with B-frames; x265 uses B-frames by
default) are made once with the ffmpeg CLI into ``--inputs`` and reused.
Prints a table and the per-thread fits, writes JSON; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# The parent imports neither torch nor cps_ray: a light parent keeps the
# children's ru_maxrss their own (a vfork child briefly shares the parent's memory).
from _machine import describe, load_average, machine_info, usable_cores
from _report import write_json
from make_corpus import RATE, source_graph

MIB = 2**20
RESULT_TAG = "MEMORY_RESULT "


@dataclass(frozen=True)
class Input:
    """One generated video."""

    name: str
    codec: str  # h264 or hevc
    width: int
    height: int
    seconds: float
    content: str  # a source graph of make_corpus.py
    gop: int = 250
    bframes: int | None = None  # None: the encoder's default
    sweep: bool = False  # measure every --threads value, and T=64 (else the default only)

    @property
    def label(self) -> str:
        return f"{self.height}p {self.codec}" + (f" bf{self.bframes}" if self.bframes else "")


INPUTS = [
    Input("720p_h264_gop250_5s_pan.mp4", "h264", 1280, 720, 5, "pan"),
    Input("1080p_h264_gop250_5s_pan.mp4", "h264", 1920, 1080, 5, "pan", sweep=True),
    Input("1080p_hevc_gop250_5s_mandelbrot.mp4", "hevc", 1920, 1080, 5, "mandelbrot"),
    Input("2160p_h264_gop250_bf3_5s_pan.mp4", "h264", 3840, 2160, 5, "pan", 250, 3, True),
    Input("2160p_hevc_gop250_5s_mandelbrot.mp4", "hevc", 3840, 2160, 5, "mandelbrot", sweep=True),
]


def encode_args(spec: Input) -> list[str]:
    """Fast encoders (the files are for decoding), long GOP."""
    if spec.codec == "h264":
        args = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-g", str(spec.gop)]
        if spec.bframes is not None:
            args += ["-bf", str(spec.bframes)]
        return args
    if spec.codec == "hevc":
        # x265's ultrafast preset keeps its default B-frames and open GOP.
        return [
            "-c:v", "libx265", "-preset", "ultrafast", "-crf", "28", "-g", str(spec.gop),
            "-x265-params", "log-level=error", "-tag:v", "hvc1",
        ]  # fmt: skip
    raise ValueError(f"unknown codec {spec.codec!r}")


def make_inputs(out_dir: Path, specs: list[Input]) -> dict[str, Path]:
    """Encode what is missing from ``out_dir`` (a cache); return name -> path."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise SystemExit("the 'ffmpeg' command was not found on PATH; install FFmpeg")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for spec in specs:
        target = out_dir / spec.name
        if not (target.is_file() and target.stat().st_size > 0):
            partial = out_dir / f".partial.{spec.name}"
            cmd = [
                binary, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                "-f", "lavfi", "-i", source_graph(spec.content, spec.width, spec.height),
                "-t", f"{spec.seconds:g}", *encode_args(spec), "-pix_fmt", "yuv420p",
                str(partial),
            ]  # fmt: skip
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                partial.unlink(missing_ok=True)
                reason = " ".join(proc.stderr.split())[:400] or f"exit status {proc.returncode}"
                raise SystemExit(f"ffmpeg could not make {target}: {reason}")
            os.replace(partial, target)
            took = f"{time.perf_counter() - start:5.1f} s"
        else:
            took = "(cached)"
        print(f"{spec.name:40} {target.stat().st_size / 1e6:7.1f} MB {took}", flush=True)
        paths[spec.name] = target
    return paths


# --- the child: one actor's work in a fresh process ---------------------------------------


def _status_mib() -> dict[str, float]:
    """VmRSS (now) and VmHWM (high-water mark) of this process, MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    return out


def run_child(spec: dict) -> dict:
    """Import, warm up, then decode ``spec["path"]`` ``spec["calls"]`` times."""
    start = time.perf_counter()
    from cps_ray import DecodeConfig, PatchStreamConfig, decode_only
    from cps_ray._core import VideoCore

    after_imports = _status_mib()["VmRSS"]
    threads = spec["ffmpeg_threads"]
    if spec["mode"] == "patch":
        config = PatchStreamConfig(
            sequence_length=spec["sequence_length"],
            input_size=spec["input_size"],
            patch_size=spec["patch_size"],
            k_keep=spec["k_keep"],
            decode_backend="cpu",
            process_backend="cpu",
            ffmpeg_threads=threads,
        )
        worker = VideoCore(config)  # resolves backends, warms the Numba kernel
        resolved_threads = worker.num_threads

        def call(path: str) -> str | None:
            return worker.row(path)["error"]
    else:
        config = DecodeConfig(
            sequence_length=spec["sequence_length"],
            input_size=None,
            decode_backend="cpu",
            ffmpeg_threads=threads,
        )
        from cps_ray._devices import decode_threads

        resolved_threads = decode_threads(config)

        def call(path: str) -> str | None:
            out = decode_only(DecodeConfig(**{**config.decode_fields(), "video_path": path}))
            assert tuple(out.frames.shape[:2]) == (spec["sequence_length"], 3)
            return None

    warm = _status_mib()
    setup_seconds = time.perf_counter() - start
    calls = []
    for _ in range(spec["calls"]):
        t0 = time.perf_counter()
        error = call(spec["path"])  # the result is dropped before the next call
        seconds = time.perf_counter() - t0
        now = _status_mib()
        calls.append(
            {"seconds": seconds, "hwm_mib": now["VmHWM"], "rss_mib": now["VmRSS"], "error": error}
        )
    return {
        "ffmpeg_threads_resolved": resolved_threads,
        "rss_after_imports_mib": after_imports,
        "baseline_rss_mib": warm["VmRSS"],
        "hwm_before_first_video_mib": warm["VmHWM"],
        "setup_seconds": setup_seconds,
        "calls": calls,
    }


def measure(spec: dict, timeout_s: float, env: dict | None = None) -> dict:
    """Run one child; its peak RSS comes from ``os.wait4``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        log.seek(0)
        text = log.read()
    record = {
        "exit_status": proc.returncode,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": time.monotonic() - started,
    }
    lines = [line for line in text.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(text.strip().splitlines()[-3:])[-400:]
        record["failed"] = f"exit status {proc.returncode}: {tail}"
        return record
    record.update(json.loads(lines[-1][len(RESULT_TAG) :]))
    errors = [c["error"] for c in record["calls"] if c["error"]]
    if errors:
        record["failed"] = errors[0]
    return record


# --- the plan, the table, the fits ----------------------------------------------------------


def plan(args, specs: list[Input], paths: dict[str, Path]) -> list[dict]:
    """Which (input, mode, T, threads) to measure."""
    cases = []

    def add(spec: Input, mode: str, t: int, threads: int, env: dict | None = None) -> None:
        cases.append(
            {
                "input": spec.name,
                "label": spec.label,
                "width": spec.width,
                "height": spec.height,
                "path": str(paths[spec.name]),
                "mode": mode,
                "sequence_length": t,
                "input_size": args.input_size if mode == "patch" else None,
                "patch_size": args.patch_size,
                "k_keep": args.k_keep,
                "ffmpeg_threads": threads,
                "calls": args.calls,
                "env": env or {},
            }
        )

    for spec in specs:
        for threads in args.threads if spec.sweep else [0]:
            add(spec, "patch", 16, threads)
    for spec in specs:
        if spec.sweep:
            add(spec, "patch", 64, 0)
    for spec in specs:
        add(spec, "decode_only", 16, 0)
    # Is the growth with threads FFmpeg's frames, or glibc's per-thread arenas?
    for spec in specs:
        if spec.height >= 2160 and spec.bframes:
            add(spec, "patch", 16, max(args.threads), env={"MALLOC_ARENA_MAX": "2"})
    return cases


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a * x + b``; returns (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return a, my - a * mx


def thread_fits(results: list[dict]) -> list[dict]:
    """Per input: peak RSS and per-video increment as a line in ffmpeg threads."""
    fits = []
    for spec in INPUTS:
        rows = [
            r
            for r in results
            if r["input"] == spec.name
            and r["mode"] == "patch"
            and r["sequence_length"] == 16
            and not r["env"]
            and "failed" not in r
        ]
        threads = sorted({r["ffmpeg_threads_resolved"] for r in rows})
        if len(threads) < 2:
            continue
        xs = [r["ffmpeg_threads_resolved"] for r in rows]
        a, b = fit_line(xs, [r["increment_mib"] for r in rows])
        fits.append(
            {
                "input": spec.name,
                "label": spec.label,
                "threads": threads,
                "mib_per_thread": round(a, 1),
                "increment_at_0_threads_mib": round(b, 1),
                "baseline_rss_mib": round(max(r["baseline_rss_mib"] for r in rows), 1),
                "max_residual_mib": round(
                    max(abs(r["increment_mib"] - (a * x + b)) for r, x in zip(rows, xs)), 1
                ),
            }
        )
    return fits


def finish(record: dict, case: dict) -> dict:
    row = {**case, **record}
    if "failed" not in row:
        row["increment_mib"] = row["peak_rss_mib"] - row["baseline_rss_mib"]
        row["peak_after_first_call_mib"] = row["calls"][0]["hwm_mib"]
        row["hwm_mib"] = row["calls"][-1]["hwm_mib"]
        row["median_call_seconds"] = sorted(c["seconds"] for c in row["calls"])[
            len(row["calls"]) // 2
        ]
        t, h, w = case["sequence_length"], case["height"], case["width"]
        kept = (t, 3, h, w) if case["mode"] == "decode_only" else (t, 3, *[case["input_size"]] * 2)
        row["frames_tensor_mib"] = kept[0] * kept[1] * kept[2] * kept[3] / MIB
    return row


def print_row(r: dict) -> None:
    threads = f"{r['ffmpeg_threads'] or 'def'}"
    if "ffmpeg_threads_resolved" in r:
        threads += f"->{r['ffmpeg_threads_resolved']}"
    env = " " + " ".join(f"{k}={v}" for k, v in r["env"].items()) if r["env"] else ""
    head = f"{r['label']:13} {r['mode']:11} {r['sequence_length']:3d} {threads:>7}"
    if "failed" in r:
        print(f"{head}  FAILED: {r['failed']}{env}")
        return
    print(
        f"{head} {r['rss_after_imports_mib']:8.0f} {r['baseline_rss_mib']:8.0f} "
        f"{r['peak_after_first_call_mib']:8.0f} {r['peak_rss_mib']:8.0f} "
        f"{r['increment_mib']:8.0f} {r['frames_tensor_mib']:8.1f} "
        f"{r['median_call_seconds']:7.2f}{env}",
        flush=True,
    )


HEADER = (
    f"{'input':13} {'mode':11} {'T':>3} {'threads':>7} {'imports':>8} {'baseline':>8} "
    f"{'peak@1':>8} {'peak':>8} {'+video':>8} {'frames':>8} {'s/call':>7}"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", default="benchmark/out/memory_inputs", help="video cache folder")
    ap.add_argument("--calls", type=int, default=5, help="videos decoded per child process")
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 0, 8, 16],
        help="ffmpeg_threads swept on the 1080p and 4K inputs (0: the default, all cores)",
    )
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--k-keep", type=int, default=2048)
    ap.add_argument("--only", default="", help="only the inputs whose file name contains this")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per child")
    ap.add_argument("--json", default="benchmark/out/memory.json")
    args = ap.parse_args()

    if args.child:
        print(RESULT_TAG + json.dumps(run_child(json.loads(args.child))), flush=True)
        return

    started = time.perf_counter()
    load_at_start = load_average()
    specs = [spec for spec in INPUTS if args.only in spec.name]
    if not specs:
        raise SystemExit(f"no input name contains {args.only!r}: {[s.name for s in INPUTS]}")
    paths = make_inputs(Path(args.inputs), specs)
    cases = plan(args, specs, paths)
    print(
        f"\n{len(cases)} child processes, {args.calls} calls each; {usable_cores()} cores; "
        "MiB (imports: RSS after imports; baseline: after warmup, before the first video; "
        "peak@1: high-water after the first video; peak: ru_maxrss after all calls; "
        "+video: peak - baseline; frames: the uint8 frames tensor kept per video)\n"
    )
    print(HEADER)
    print("-" * len(HEADER))
    results = []
    for case in cases:
        child = {k: case[k] for k in case if k not in ("label", "width", "height", "env", "input")}
        row = finish(measure(child, args.timeout, case["env"]), case)
        results.append(row)
        print_row(row)

    fits = thread_fits(results)
    print("\nper-video increment (peak - baseline) vs ffmpeg threads, least squares, T=16:")
    for f in fits:
        print(
            f"  {f['label']:13} {f['mib_per_thread']:6.1f} MiB/thread + "
            f"{f['increment_at_0_threads_mib']:6.1f} MiB over a baseline of "
            f"{f['baseline_rss_mib']:.0f} MiB (threads {f['threads']}, "
            f"max residual {f['max_residual_mib']} MiB)"
        )

    # Imports torch and torchcodec: only now, after every child has run.
    info = machine_info()
    info["load_average_at_start"] = load_at_start
    info["load_average_at_end"] = load_average()
    seconds = time.perf_counter() - started
    cpu = sum(r["cpu_seconds"] for r in results)
    print(f"\n{describe(info)}; {seconds:.0f} s wall, children {cpu:.0f} CPU s")
    print(f"load average at start {load_at_start}, at end {info['load_average_at_end']}")
    write_json(
        args.json,
        {
            "machine": info,
            "command": " ".join(["python", *sys.argv]),
            "seconds": round(seconds, 1),
            "children_cpu_seconds": round(cpu, 1),
            "inputs": [asdict(spec) | {"rate": RATE} for spec in INPUTS],
            "results": results,
            "thread_fits": fits,
        },
    )


if __name__ == "__main__":
    main()
