"""NVDEC decode throughput (``decode_only`` with ``decode_backend="gpu"``) at
360p, 720p and 1080p, with the decoder utilisation nvidia-smi reports.

    python benchmark/benchmark_nvdec.py VIDEO_DIR [--json PATH]

VIDEO_DIR holds files named ``*360p*``, ``*720p*``, ``*1080p*`` (for example
from ``benchmark/make_corpus.py``). Without a CUDA device every row is
reported as skipped. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time

from _report import write_json


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--json", default="benchmark/out/nvdec.json")
    args = ap.parse_args()

    import torch

    from cps_ray import DecodeConfig, decode_only
    from cps_ray.media import find_videos

    videos = find_videos(args.videos)
    results = []
    for label in ("360p", "720p", "1080p"):
        paths = [p for p in videos if label in os.path.basename(p)]
        record = {"resolution": label, "videos": len(paths)}
        if not torch.cuda.is_available():
            record.update(skipped=True, reason="no CUDA device on this machine")
        elif not paths:
            record.update(skipped=True, reason=f"no *{label}* file in {args.videos}")
        else:

            def run(paths=paths):
                for p in paths:
                    decode_only(
                        DecodeConfig(
                            p,
                            sequence_length=args.sequence_length,
                            input_size=args.input_size,
                            decode_backend="gpu",
                        )
                    )
                torch.cuda.synchronize()

            run()
            stop, samples = threading.Event(), []
            sampler = threading.Thread(target=_sample_utilisation, args=(stop, samples))
            sampler.start()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            stop.set()
            sampler.join()
            seconds = statistics.median(times)
            record.update(
                skipped=False,
                seconds=seconds,
                clips_per_second=len(paths) / seconds,
                nvdec_utilisation_mean=statistics.mean(s[0] for s in samples) if samples else None,
                gpu_utilisation_mean=statistics.mean(s[1] for s in samples) if samples else None,
            )
        results.append(record)
    for r in results:
        if r["skipped"]:
            print(f"{r['resolution']:6} skipped: {r['reason']}")
        else:
            print(
                f"{r['resolution']:6} {r['clips_per_second']:8.1f} clips/s  NVDEC "
                f"{r['nvdec_utilisation_mean']}%"
            )
    write_json(args.json, {"results": results})


if __name__ == "__main__":
    main()
