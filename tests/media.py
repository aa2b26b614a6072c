"""Test media, made with the ffmpeg CLI (argument lists, never a shell).

Each entry is small (about a second, under 200 px) so the whole set builds in
a few seconds on two cores.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

FPS = 25


def lavfi(size: str = "96x64", seconds: float = 2.0, source: str = "testsrc2") -> list[str]:
    return ["-f", "lavfi", "-i", f"{source}=size={size}:rate={FPS}:duration={seconds}"]


X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
X265 = ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"]

# name -> ffmpeg arguments between the global options and the output path.
GOOD = {
    "h264.mp4": lavfi("160x120") + X264 + ["-g", "12"],
    "hevc.mkv": lavfi() + X265 + ["-pix_fmt", "yuv420p"],
    "vp8.webm": lavfi() + ["-c:v", "libvpx", "-b:v", "200k"],
    "vp9.webm": lavfi() + ["-c:v", "libvpx-vp9", "-b:v", "200k", "-deadline", "realtime"],
    "av1.mkv": lavfi() + ["-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1"],
    "mpeg2.mpg": lavfi() + ["-c:v", "mpeg2video"],
    "mpeg4.avi": lavfi() + ["-c:v", "mpeg4"],
    # testsrc2 rounds its size to even numbers; scale makes the odd size.
    "odd_97x71.webm": lavfi()
    + ["-vf", "scale=97:71", "-c:v", "libvpx-vp9", "-deadline", "realtime"],
    "odd444_97x71.mp4": lavfi() + ["-vf", "scale=97:71", "-c:v", "libx264", "-pix_fmt", "yuv444p"],
    "portrait_64x112.mp4": lavfi("64x112") + X264,
    "gop1.mp4": lavfi() + X264 + ["-g", "1"],
    "long_gop.mp4": lavfi(seconds=4) + X264 + ["-g", "1000", "-bf", "3"],
    "short5.mp4": lavfi(seconds=0.2) + X264,
    "one_frame.mp4": lavfi() + X264 + ["-frames:v", "1"],
    "h264_10bit.mp4": lavfi() + ["-c:v", "libx264", "-pix_fmt", "yuv420p10le"],
    "hevc_12bit.mkv": lavfi() + X265 + ["-pix_fmt", "yuv420p12le"],
    "h264_444.mp4": lavfi() + ["-c:v", "libx264", "-pix_fmt", "yuv444p"],
    "nonzero_start.ts": lavfi() + X264 + ["-f", "mpegts"],
    "gop10.ts": lavfi("160x120") + X264 + ["-g", "10", "-f", "mpegts"],
    # First 20 frames at 25 fps, the rest at 5 fps.
    "vfr.mp4": lavfi()
    + X264
    + ["-vf", "setpts='if(lt(N,20),N/25,0.8+(N-20)/5)/TB'", "-fps_mode", "vfr"],
    "faststart.mp4": lavfi() + X264 + ["-movflags", "+faststart"],
}


def _ffmpeg(args: list[str], out: Path) -> None:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", *args, str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def make_media(folder: Path) -> dict[str, Path]:
    """Build every test file in ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, args in GOOD.items():
        out = folder / name
        if not out.exists():
            _ffmpeg(args, out)
        paths[name] = out

    # Rotation metadata: display matrix of 90 degrees on an H.264 stream.
    rot = folder / "rot90.mp4"
    if not rot.exists():
        _ffmpeg(["-i", str(paths["h264.mp4"]), "-c", "copy", "-metadata:s:v:0", "rotate=90"], rot)
    paths["rot90.mp4"] = rot

    # Header promises 50 frames, the data holds about half: faststart puts
    # the index first, then the media data is cut.
    data = paths["faststart.mp4"].read_bytes()
    lying = folder / "lying_count.mp4"
    lying.write_bytes(data[: int(len(data) * 0.55)])
    paths["lying_count.mp4"] = lying

    # An MPEG-TS stream cut mid-GOP: the first frames reference a keyframe
    # that is gone (whole 188-byte packets dropped from the front).
    ts = paths["gop10.ts"].read_bytes()
    cut = folder / "headless_gop.ts"
    cut.write_bytes(ts[188 * 60 :])
    paths["headless_gop.ts"] = cut

    broken = folder / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "empty.mp4").write_bytes(b"")
    (broken / "random.mp4").write_bytes(os.urandom(1) * 0 + bytes(range(256)) * 40)
    (broken / "text.mp4").write_text("this is not a video\n" * 20)
    (broken / "header_only.mp4").write_bytes(data[:1200])
    (broken / "truncated.mp4").write_bytes(paths["h264.mp4"].read_bytes()[:3000])
    (broken / "folder.mp4").mkdir(exist_ok=True)
    audio = broken / "audio_only.m4a"
    if not audio.exists():
        _ffmpeg(["-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac"], audio)
    for p in broken.iterdir():
        paths["broken/" + p.name] = p
    paths["broken/missing.mp4"] = broken / "missing.mp4"
    return paths
