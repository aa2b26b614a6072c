"""NVDEC decode throughput (``decode_only`` with ``decode_backend="gpu"``) at
360p to 2160p, with 1 to 8 concurrent decode sessions (threads; torchcodec
releases the GIL), the decoder utilisation nvidia-smi reports and the peak
device memory torch allocated; then the peak memory of the GPU resize of a
16-frame 4K clip, in chunks (the default) and in one pass.

    python benchmark/benchmark_nvdec.py VIDEO_DIR [--sessions 1 4 8] [--json PATH]

VIDEO_DIR holds files named ``*360p*``, ``*720p*``, ``*1080p*``, ``*2160p*``
(``scripts/gpu_session.sh prepare`` makes one of each). Without a CUDA device
every row is reported as skipped. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _report import write_json

RESOLUTIONS = ("360p", "720p", "1080p", "2160p")


def _sample_utilisation(stop: threading.Event, samples: list[tuple[int, int]]) -> None:
    query = [
        "nvidia-smi",
        "--query-gpu=utilization.decoder,utilization.gpu",
        "--format=csv,noheader,nounits",
    ]
    while not stop.is_set():
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
            dec, gpu = (int(v) for v in out.split("\n")[0].split(","))
            samples.append((dec, gpu))
        except (OSError, ValueError, subprocess.SubprocessError):
            return
        time.sleep(0.2)


def _decode_rate(paths, sessions: int, args) -> dict:
    import torch

    from cps_ray import DecodeConfig, decode_only

    jobs = [paths[i % len(paths)] for i in range(max(args.clips, 2 * sessions))]

    def one(path):
        out = decode_only(
            DecodeConfig(
                path,
                sequence_length=args.sequence_length,
                input_size=args.input_size,
                decode_backend="gpu",
            )
        )
        return out.frames.shape

    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(one, jobs[:sessions]))  # warm: decoders, CUDA context
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        stop, samples = threading.Event(), []
        sampler = threading.Thread(target=_sample_utilisation, args=(stop, samples))
        sampler.start()
        start = time.perf_counter()
        list(pool.map(one, jobs))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
    return {
        "skipped": False,
        "clips": len(jobs),
        "seconds": seconds,
        "clips_per_second": len(jobs) / seconds,
        "nvdec_utilisation_mean": statistics.mean(s[0] for s in samples) if samples else None,
        "gpu_utilisation_mean": statistics.mean(s[1] for s in samples) if samples else None,
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def _resize_peaks(input_size: int) -> list[dict]:
    """Peak torch memory of resizing a 16-frame 4K clip, chunked and in one pass."""
    import torch

    from cps_ray._decode.resize import chunk_frames_for, resize_center_crop

    frames = torch.zeros((16, 3, 2160, 3840), dtype=torch.uint8, device="cuda")
    rows = []
    for label, chunk in (("chunked", chunk_frames_for(2160, 3840, input_size)), ("whole", 16)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        resize_center_crop(frames, input_size, chunk_frames=chunk)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append({"resize": label, "chunk_frames": chunk, "peak_above_frames_mib": peak})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--clips", type=int, default=8, help="decodes per measurement (at least)")
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--json", default="benchmark/out/nvdec.json")
    args = ap.parse_args()

    import torch

    from cps_ray._devices import nvdec_problem, size_nvdec_cache
    from cps_ray._media import find_videos

    videos = find_videos(args.videos)
    problem = nvdec_problem(0) if torch.cuda.is_available() else "no CUDA device on this machine"
    if problem is None:
        size_nvdec_cache(1)  # one process holds every session
    results = []
    for label in RESOLUTIONS:
        paths = [p for p in videos if label in os.path.basename(p)]
        for sessions in args.sessions:
            record = {"resolution": label, "sessions": sessions, "files": len(paths)}
            if problem is not None:
                record.update(skipped=True, reason=problem)
            elif not paths:
                record.update(skipped=True, reason=f"no *{label}* file in {args.videos}")
            else:
                record.update(_decode_rate(paths, sessions, args))
            results.append(record)
    resize = _resize_peaks(args.input_size) if problem is None else []
    for r in results:
        head = f"{r['resolution']:6} x{r['sessions']:<2}"
        if r["skipped"]:
            print(f"{head} skipped: {r['reason']}")
        else:
            print(
                f"{head} {r['clips_per_second']:8.1f} clips/s  NVDEC "
                f"{r['nvdec_utilisation_mean']}%  peak {r['peak_allocated_mib']:.0f} MiB"
            )
    for r in resize:
        print(
            f"4K resize {r['resize']:8} peak {r['peak_above_frames_mib']:.0f} MiB above the frames"
        )
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    write_json(args.json, {"device": device, "results": results, "resize_4k": resize})


if __name__ == "__main__":
    main()
