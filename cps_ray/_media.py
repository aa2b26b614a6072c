"""Media for the demo: sample videos made with the ``ffmpeg`` CLI, and finding
the videos of a folder.

The samples come from FFmpeg's ``lavfi`` sources, so nothing is downloaded:
a panning test pattern, a Mandelbrot zoom and Conway's game of life, each
about 3.5 s of 320x240 H.264 (yuv420p) in MP4.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import MediaToolError, VideoFolderError

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    ".mp4 .mkv .webm .mov .avi .ts .m4v .mpg .mpeg .flv .wmv .3gp".split()
)

SAMPLE_SECONDS = 3.5
SAMPLE_RATE = 25

# name -> lavfi source graph. Every graph ends at 320x240 and has motion.
SAMPLE_SOURCES: dict[str, str] = {
    "testsrc2_pan.mp4": (
        f"testsrc2=size=320x240:rate={SAMPLE_RATE},scroll=horizontal=0.004:vertical=0.002"
    ),
    "mandelbrot_zoom.mp4": f"mandelbrot=size=320x240:rate={SAMPLE_RATE}",
    # Cells are drawn 2x2 so they survive the resize to input_size.
    "game_of_life.mp4": (
        f"life=size=160x120:rate={SAMPLE_RATE}:ratio=0.25:mold=10:seed=7"
        ":life_color=#40e040:death_color=#c03030:mold_color=#202040,"
        "scale=320:240:flags=neighbor"
    ),
}


def _ffmpeg_binary() -> str:
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise MediaToolError(
            "the 'ffmpeg' command was not found on PATH; install FFmpeg "
            "(e.g. 'apt-get install ffmpeg') to make the sample videos"
        )
    return binary


def _ffmpeg_args(binary: str, source: str, out_path: str) -> list[str]:
    return [
        binary,
        "-hide_banner",
        "-loglevel", "error",
        "-nostdin",
        "-y",
        "-f", "lavfi",
        "-i", source,
        "-t", str(SAMPLE_SECONDS),
        "-c:v", "libx264",
        "-preset", "veryfast",
        "-pix_fmt", "yuv420p",
        "-movflags", "+faststart",
        out_path,
    ]  # fmt: skip


# Where the demo keeps its sample videos (relative to the working folder).
DEFAULT_CACHE_DIR = os.path.join(".cache", "demo_videos")


def make_sample_videos(folder: str | os.PathLike) -> list[str]:
    """Make the sample videos in ``folder`` (created if needed); return their paths.

    A sample that already exists is kept as is (the folder is a cache). Each
    file is written under a temporary name and renamed when complete, so an
    interrupted run never leaves a truncated sample behind.

    Raises:
        MediaToolError: ``ffmpeg`` is not installed or could not encode.
    """
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    binary: str | None = None
    for name, source in SAMPLE_SOURCES.items():
        target = out_dir / name
        paths.append(str(target))
        if target.is_file() and target.stat().st_size > 0:
            continue
        binary = binary or _ffmpeg_binary()
        partial = out_dir / f".partial.{name}"
        proc = subprocess.run(
            _ffmpeg_args(binary, source, str(partial)),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            reason = " ".join(proc.stderr.split())[:300] or f"exit status {proc.returncode}"
            raise MediaToolError(f"ffmpeg could not make {target}: {reason}")
        os.replace(partial, target)
    return paths


def find_videos(folder: str | os.PathLike) -> list[str]:
    """All files under ``folder`` (recursive) with a video extension, sorted.

    Extensions are matched case-insensitively against :data:`VIDEO_EXTENSIONS`.

    Raises:
        VideoFolderError: ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VideoFolderError(f"videos folder {str(root)!r} does not exist or is not a directory")
    found = (
        str(path)
        for path in root.rglob("*")
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file()
    )
    return sorted(found)
