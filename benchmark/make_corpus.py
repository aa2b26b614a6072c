"""Make a benchmark corpus of synthetic videos with the ffmpeg CLI (nothing downloaded).

    python benchmark/make_corpus.py OUT_DIR [--small | --long] [--force]

The videos come from FFmpeg's lavfi sources, all with motion: a box moving
over a slowly changing background (local motion, like most real footage), a
panning test pattern (global motion), Conway's game of life (scattered
motion), a Mandelbrot zoom and moving gradients (smooth motion). They span
short and long clips, 360p to 1080p, short (12) and long (250) GOPs, and
H.264, HEVC, VP9 and AV1 in MP4, WebM and Matroska.

``--long`` makes minutes-long videos with the encoders' default groups of
pictures (x264/x265: a keyframe at most every 250 frames and at scene cuts,
B-frames as references) and a scene cut every 15 s, cycling through the
contents above: the videos where ``uniform_strategy="keyframe"`` pays.

The default corpus (12 videos, 202 s of video in all) is made in about
two minutes on 2 cores; ``--small`` (6 videos, 360p-720p, a few seconds each)
in about 20 seconds. Names start with a number so that the first N of the
sorted list (what ``--limit N`` takes) mixes codecs. A file that exists is
kept (the folder is a cache); ``--force`` remakes it. A ``corpus.json`` next
to the videos lists what each one is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RATE = 25

RESOLUTIONS = {"360p": (640, 360), "480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


@dataclass(frozen=True)
class Spec:
    """One corpus video."""

    index: int
    codec: str  # h264, hevc, vp9, av1
    resolution: str  # a key of RESOLUTIONS
    gop: int  # frames between keyframes (at most); 0: the encoder's default
    seconds: float
    content: str  # a key of the source graphs below

    @property
    def name(self) -> str:
        ext = {"h264": "mp4", "hevc": "mp4", "vp9": "webm", "av1": "mkv"}[self.codec]
        gop = f"gop{self.gop}" if self.gop else "gopdefault"
        parts = (f"{self.index:02d}", self.codec, self.resolution, gop)
        return "_".join((*parts, f"{self.seconds:g}s", self.content)) + f".{ext}"


def source_graph(content: str, width: int, height: int) -> str:
    """A lavfi graph with motion that ends at ``width x height``, ``RATE`` fps."""
    size = f"{width}x{height}"
    if content == "bounce":
        return (
            f"gradients=size={size}:rate={RATE}:speed=0.005[bg];"
            f"testsrc=size={width // 4}x{height // 4}:rate={RATE}[fg];"
            "[bg][fg]overlay=x='(W-w)*(0.5+0.5*sin(t))':y='(H-h)*(0.5+0.5*cos(0.7*t))'"
        )
    if content == "pan":
        return f"testsrc2=size={size}:rate={RATE},scroll=horizontal=0.004:vertical=0.002"
    if content == "life":
        # Cells drawn 4x4 so they survive the resize to the model's input size.
        return (
            f"life=size={width // 4}x{height // 4}:rate={RATE}:ratio=0.25:mold=10:seed=7"
            ":life_color=#40e040:death_color=#c03030:mold_color=#202040,"
            f"scale={width}:{height}:flags=neighbor"
        )
    if content == "mandelbrot":
        # Rendered small and scaled up: the fractal is slow at full size.
        return f"mandelbrot=size=320x180:rate={RATE},scale={width}:{height}"
    if content == "gradients":
        return f"gradients=size={size}:rate={RATE}:speed=0.03"
    raise ValueError(f"unknown content {content!r}")


DEFAULT_CORPUS = [
    Spec(1, "h264", "360p", 12, 4, "bounce"),
    Spec(2, "hevc", "720p", 250, 10, "life"),
    Spec(3, "vp9", "360p", 250, 30, "pan"),
    Spec(4, "av1", "720p", 12, 4, "gradients"),
    Spec(5, "h264", "1080p", 250, 10, "pan"),
    Spec(6, "hevc", "1080p", 12, 4, "bounce"),
    Spec(7, "vp9", "720p", 12, 10, "life"),
    Spec(8, "av1", "360p", 250, 30, "mandelbrot"),
    Spec(9, "h264", "480p", 250, 60, "bounce"),
    Spec(10, "hevc", "360p", 250, 30, "gradients"),
    Spec(11, "vp9", "1080p", 250, 6, "mandelbrot"),
    Spec(12, "av1", "1080p", 12, 4, "life"),
]

SMALL_CORPUS = [
    Spec(1, "h264", "360p", 12, 4, "bounce"),
    Spec(2, "hevc", "480p", 250, 8, "life"),
    Spec(3, "vp9", "360p", 250, 6, "pan"),
    Spec(4, "av1", "720p", 12, 3, "gradients"),
    Spec(5, "h264", "720p", 250, 8, "bounce"),
    Spec(6, "vp9", "480p", 12, 5, "mandelbrot"),
]


# Minutes long, encoder-default GOPs, a scene cut every CUT_SECONDS.
LONG_CORPUS = [
    Spec(1, "h264", "480p", 0, 180, "cuts"),
    Spec(2, "hevc", "480p", 0, 180, "cuts"),
    Spec(3, "h264", "720p", 0, 120, "cuts"),
    Spec(4, "vp9", "480p", 0, 120, "cuts"),
]
CUT_SECONDS = 15
CUT_CONTENTS = ("bounce", "pan", "life", "mandelbrot", "gradients")


def ffmpeg_encoders(binary: str) -> str:
    proc = subprocess.run(
        [binary, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    )
    return proc.stdout


def codec_args(codec: str, gop: int, encoders: str) -> list[str]:
    """Encoder arguments: fast presets, since the corpus is for decoding.
    ``gop`` 0: the encoder's own keyframe placement and B-frame structure."""
    if gop == 0:
        return {
            "h264": ["-c:v", "libx264", "-preset", "veryfast"],
            "hevc": ["-c:v", "libx265", "-preset", "veryfast", "-x265-params", "log-level=error",
                     "-tag:v", "hvc1"],
            "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt",
                    "1", "-crf", "34", "-b:v", "0"],
        }[codec]  # fmt: skip
    if codec == "h264":
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", str(gop)]
    if codec == "hevc":
        return [
            "-c:v", "libx265", "-preset", "ultrafast", "-crf", "28", "-g", str(gop),
            "-x265-params", "log-level=error", "-tag:v", "hvc1",
        ]  # fmt: skip
    if codec == "vp9":
        return [
            "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1",
            "-crf", "34", "-b:v", "0", "-g", str(gop),
        ]  # fmt: skip
    if codec == "av1":
        if " libsvtav1 " in encoders:
            return ["-c:v", "libsvtav1", "-preset", "12", "-crf", "35", "-g", str(gop)]
        if " libaom-av1 " in encoders:
            return [
                "-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1", "-usage", "realtime",
                "-crf", "35", "-g", str(gop),
            ]  # fmt: skip
        raise SystemExit("no AV1 encoder in this ffmpeg: it needs libsvtav1 or libaom-av1")
    raise ValueError(f"unknown codec {codec!r}")


def ffmpeg_command(binary: str, spec: Spec, encoders: str, out_path: str) -> list[str]:
    width, height = RESOLUTIONS[spec.resolution]
    if spec.content == "cuts":
        cuts = int(-(-spec.seconds // CUT_SECONDS))
        inputs, graph, labels = [], "", ""
        for i in range(cuts):
            content = CUT_CONTENTS[i % len(CUT_CONTENTS)]
            inputs += ["-t", str(CUT_SECONDS), "-f", "lavfi", "-i",
                       source_graph(content, width, height)]  # fmt: skip
            graph += f"[{i}:v]setsar=1,format=yuv420p[v{i}];"
            labels += f"[v{i}]"
        source = [*inputs, "-filter_complex", f"{graph}{labels}concat=n={cuts}:v=1:a=0"]
    else:
        source = ["-f", "lavfi", "-i", source_graph(spec.content, width, height)]
    return [
        binary, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        *source,
        "-t", f"{spec.seconds:g}",
        *codec_args(spec.codec, spec.gop, encoders),
        "-pix_fmt", "yuv420p",
        out_path,
    ]  # fmt: skip


def make_corpus(out_dir: Path, specs: list[Spec], *, force: bool = False) -> list[dict]:
    """Encode every spec into ``out_dir``; return one record per video."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise SystemExit(
            "the 'ffmpeg' command was not found on PATH; install FFmpeg "
            "(e.g. 'apt-get install ffmpeg') to make the corpus"
        )
    encoders = ffmpeg_encoders(binary)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SVT_LOG="1")  # SVT-AV1: errors only, no banner
    records = []
    for spec in specs:
        target = out_dir / spec.name
        seconds = 0.0
        if force or not (target.is_file() and target.stat().st_size > 0):
            partial = out_dir / f".partial.{spec.name}"
            cmd = ffmpeg_command(binary, spec, encoders, str(partial))
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                partial.unlink(missing_ok=True)
                reason = " ".join(proc.stderr.split())[:400] or f"exit status {proc.returncode}"
                raise SystemExit(f"ffmpeg could not make {target}: {reason}")
            os.replace(partial, target)
        width, height = RESOLUTIONS[spec.resolution]
        record = dict(asdict(spec), name=spec.name, width=width, height=height)
        record.update(frames=int(round(spec.seconds * RATE)), bytes=target.stat().st_size)
        record["encode_seconds"] = round(seconds, 2)
        records.append(record)
        print(
            f"{spec.name:44} {record['bytes'] / 1e6:7.2f} MB "
            f"{'(cached)' if seconds == 0 else f'{seconds:6.1f} s'}",
            flush=True,
        )
    with open(out_dir / "corpus.json", "w") as f:
        json.dump({"rate": RATE, "videos": records}, f, indent=2)
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="folder for the videos (created; existing files are kept)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="6 short 360p-720p videos, quick")
    size.add_argument(
        "--long", action="store_true", help="4 videos, 2-3 minutes, default GOPs, scene cuts"
    )
    ap.add_argument("--force", action="store_true", help="remake videos that already exist")
    args = ap.parse_args(argv)
    specs = SMALL_CORPUS if args.small else LONG_CORPUS if args.long else DEFAULT_CORPUS
    start = time.perf_counter()
    records = make_corpus(Path(args.out_dir), specs, force=args.force)
    total = sum(r["bytes"] for r in records) / 1e6
    print(
        f"{len(records)} videos, {total:.1f} MB in {args.out_dir} "
        f"({time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
