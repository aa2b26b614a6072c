"""CPU decode on generated media: codecs, sizes, orientation, routes, errors."""

import subprocess

import numpy as np
import pytest
import torch
from media import CODEC_FILES

from cps_ray import DecodeConfig, DecodeError, decode_only
from cps_ray._decode import resized_dims

CODECS = [*CODEC_FILES, "vp8.webm", "gop1.mp4"]


def _ffmpeg_frames(path, pix="rgb24"):
    """All frames of a file as the ffmpeg CLI decodes them (autorotated), uint8 [N, 3, H, W]."""
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height:stream_side_data=rotation",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\n", ",")
    values = [v for v in probe.split(",") if v.strip()]
    w, h = int(values[0]), int(values[1])
    if any(abs(int(float(v))) in (90, 270) for v in values[2:]):
        w, h = h, w
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            pix,
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    arr = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    return torch.from_numpy(arr.copy()).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_decodes_uniform_frames(media, name):
    out = decode_only(DecodeConfig(str(media[name]), sequence_length=8, input_size=32))
    assert out.frames.shape == (8, 3, 32, 32) and out.frames.dtype == torch.uint8
    assert out.frame_indices.tolist() == np.round(np.linspace(0, 49, 8)).astype(int).tolist()
    assert out.num_frames == 50
    assert out.timestamps.dtype == torch.float64
    assert bool((out.timestamps[1:] > out.timestamps[:-1]).all())
    assert out.decode_backend == "cpu" and out.decode_device == "cpu"
    assert out.frames.float().std() > 5  # real picture content, not a blank


@pytest.mark.parametrize("name", ["h264.mp4", "mpeg2.mpg", "nonzero_start.ts", "vfr.mp4"])
def test_frames_equal_the_ffmpeg_cli(media, name):
    """Native-size frames are the frames ffmpeg decodes at those indices."""
    out = decode_only(DecodeConfig(str(media[name]), sequence_length=5))
    every = _ffmpeg_frames(media[name])
    assert out.num_frames == len(every)
    want = every[out.frame_indices]
    # Same FFmpeg, same pixels up to colour-conversion rounding.
    assert (out.frames.int() - want.int()).abs().float().mean() < 2.0


def test_native_size_and_odd_size(media):
    out = decode_only(DecodeConfig(str(media["odd_97x71.webm"]), sequence_length=3))
    assert out.frames.shape == (3, 3, 71, 97)


def test_rotation_is_applied(media):
    """rot90.mp4 is h264.mp4 (160x120) with a 90 degree display matrix."""
    out = decode_only(DecodeConfig(str(media["rot90.mp4"]), sequence_length=2))
    plain = decode_only(DecodeConfig(str(media["h264.mp4"]), sequence_length=2))
    assert plain.frames.shape == (2, 3, 120, 160)
    assert out.frames.shape == (2, 3, 160, 120)
    cli = _ffmpeg_frames(media["rot90.mp4"])[out.frame_indices]
    assert (out.frames.int() - cli.int()).abs().float().mean() < 2.0
    # and it is a rotation of the stored picture, not a transpose
    candidates = [torch.rot90(plain.frames, k, dims=(2, 3)) for k in (1, 3)]
    errors = [(out.frames.int() - c.int()).abs().float().mean() for c in candidates]
    assert min(errors) < 2.0 and max(errors) > 20


def test_resize_policy_short_side_then_center_crop(media):
    # 160x120 -> short side 40 -> 53x40 -> center 40x40
    assert resized_dims(120, 160, 40) == (40, 53)
    assert resized_dims(112, 64, 32) == (56, 32)
    out = decode_only(DecodeConfig(str(media["h264.mp4"]), sequence_length=3, input_size=40))
    native = decode_only(DecodeConfig(str(media["h264.mp4"]), sequence_length=3))
    small = torch.nn.functional.interpolate(
        native.frames.float(),
        size=(40, 53),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    left = (53 - 40) // 2
    want = small[:, :, :, left : left + 40]
    assert out.frames.shape == (3, 3, 40, 40)
    assert (out.frames.float() - want).abs().mean() < 4.0


def test_portrait_and_rotated_resize(media):
    for name in ("portrait_64x112.mp4", "rot90.mp4"):
        out = decode_only(DecodeConfig(str(media[name]), sequence_length=2, input_size=48))
        assert out.frames.shape == (2, 3, 48, 48)


def test_fewer_frames_than_sequence_length_repeats(media):
    out = decode_only(DecodeConfig(str(media["short5.mp4"]), sequence_length=8))
    assert out.num_frames == 5
    assert out.frame_indices.tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    assert torch.equal(out.frames[1], out.frames[2])


def test_one_frame_video(media):
    out = decode_only(DecodeConfig(str(media["one_frame.mp4"]), sequence_length=4, input_size=16))
    assert out.frame_indices.tolist() == [0, 0, 0, 0]
    assert all(torch.equal(out.frames[0], f) for f in out.frames)


def test_long_gop_index(media):
    out = decode_only(DecodeConfig(str(media["long_gop.mp4"]), sequence_length=4))
    assert out.num_frames == 100
    assert out.frame_indices.tolist() == [0, 33, 66, 99]
    assert out.timestamps.tolist() == pytest.approx([0.0, 1.32, 2.64, 3.96])


@pytest.mark.parametrize("strategy", ["auto", "index", "time"])
def test_header_that_overcounts_still_decodes(media, strategy):
    """lying_count.mp4's header promises 50 frames; about half survive."""
    path = str(media["lying_count.mp4"])
    every = _ffmpeg_frames(path)
    out = decode_only(DecodeConfig(path, sequence_length=6, uniform_strategy=strategy))
    assert out.num_frames == len(every) < 50
    assert out.frame_indices[-1] == len(every) - 1
    assert (out.frames.int() - every[out.frame_indices].int()).abs().float().mean() < 2.0


@pytest.mark.parametrize("strategy", ["auto", "index", "time"])
def test_first_keyframe_discarded_still_decodes(media, strategy):
    path = str(media["headless_gop.ts"])
    every = _ffmpeg_frames(path)
    out = decode_only(
        DecodeConfig(path, sequence_length=6, input_size=32, uniform_strategy=strategy)
    )
    assert out.num_frames == len(every)
    assert out.frame_indices[0] == 0 and out.frame_indices[-1] == len(every) - 1


def test_nonzero_start(media):
    out = decode_only(DecodeConfig(str(media["nonzero_start.ts"]), sequence_length=3))
    assert out.timestamps[0] > 0.5
    assert out.frame_indices.tolist() == [0, 24, 49]


def test_time_strategy_on_variable_frame_rate(media):
    """vfr.mp4: frames 0..19 at 25 fps (0..0.76 s), then 5 fps up to 6.6 s."""
    path = str(media["vfr.mp4"])
    by_index = decode_only(DecodeConfig(path, sequence_length=5, uniform_strategy="index"))
    by_time = decode_only(DecodeConfig(path, sequence_length=5, uniform_strategy="time"))
    assert by_index.frame_indices.tolist() == [0, 12, 24, 37, 49]
    assert by_index.timestamps[1] == pytest.approx(0.48)
    # the stream ends at 6.64 s: targets 0, 1.66, 3.32, 4.98, 6.64 -> frames shown then
    assert by_time.timestamps.tolist() == pytest.approx([0.0, 1.6, 3.2, 4.8, 6.6])
    assert by_time.frame_indices[0] == 0 and by_time.frame_indices[-1] == 49


def test_decoding_is_deterministic(media):
    cfg = DecodeConfig(str(media["long_gop.mp4"]), sequence_length=7, input_size=32)
    a, b = decode_only(cfg), decode_only(cfg)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.timestamps, b.timestamps)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("broken/missing.mp4", "file not found"),
        ("broken/folder.mp4", "is a directory"),
        ("broken/empty.mp4", "empty file"),
        ("broken/text.mp4", "not a video"),
        ("broken/random.mp4", "not a video"),
        ("broken/truncated.mp4", "not a video, or too damaged"),
        ("broken/audio_only.m4a", "no video stream"),
        ("broken/header_only.mp4", "too damaged to decode"),
    ],
)
def test_decode_errors_name_file_and_reason(media, name, reason):
    path = str(media[name])
    with pytest.raises(DecodeError) as info:
        decode_only(DecodeConfig(path, sequence_length=4, input_size=32))
    msg = str(info.value)
    assert msg.startswith(path + ": ") and reason in msg
    assert "\n" not in msg and ".cpp" not in msg
    assert info.value.path == path


def test_decode_only_needs_a_path():
    with pytest.raises(ValueError, match="video_path"):
        decode_only(DecodeConfig())


def test_private_torchcodec_hooks(media):
    """The private torchcodec names the GPU route (cps_ray._decode.nvdec)
    relies on, within the version bound of pyproject.toml (on the CPU here)."""
    import torchcodec
    from torchcodec import _core

    from cps_ray._decode.nvdec import iter_frames, open_decoder
    from cps_ray._decode.opening import Request
    from cps_ray._guards import Limits

    major, minor = (int(x) for x in torchcodec.__version__.split(".")[:2])
    assert (0, 13) <= (major, minor) < (0, 15)
    assert callable(_core.get_next_frame)
    path = str(media["h264.mp4"])
    limits = Limits(path, None, None)
    decoder = open_decoder(Request(path, 4, "auto", None, "cpu", 1, limits), "approximate")
    frames = [frame for frame, _, _ in iter_frames(decoder, limits)]
    assert len(frames) == 50 and frames[0].shape == (3, 120, 160)
