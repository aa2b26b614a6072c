"""Object-store inputs: a local spill (what cps_ray does) against ranged reads,
on a local S3 server with added latency.

    python benchmark/benchmark_remote.py VIDEO_DIR [--limit 6] [--latency-ms 0 20 50]
        [--json benchmark/out/remote.json]

Starts ``moto_server`` (the test extra) on 127.0.0.1 behind a TCP proxy that
holds every request from the client for ``--latency-ms`` before passing it on
(the first-byte latency of a store far away), uploads the videos, then per
video and latency times, one FFmpeg thread each:

- ``spill``: ``decode_only`` on the ``s3://`` URI: one streamed read of the
  object into a local file, then the packet plan (cps_ray's route);
- ``ranged``: torchcodec decoding the same frames from pyarrow's S3 file
  object (every read FFmpeg makes is a ranged GET), as reading in place
  would; the reads are counted.

Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

from _machine import describe, machine_info
from _report import video_paths, write_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LatencyProxy:
    """127.0.0.1:port -> upstream; each chunk the client sends (a request)
    waits ``latency_s`` first."""

    def __init__(self, upstream_port: int):
        self.latency_s = 0.0
        self.port = _free_port()
        self.upstream = upstream_port
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, delay: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if delay and self.latency_s:
                    time.sleep(self.latency_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class CountingFile:
    """A file object that counts its reads (each one a ranged GET on S3)."""

    def __init__(self, f):
        self.f, self.reads = f, 0

    def read(self, n=-1):
        self.reads += 1
        return self.f.read(n)

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video_dir")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[0, 20, 50])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--json", default="benchmark/out/remote.json")
    args = ap.parse_args()

    moto_port = _free_port()
    binary = os.path.join(os.path.dirname(sys.executable), "moto_server")
    moto = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(3)
    proxy = LatencyProxy(moto_port)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    import pyarrow.fs as pafs
    from torchcodec.decoders import VideoDecoder

    from cps_ray import DecodeConfig, decode_only

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{moto_port}",
                           allow_bucket_creation=True)  # fmt: skip
    fs.create_dir("bench")
    records = []
    try:
        for path in video_paths(args.video_dir, args.limit):
            key = f"bench/{os.path.basename(path)}"
            with fs.open_output_stream(key) as out, open(path, "rb") as f:
                out.write(f.read())
            uri = f"s3://{key}"
            local = decode_only(DecodeConfig(path, sequence_length=args.sequence_length,
                                             input_size=224, ffmpeg_threads=1))  # fmt: skip
            indices = local.frame_indices.tolist()
            for latency in args.latency_ms:
                proxy.latency_s = latency / 1000

                def spill(uri=uri):
                    return decode_only(DecodeConfig(uri, sequence_length=args.sequence_length,
                                                    input_size=224, ffmpeg_threads=1))  # fmt: skip

                def ranged(key=key, indices=indices):
                    reader, _ = pafs.FileSystem.from_uri(f"s3://{key}")
                    counted = CountingFile(reader.open_input_file(key))
                    decoder = VideoDecoder(counted, seek_mode="exact", num_ffmpeg_threads=1)
                    decoder.get_frames_at(indices)
                    return counted.reads

                times = {"spill": [], "ranged": []}
                reads = 0
                for _ in range(args.repeats):
                    for name, fn in (("spill", spill), ("ranged", ranged)):
                        start = time.perf_counter()
                        out = fn()
                        times[name].append(time.perf_counter() - start)
                        if name == "ranged":
                            reads = out
                record = {
                    "video": os.path.basename(path),
                    "bytes": os.path.getsize(path),
                    "latency_ms": latency,
                    "spill_s": statistics.median(times["spill"]),
                    "ranged_s": statistics.median(times["ranged"]),
                    "ranged_reads": reads,
                }
                records.append(record)
                print(f"  {record['video'][:40]:40} {latency:5.0f} ms  spill "
                      f"{record['spill_s']:6.3f} s  ranged {record['ranged_s']:6.3f} s "
                      f"({reads} reads)", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        moto.terminate()
    print(describe(machine_info()))
    print(f"{'video':40} {'MB':>6} {'latency':>8} {'spill s':>8} {'ranged s':>9} {'reads':>6}")
    for r in records:
        print(f"{r['video'][:40]:40} {r['bytes'] / 1e6:6.2f} {r['latency_ms']:6.0f}ms "
              f"{r['spill_s']:8.3f} {r['ranged_s']:9.3f} {r['ranged_reads']:6d}")  # fmt: skip
    write_json(args.json, {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                           "machine": machine_info(), "config": vars(args),
                           "videos": records})  # fmt: skip


if __name__ == "__main__":
    main()
