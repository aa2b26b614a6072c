"""Test media, made with the ffmpeg CLI (argument lists, never a shell).

Each entry is small (about a second, under 200 px) so the whole set builds in
a few seconds on two cores. Everything under ``broken/`` (and
``broken/missing.mp4``) must fail to decode; everything else must decode.
Files that need no ffmpeg (cuts, copies, links, FIFOs) are remade from the
others, so a premade folder carried to a machine without ffmpeg still has them.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import tempfile
import zlib
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
    # Timestamps start at 5 s.
    "offset_start.mp4": lavfi() + X264 + ["-output_ts_offset", "5"],
    # Still images: FFmpeg reads them as one-frame videos.
    "image.png": lavfi(seconds=0.04) + ["-frames:v", "1"],
    "image.jpg": lavfi(seconds=0.04) + ["-frames:v", "1", "-q:v", "3"],
    # GOP of 250 frames (10 s) cut below: see broken/no_keyframe_in_probe.ts.
    "gop250.ts": lavfi(seconds=12) + X264 + ["-crf", "40", "-g", "250", "-f", "mpegts"],
}

# The codecs, bit depths, chromas and odd sizes every CPU decode test covers.
CODEC_FILES = [
    "h264.mp4", "hevc.mkv", "vp9.webm", "av1.mkv", "mpeg2.mpg", "mpeg4.avi",
    "h264_10bit.mp4", "hevc_12bit.mkv", "h264_444.mp4", "odd_97x71.webm",
    "odd444_97x71.mp4", "portrait_64x112.mp4", "nonzero_start.ts",
]  # fmt: skip

# NVDEC-sized media for the `gpu` tests (tests/test_gpu.py): NVDEC refuses
# frames below a codec's minimum (HEVC 144x144, VP9 and AV1 128x128), which
# the small files above are. 320x256, one second; made only where asked.
GPU_SIZE = "320x256"
GPU_MEDIA = {
    "h264.mp4": lavfi(GPU_SIZE, 1.0) + X264 + ["-g", "12"],
    "hevc.mkv": lavfi(GPU_SIZE, 1.0) + X265 + ["-pix_fmt", "yuv420p", "-g", "12"],
    "vp9.webm": lavfi(GPU_SIZE, 1.0)
    + ["-c:v", "libvpx-vp9", "-b:v", "300k", "-deadline", "realtime", "-g", "12"],
    "av1.mkv": lavfi(GPU_SIZE, 1.0)
    + ["-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1", "-g", "12"],
    "h264_10bit.mp4": lavfi(GPU_SIZE, 1.0) + ["-c:v", "libx264", "-pix_fmt", "yuv420p10le"],
}


def nvdec_decodes(name: str, capability: tuple[int, int]) -> bool:
    """Whether the NVDEC of a GPU of compute ``capability`` decodes the
    ``GPU_MEDIA`` file ``name``, per NVIDIA's NVDEC application note (Video
    Codec SDK 13.0, "NVDEC Hardware Capabilities"): H.264 8-bit, HEVC and VP9
    from Volta on; AV1 on Ampere GA10x (8.6, 8.7), Ada (8.9) and Blackwell
    (10.x, 12.x) but not GA100 (8.0) or Hopper (9.0); H.264 High10 on
    Blackwell only."""
    if name == "av1.mkv":
        return capability in ((8, 6), (8, 7), (8, 9)) or capability[0] >= 10
    if name == "h264_10bit.mp4":
        return capability[0] >= 10
    return capability[0] >= 7


def make_gpu_media(folder: Path) -> dict[str, Path]:
    """Build ``GPU_MEDIA`` in ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, args in GPU_MEDIA.items():
        out = folder / name
        if not out.exists():
            _ffmpeg(args, out)
        paths[name] = out
    return paths


# Names a shell, FFmpeg's protocol parser ("pipe:0" is standard input) or its
# image-sequence patterns ("%d") would act on; each is a copy of short5.mp4
# or image.png under "odd names/".
ODD_NAMES = {
    "spaces $(touch pwned) 'q' ;|&`x` *.mp4": "short5.mp4",
    "ünïcødé 视频 🎞.mp4": "short5.mp4",
    "new\nline.mp4": "short5.mp4",
    "pipe:0.mp4": "short5.mp4",
    "concat:short5.mp4|short5.mp4": "short5.mp4",
    "frame%d.png": "image.png",
}

# Fractions of a file kept by the truncated_* media.
CUTS = (10, 50, 90)


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

    # Truncations that still decode (faststart puts the MP4 index first;
    # Matroska/WebM need no index at the end), except the first 10% of
    # hevc.mkv, which ends inside its first keyframe: see broken/.
    for source, name in (
        ("faststart.mp4", "truncated_faststart_{}.mp4"),
        ("hevc.mkv", "truncated_{}.mkv"),
        ("vp8.webm", "truncated_{}.webm"),
    ):
        whole = paths[source].read_bytes()
        for percent in CUTS:
            out = folder / name.format(percent)
            if out.name == "truncated_10.mkv":
                out = folder / "broken" / out.name
                out.parent.mkdir(exist_ok=True)
            out.write_bytes(whole[: len(whole) * percent // 100])
            paths[str(out.relative_to(folder))] = out

    # Still images under a video's name: FFmpeg probes the content.
    for image, name in (("image.png", "image_png.mp4"), ("image.jpg", "image_jpg.mp4")):
        shutil.copyfile(paths[image], folder / name)
        paths[name] = folder / name

    odd = folder / "odd names"
    odd.mkdir(exist_ok=True)
    for name, source in ODD_NAMES.items():
        shutil.copyfile(paths[source], odd / name)
        paths["odd names/" + name] = odd / name
    if _special(folder / "symlink.mp4", lambda p: p.symlink_to("h264.mp4")):
        paths["symlink.mp4"] = folder / "symlink.mp4"

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
    subtitles = broken / "subtitles_only.mkv"
    if not subtitles.exists():
        with tempfile.TemporaryDirectory() as tmp:
            srt = Path(tmp) / "cue.srt"
            srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
            _ffmpeg(["-i", str(srt), "-c:s", "copy"], subtitles)
    _make_broken_bytes(broken, paths)
    # Not regular files, and links: none may be opened (a FIFO would block).
    _special(broken / "fifo.mp4", os.mkfifo)
    _special(broken / "dangling_link.mp4", lambda p: p.symlink_to("nowhere.mp4"))
    _special(broken / "dev_zero.mp4", lambda p: p.symlink_to("/dev/zero"))
    for p in broken.iterdir():
        paths["broken/" + p.name] = p
    paths["broken/missing.mp4"] = broken / "missing.mp4"
    return paths


def _make_broken_bytes(broken: Path, paths: dict[str, Path]) -> None:
    """Damaged and hostile files made from the good ones, without ffmpeg."""
    # The index (moov) is at the end of h264.mp4: every cut loses it.
    whole = paths["h264.mp4"].read_bytes()
    for percent in CUTS:
        (broken / f"truncated_moov_at_end_{percent}.mp4").write_bytes(
            whole[: len(whole) * percent // 100]
        )
    # A real ftyp box, then noise.
    noise = random.Random(7).randbytes(20_000)
    (broken / "ftyp_then_random.mp4").write_bytes(whole[:32] + noise)
    # Headers that declare absurd frames: 16000x16000 fits FFmpeg's limit
    # (FFmpeg would allocate it while probing), 100000x100000 does not.
    frame = b"FRAME\n" + bytes(1000)
    for side in (16000, 100000):
        header = f"YUV4MPEG2 W{side} H{side} F25:1 Ip A1:1 C420jpeg\n".encode()
        (broken / f"huge_{side}x{side}.y4m").write_bytes(header + frame)
    png = bytearray(paths["image.png"].read_bytes())
    png[16:24] = struct.pack(">II", 16000, 16000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    (broken / "huge_16000x16000_ihdr.png").write_bytes(bytes(png))
    # MPEG-TS cut before the first keyframe of a 10 s GOP: the first frame
    # size FFmpeg can learn is past its probing window (the ffmpeg CLI
    # decodes the rest; torchcodec cannot open a stream of unknown size).
    ts = paths["gop250.ts"].read_bytes()
    (broken / "no_keyframe_in_probe.ts").write_bytes(ts[188 * 60 :])


def _special(path: Path, make) -> bool:
    """Make a FIFO or a link once; False where the file system has none."""
    if not os.path.lexists(path):
        try:
            make(path)
        except (OSError, NotImplementedError):
            return False
    return True


def make_long_video(folder: Path) -> dict[str, Path]:
    """Ten minutes at 25 fps (15000 frames, 96x64), about 2 s of ffmpeg.

    ``long_10min.mp4`` (a keyframe every second) and
    ``long_10min_headless.ts``, the same stream in MPEG-TS with its first
    packets cut, which only the frame-by-frame route decodes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mp4 = folder / "long_10min.mp4"
    if not mp4.exists():
        args = lavfi(seconds=600) + X264 + ["-crf", "40", "-g", "25"]
        _ffmpeg(args, mp4)
    ts = folder / "long_10min.ts"
    if not ts.exists():
        _ffmpeg(["-i", str(mp4), "-c", "copy", "-f", "mpegts"], ts)
    headless = folder / "long_10min_headless.ts"
    headless.write_bytes(ts.read_bytes()[188 * 60 :])
    return {"long_10min.mp4": mp4, "long_10min_headless.ts": headless}
