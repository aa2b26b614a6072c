"""Bad and hostile inputs (issue #7): every one either decodes to the right
frames or fails with a one-line ``DecodeError`` naming the file and the
reason. None may hang or crash: real files, the real decoder, no mocks."""

import faulthandler
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from media import ODD_NAMES, make_long_video

from cps_ray import DecodeConfig, DecodeError, decode_only

# Every file under broken/ and the reason its error must give.
BROKEN = {
    "broken/missing.mp4": "file not found",
    "broken/dangling_link.mp4": "file not found: broken symbolic link to 'nowhere.mp4'",
    "broken/folder.mp4": "is a directory",
    "broken/fifo.mp4": "is a named pipe (FIFO), not a regular file",
    "broken/dev_zero.mp4": "is a character device, not a regular file",
    "broken/empty.mp4": "empty file (0 bytes)",
    "broken/text.mp4": "not a video",
    "broken/random.mp4": "not a video",
    "broken/ftyp_then_random.mp4": "not a video, or too damaged to open (FFmpeg: Invalid data",
    "broken/header_only.mp4": "too damaged to decode",
    "broken/truncated.mp4": "MP4 cut short: its index (moov box) is missing",
    "broken/truncated_moov_at_end_10.mp4": "MP4 cut short: its index (moov box) is missing",
    "broken/truncated_moov_at_end_50.mp4": "MP4 cut short: its index (moov box) is missing",
    "broken/truncated_moov_at_end_90.mp4": "MP4 cut short: its index (moov box) is missing",
    "broken/truncated_10.mkv": "too damaged to open",
    "broken/audio_only.m4a": "no video stream in the file",
    "broken/subtitles_only.mkv": "no video stream in the file",
    "broken/no_keyframe_in_probe.ts": "no video stream of known frame size",
    "broken/huge_16000x16000.y4m": "frame size 16000x16000 = 256000000 pixels exceeds max_pixels",
    "broken/huge_100000x100000.y4m": "frame size 100000x100000 = 10000000000 pixels exceeds",
    "broken/huge_16000x16000_ihdr.png": "frame size 16000x16000 = 256000000 pixels exceeds",
}
DEVICES = {"/dev/zero": "is a character device", "/dev/null": "is a character device"}

# Good media that is odd: name -> the frames the ffmpeg CLI decodes from it.
TRUNCATED_GOOD = [
    "truncated_faststart_10.mp4",
    "truncated_faststart_50.mp4",
    "truncated_faststart_90.mp4",
    "truncated_50.mkv",
    "truncated_90.mkv",
    "truncated_10.webm",
    "truncated_50.webm",
    "truncated_90.webm",
]
IMAGES = ["image.png", "image.jpg", "image_png.mp4", "image_jpg.mp4"]


@pytest.fixture(autouse=True)
def no_hang():
    """A decode that hangs ends the test run with every thread's traceback."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def long_media(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg CLI makes the ten-minute video")
    return make_long_video(tmp_path_factory.mktemp("long"))


def _cli_frames(path, shape, *, seek: float | None = None, count: int | None = None):
    """Frames as the ffmpeg CLI decodes them, uint8 [N, 3, H, W]; ``shape``
    is (H, W), as our decoder found it (a wrong one fails the reshape)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    cmd += [] if seek is None else ["-ss", f"{seek:.3f}"]
    cmd += ["-i", str(path), "-fps_mode", "passthrough"]
    cmd += [] if count is None else ["-frames:v", str(count)]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, *shape, 3)
    return torch.from_numpy(frames.copy()).permute(0, 3, 1, 2)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same frames up to colour-conversion rounding (PyAV's FFmpeg and the
    CLI's differ in version and in swscale's flags)."""
    return a.shape == b.shape and (a.int() - b.int()).abs().float().mean() < 2.0


def _expect_error(path: str, reason: str, **config) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_only(DecodeConfig(path, sequence_length=4, **config))
    msg = str(info.value)
    assert msg == f"{path}: {info.value.reason}" and info.value.path == path
    assert "\n" not in info.value.reason and ".cpp" not in msg
    assert "should never happen" not in msg
    assert reason in info.value.reason, msg
    return info.value


class _FifoGuard:
    """Opens the write end of a FIFO after ``seconds`` if a reader is blocked
    on it, so a regression fails the test instead of hanging it."""

    def __init__(self, path: str, seconds: float = 20.0):
        self.path, self.needed = path, False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)

    def _run(self, seconds: float) -> None:
        if self._done.wait(seconds):
            return
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            self.needed = True
        except OSError:  # ENXIO: no reader is waiting
            pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def test_every_broken_file_has_a_listed_reason(media):
    present = {name for name in media if name.startswith("broken/")}
    assert present <= set(BROKEN), present - set(BROKEN)
    # FIFOs and links are skipped where the file system has none.
    assert set(BROKEN) - present <= {
        "broken/fifo.mp4",
        "broken/dangling_link.mp4",
        "broken/dev_zero.mp4",
    }


@pytest.mark.parametrize("input_size", [32, None])
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_input_is_a_one_line_error_naming_file_and_reason(media, name, input_size):
    if name not in media:
        pytest.skip(f"{name} cannot be made on this file system")
    path = str(media[name])
    with _FifoGuard(path) as guard:
        _expect_error(path, BROKEN[name], input_size=input_size)
    assert not guard.needed, "decoding opened the FIFO and blocked on it"


@pytest.mark.parametrize("path", sorted(DEVICES))
def test_device_paths_are_refused_unopened(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    _expect_error(path, DEVICES[path], input_size=32)


def test_absurd_frame_size_without_a_cap_is_still_explained(media):
    path = str(media["broken/huge_100000x100000.y4m"])
    # FFmpeg itself refuses it, with "Device or resource busy".
    _expect_error(
        path, "frame size 100000x100000 is larger than FFmpeg can decode", max_pixels=None
    )


@pytest.mark.parametrize("input_size", [32, None])
def test_max_pixels_cap_on_a_normal_video(media, input_size):
    """h264.mp4 is 160x120 = 19200 pixels; rot90.mp4 the same, displayed 120x160."""
    for name in ("h264.mp4", "rot90.mp4"):
        path = str(media[name])
        _expect_error(
            path,
            "= 19200 pixels exceeds max_pixels (19199)",
            input_size=input_size,
            max_pixels=19199,
        )
        out = decode_only(
            DecodeConfig(path, sequence_length=4, input_size=input_size, max_pixels=19200)
        )
        assert out.num_frames == 50


@pytest.mark.parametrize(
    "name",
    TRUNCATED_GOOD + IMAGES + ["offset_start.mp4", "one_frame.mp4", "vfr.mp4", "nonzero_start.ts"],
)
def test_odd_but_good_media_gives_the_frames_ffmpeg_gives(media, name):
    path = media[name]
    out = decode_only(DecodeConfig(str(path), sequence_length=4))
    every = _cli_frames(path, out.frames.shape[-2:])
    n = len(every)
    assert out.num_frames == n >= 1
    assert out.frame_indices.tolist() == np.round(np.linspace(0, n - 1, 4)).tolist()
    assert _close(out.frames, every[out.frame_indices])
    if n == 1:  # a still image or a one-frame video: T copies of it
        assert all(torch.equal(out.frames[0], f) for f in out.frames)
    resized = decode_only(DecodeConfig(str(path), sequence_length=4, input_size=16))
    assert resized.frames.shape == (4, 3, 16, 16)
    assert torch.equal(resized.frame_indices, out.frame_indices)


def test_truncations_keep_what_survives(media):
    counts = [
        decode_only(DecodeConfig(str(media[n]), sequence_length=2)).num_frames
        for n in TRUNCATED_GOOD[:3]
    ]
    assert 0 < counts[0] < counts[1] < counts[2] < 50


def test_nonzero_start_mp4_keeps_its_timestamps(media):
    out = decode_only(DecodeConfig(str(media["offset_start.mp4"]), sequence_length=3))
    plain = decode_only(DecodeConfig(str(media["faststart.mp4"]), sequence_length=3))
    assert out.timestamps.tolist() == pytest.approx([5.0, 5.96, 6.96])
    assert out.frame_indices.tolist() == plain.frame_indices.tolist() == [0, 24, 49]
    assert _close(out.frames, plain.frames)


@pytest.mark.parametrize("name", sorted(ODD_NAMES))
def test_odd_file_names_decode_like_their_source(media, name, monkeypatch):
    source = decode_only(DecodeConfig(str(media[ODD_NAMES[name]]), sequence_length=4))
    path = media["odd names/" + name]
    # Relative too: "pipe:0.mp4" must not make FFmpeg read standard input,
    # nor "concat:a|b" concatenate two other files.
    monkeypatch.chdir(path.parent)
    for given in (str(path), name):
        out = decode_only(DecodeConfig(given, sequence_length=4))
        assert out.num_frames == source.num_frames
        assert torch.equal(out.frames, source.frames)
    assert not (path.parent / "pwned").exists()


def test_symlink_to_a_video_decodes(media):
    link = decode_only(DecodeConfig(str(media["symlink.mp4"]), sequence_length=4))
    real = decode_only(DecodeConfig(str(media["h264.mp4"]), sequence_length=4))
    assert torch.equal(link.frames, real.frames)


_AS_NOBODY = r"""
import json, os, sys
from cps_ray import DecodeConfig, DecodeError, decode_only

readable, locked = sys.argv[1:3]
decode_only(DecodeConfig(readable, sequence_length=2))  # load every module while root
try:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
except OSError as e:
    print(json.dumps({"skip": f"cannot become uid 65534: {e}"}))
    sys.exit(0)
result = {}
for path in (readable, locked):
    try:
        result[path] = list(decode_only(DecodeConfig(path, sequence_length=2)).frames.shape)
    except DecodeError as e:
        result[path] = str(e)
print(json.dumps(result))
"""


def test_unreadable_file(media):
    """Root reads a mode-000 file, so the decode runs in a child as uid 65534."""
    folder = Path(tempfile.mkdtemp(prefix="cps_ray_perm_"))
    try:
        folder.chmod(0o755)
        readable, locked = folder / "readable.mp4", folder / "locked $x.mp4"
        for p in (readable, locked):
            shutil.copyfile(media["short5.mp4"], p)
        readable.chmod(0o644)
        locked.chmod(0)
        if os.geteuid() != 0:
            _expect_error(str(locked), "permission denied")
            return
        child = subprocess.run(
            [sys.executable, "-c", _AS_NOBODY, str(readable), str(locked)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr[-2000:]
        result = json.loads(child.stdout.strip().splitlines()[-1])
        if "skip" in result:
            pytest.skip(result["skip"])
        assert result[str(readable)] == [2, 3, 64, 96], "uid 65534 cannot read this folder"
        assert result[str(locked)] == f"{locked}: permission denied"
    finally:
        shutil.rmtree(folder)


def test_long_video_first_and_last_frames(long_media):
    """Ten minutes, 15000 frames: planned from the packets, decoded from the
    keyframes before them."""
    path = long_media["long_10min.mp4"]
    out = decode_only(DecodeConfig(str(path), sequence_length=4))
    assert out.num_frames == 15000 and out.route == "packets"
    assert out.frame_indices.tolist() == [0, 5000, 9999, 14999]
    assert out.timestamps.tolist() == pytest.approx([0.0, 200.0, 399.96, 599.96])
    assert _close(out.frames[:1], _cli_frames(path, (64, 96), count=1))
    assert _close(out.frames[-1:], _cli_frames(path, (64, 96), seek=599.96, count=1))


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


@pytest.mark.parametrize("route", ["packets", "sequential"])
def test_long_video_holds_only_t_frames(long_media, route):
    """The headless MPEG-TS copy: torchcodec's seeks fail on it, the packet
    plan serves it, and without a plan the frame-by-frame route does.
    Holding all 15000 frames (96x64) would take 276 MB, holding T = 4
    takes 74 kB."""
    import av  # noqa: F401  (loaded before the measure: its libraries are not frames)

    from cps_ray._decode.cpu import decode_cpu
    from cps_ray._decode.opening import Request
    from cps_ray._guards import Limits

    path = str(long_media["long_10min_headless.ts"])
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset this process's peak resident memory
    except OSError as e:
        pytest.skip(f"cannot reset the peak memory of this process: {e}")
    before = _memory_kib("VmRSS")
    request = Request(path, 4, "auto", None, "cpu", 1, Limits(path, None, None))
    out = decode_cpu(request, plan=route == "packets")
    got, n, last = out.route, out.num_frames, int(out.frame_indices[-1])
    growth_kib = _memory_kib("VmHWM") - before
    assert got == route
    assert 14_900 < n <= 15_000
    assert last == n - 1
    assert growth_kib < 100 * 1024, f"peak memory grew by {growth_kib} KiB"


def test_frame_loop_checks_the_deadline_before_every_frame(media):
    """White box: the deadline passes after the 10th frame of the walk."""
    from cps_ray._decode.opening import decoded_frames, open_container
    from cps_ray._guards import Limits

    path = str(media["headless_gop.ts"])
    limits = Limits(path, max_pixels=None, timeout_s=3600.0)
    seen = 0
    with open_container(path) as container:
        stream = container.streams.video[0]
        frames = decoded_frames(stream.codec_context, container.demux(stream), limits)
        with pytest.raises(DecodeError, match=r"timed out after 3600 s \(decode_timeout_s\)$"):
            for _ in frames:
                seen += 1
                if seen == 10:
                    limits._deadline = 0.0
    assert seen == 10


def test_decode_timeout_between_seeks(long_media):
    """The packet scan of 15000 frames and 64 seeks take far more than 1 ms."""
    path = str(long_media["long_10min.mp4"])
    with pytest.raises(DecodeError, match=r"timed out after 0\.001 s \(decode_timeout_s\)$"):
        decode_only(
            DecodeConfig(path, sequence_length=64, uniform_strategy="index", decode_timeout_s=0.001)
        )
