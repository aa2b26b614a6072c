"""The CPU's decode (PyAV and NumPy): every route gives the same pixels for
the same frame, the conversion follows the resize policy (rotation, odd
sizes, high bit depths, 4:4:4, images), and no torch is loaded for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from decoded import full_decode
from media import CODEC_FILES
from test_decode import _ffmpeg_frames

from cps_ray._decode import RESIZE_POLICY, decode_frames
from cps_ray._decode.cpu import decode_cpu
from cps_ray._decode.opening import Request
from cps_ray._guards import Limits

REPO = Path(__file__).resolve().parents[1]

# Files the plan serves; the frame-by-frame route must give the same bits.
PLANNED = [*CODEC_FILES, "rot90.mp4", "long_gop.mp4", "vfr.mp4", "image.png", "image.jpg"]


def _cpu(path, strategy="index", input_size=None, *, plan=True, num_threads=1):
    path = str(path)
    request = Request(path, 6, strategy, input_size, "cpu", num_threads, Limits(path, None, None))
    return decode_cpu(request, plan=plan)


@pytest.mark.parametrize("input_size", [None, 32])
@pytest.mark.parametrize("name", PLANNED)
def test_the_plan_and_the_walk_give_the_same_pixels(media, name, input_size):
    strategies = ["index"] if name.startswith("image") else ["index", "time"]
    for strategy in strategies:
        planned = _cpu(media[name], strategy, input_size)
        walked = _cpu(media[name], strategy, input_size, plan=False)
        assert planned.route == "packets" and walked.route == "sequential"
        assert planned.num_frames == walked.num_frames
        assert np.array_equal(planned.frame_indices, walked.frame_indices)
        assert np.array_equal(planned.timestamps, walked.timestamps)
        assert np.array_equal(planned.frames, walked.frames)


@pytest.mark.parametrize("name", ["h264.mp4", "hevc.mkv", "rot90.mp4", "odd_97x71.webm"])
def test_every_route_is_the_full_decode(media, name):
    every, pts = full_decode(media[name], 32)
    for plan in (True, False):
        out = _cpu(media[name], "index", 32, plan=plan)
        assert np.array_equal(out.frames, every[out.frame_indices])
        assert np.array_equal(out.timestamps, pts[out.frame_indices])


def test_threads_change_nothing(media):
    one = _cpu(media["hevc.mkv"], "index", 32, num_threads=1)
    for threads in (2, 3):
        assert np.array_equal(_cpu(media["hevc.mkv"], "index", 32, num_threads=threads).frames,
                              one.frames)  # fmt: skip


def test_cpu_output_is_numpy(media):
    out = decode_frames(str(media["h264.mp4"]), sequence_length=5, input_size=32)
    assert isinstance(out.frames, np.ndarray) and out.frames.flags.c_contiguous
    assert out.frames.dtype == np.uint8 and out.frames.shape == (5, 3, 32, 32)
    assert out.frame_indices.dtype == np.int64 and out.timestamps.dtype == np.float64
    assert RESIZE_POLICY == "swscale-bilinear-v1"


@pytest.mark.parametrize("input_size", [None, 48])
@pytest.mark.parametrize("plan", [True, False])
def test_rotation_is_a_lossless_turn_of_the_stored_picture(media, input_size, plan):
    """rot90.mp4 is h264.mp4's stream with a 90 degree display matrix: the
    size is planned on the displayed frame (48 x 64 stored, 64 x 48 shown,
    then the center 48 x 48), and the pixels are the stored ones turned."""
    turned = _cpu(media["rot90.mp4"], "index", input_size, plan=plan)
    plain = _cpu(media["h264.mp4"], "index", input_size, plan=plan)
    assert turned.frames.shape[-2:] == ((160, 120) if input_size is None else (48, 48))
    assert np.array_equal(turned.frames, np.rot90(plain.frames, 1, axes=(2, 3)))
    if input_size is None:  # the ffmpeg CLI turns it the same way
        cli = _ffmpeg_frames(media["rot90.mp4"]).numpy()[turned.frame_indices]
        assert np.array_equal(turned.frames, cli)


@pytest.mark.parametrize("name", ["odd_97x71.webm", "odd444_97x71.mp4"])
def test_odd_sizes(media, name):
    native = _cpu(media[name])
    assert native.frames.shape == (6, 3, 71, 97)
    # 97 x 71 -> short side 31 -> 42 x 31 -> the center 31 x 31
    assert _cpu(media[name], "index", 31).frames.shape == (6, 3, 31, 31)
    cli = _ffmpeg_frames(media[name]).numpy()[native.frame_indices]
    diff = np.abs(native.frames.astype(int) - cli)
    if name == "odd444_97x71.mp4":  # no chroma to upsample: the CLI's bits
        assert diff.max() == 0
    else:  # the CLI (FFmpeg 5.1) rounds the odd chroma column differently
        assert diff.mean() < 2.5


def _luma(frames: np.ndarray) -> np.ndarray:
    return np.tensordot(np.array([0.299, 0.587, 0.114]), frames.astype(float), axes=([0], [1]))


@pytest.mark.parametrize("name", ["h264_10bit.mp4", "hevc_12bit.mkv", "h264_444.mp4"])
def test_high_bit_depth_and_444(media, name):
    """4:4:4 8-bit: the ffmpeg CLI's bits. 10 and 12 bits: the CLI (FFmpeg
    5.1) takes each pixel's nearest chroma sample where swscale here
    interpolates it (bilinear), which on testsrc2's saturated bars moves
    colour edges by up to 226 levels (mean 5.4); the luma agrees closely."""
    out = _cpu(media[name])
    cli = _ffmpeg_frames(media[name]).numpy()[out.frame_indices]
    if name == "h264_444.mp4":
        assert np.array_equal(out.frames, cli)
        return
    assert np.abs(out.frames.astype(int) - cli).mean() < 7.0
    assert np.abs(_luma(out.frames) - _luma(cli)).mean() < 2.0
    assert out.frames.std() > 30  # real content, full range


@pytest.mark.parametrize("name", ["image.png", "image.jpg", "image_png.mp4"])
def test_images_decode_as_one_frame(media, name):
    for plan in (True, False):
        out = _cpu(media[name], plan=plan)
        assert out.num_frames == 1 and out.frame_indices.tolist() == [0] * 6
        cli = _ffmpeg_frames(media[name]).numpy()
        assert np.array_equal(out.frames, np.repeat(cli, 6, axis=0))


@pytest.mark.parametrize("strategy", ["auto", "index", "time"])
def test_a_lying_header_is_walked_to_the_true_count(media, strategy):
    """lying_count.mp4 promises 50 frames and holds 26: the plan is refused
    and the walk keeps the true uniform frames, those of a full decode."""
    out = _cpu(media["lying_count.mp4"], strategy, 32)
    assert out.route == "sequential" and out.num_frames == 26
    every, pts = full_decode(media["lying_count.mp4"], 32)
    assert len(every) == 26 and out.frame_indices[-1] == 25
    assert np.array_equal(out.frames, every[out.frame_indices])
    assert np.array_equal(out.timestamps, pts[out.frame_indices])


_NO_TORCH = r"""
import json, sys
from cps_ray._decode import decode_frames
from cps_ray.errors import DecodeError

routes = []
for path in sys.argv[1:]:
    try:
        routes.append(decode_frames(path, sequence_length=4, input_size=32).route)
    except DecodeError:
        routes.append("error")
print(json.dumps({"routes": routes,
                  "loaded": [m for m in ("torch", "torchcodec") if m in sys.modules]}))
"""


def test_a_cpu_decode_imports_neither_torch_nor_torchcodec(media):
    names = ["h264.mp4", "lying_count.mp4", "image.png", "hevc.mkv", "broken/text.mp4"]
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *(str(media[n]) for n in names)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["routes"] == ["packets", "sequential", "packets", "packets", "error"]
    assert result["loaded"] == []
