"""Which video stream: files with several video tracks, a cover picture
first, and a damaged copy whose packet plan is rejected all decode the
stream torchcodec (FFmpeg's av_find_best_stream) picks, on every route."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from media import X264, _ffmpeg, lavfi

from cps_ray import DecodeConfig, PatchStreamConfig, decode_only, local_stream, patch_stream
from cps_ray._decode.cpu import decode_cpu
from cps_ray._decode.opening import Request
from cps_ray._guards import Limits


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    """``busy``: 160x120 test pattern, a high bit rate (FFmpeg's best of the
    two); ``calm``: 96x64 flat colour, a low one; ``cover``: a PNG picture."""
    folder = tmp_path_factory.mktemp("streams")
    busy, calm, cover = folder / "busy.mp4", folder / "calm.mp4", folder / "cover.png"
    _ffmpeg(lavfi("160x120", seconds=2) + X264 + ["-g", "10", "-movflags", "+faststart"], busy)
    _ffmpeg(["-f", "lavfi", "-i", "color=c=teal:size=96x64:rate=25:duration=2"] + X264, calm)
    _ffmpeg(lavfi("64x64", seconds=0.04) + ["-frames:v", "1"], cover)
    files = {}

    def mux(name, *inputs, extra=()):
        args = []
        for source in inputs:
            args += ["-i", str(source)]
        for i in range(len(inputs)):
            args += ["-map", f"{i}:v"]
        _ffmpeg(args + ["-c", "copy", *extra], folder / name)
        files[name] = folder / name

    mux("best_first.mp4", busy, calm)
    mux("best_second.mp4", calm, busy)
    # Matroska keeps no bit rate: the default flag decides.
    mux("best_second.mkv", calm, busy, extra=("-disposition:v:0", "0"))
    mux("best_second_faststart.mp4", calm, busy, extra=("-movflags", "+faststart"))
    mux("cover_first.mkv", cover, busy)
    whole = files["best_second_faststart.mp4"].read_bytes()
    cut = folder / "best_second_cut.mp4"
    cut.write_bytes(whole[: len(whole) * 6 // 10])  # its plan is rejected (see below)
    files["best_second_cut.mp4"] = cut
    files["busy.mp4"] = busy
    return files


# name -> the index of the busy track
EXPECTED = {
    "best_first.mp4": 0,
    "best_second.mp4": 1,
    "best_second.mkv": 1,
    "best_second_faststart.mp4": 1,
    "cover_first.mkv": 1,
    "best_second_cut.mp4": 1,
}


def _decode(path, **options):
    return decode_only(DecodeConfig(str(path), sequence_length=6, decode_backend="cpu", **options))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_stream_torchcodec_picks(tracks, name):
    from torchcodec.decoders import VideoDecoder

    out = _decode(tracks[name])
    assert out.stream_index == EXPECTED[name]
    assert VideoDecoder(str(tracks[name]), seek_mode="approximate").stream_index == EXPECTED[name]
    assert tuple(out.frames.shape[-2:]) == (120, 160)


@pytest.mark.parametrize("name", ["best_second.mp4", "best_second.mkv", "cover_first.mkv"])
@pytest.mark.parametrize("strategy", ["index", "time", "keyframe"])
def test_the_plan_and_the_routes_decode_the_same_frames(tracks, name, strategy):
    """The packet plan (of the chosen stream) and the route that decodes
    the file itself give the busy track's frames, bit for bit."""
    path = str(tracks[name])
    planned = _decode(path, uniform_strategy=strategy)
    assert planned.route == ("keyframe" if strategy == "keyframe" else "packets")
    alone = _decode(tracks["busy.mp4"], uniform_strategy=strategy)
    assert torch.equal(planned.frames, alone.frames)
    assert torch.equal(planned.frame_indices, alone.frame_indices)
    request = Request(path, 6, strategy, None, "cpu", 1, Limits(path, None, None))
    routed = decode_cpu(request, plan=False)
    assert routed.route == "sequential"
    assert routed.stream_index == planned.stream_index
    if strategy != "keyframe":
        assert np.array_equal(routed.frame_indices, planned.frame_indices.numpy())
        assert np.array_equal(routed.frames, planned.frames.numpy())


def test_a_damaged_copy_decodes_the_same_stream(tracks):
    """Cut short, the file's plan is rejected and the frame-by-frame route
    decodes it: from the same stream as the whole file, the same frames."""
    whole = _decode(tracks["best_second_faststart.mp4"], uniform_strategy="index")
    cut = _decode(tracks["best_second_cut.mp4"], uniform_strategy="index")
    assert cut.route == "sequential"
    assert cut.stream_index == whole.stream_index == 1
    every = _decode(tracks["best_second_faststart.mp4"], uniform_strategy="index")
    assert cut.frames.shape[1:] == every.frames.shape[1:]
    full = decode_only(DecodeConfig(str(tracks["busy.mp4"]), sequence_length=50,
                                    decode_backend="cpu"))  # fmt: skip
    assert torch.equal(cut.frames, full.frames[cut.frame_indices])


def test_rows_record_the_stream(tracks):
    config = PatchStreamConfig(sequence_length=4, input_size=56, patch_size=14, k_keep=20,
                               decode_backend="cpu")  # fmt: skip
    (row,) = local_stream([str(tracks["best_second.mkv"])], config, num_workers=1,
                          isolation="none")  # fmt: skip
    assert row["error"] is None and row["stream_index"] == 1
    one = dataclasses.replace(config, video_path=str(tracks["cover_first.mkv"]))
    with patch_stream(one) as session:
        assert session.stream_index == 1


def test_only_a_cover_picture_is_no_video(tmp_path):
    """A song with cover art holds a picture stream and no video (torchcodec
    would decode the picture as a one-frame video)."""
    import av

    from cps_ray import DecodeError

    cover = tmp_path / "cover.png"
    _ffmpeg(lavfi("64x64", seconds=0.04) + ["-frames:v", "1"], cover)
    song = tmp_path / "song.m4a"
    _ffmpeg(["-f", "lavfi", "-i", "sine=duration=0.5", "-i", str(cover), "-map", "0:a",
             "-map", "1:v", "-c:a", "aac", "-c:v", "mjpeg", "-disposition:v:0", "attached_pic"],
            song)  # fmt: skip
    with av.open(str(song)) as container:
        (picture,) = container.streams.video
        assert picture.disposition & av.stream.Disposition.attached_pic
    with pytest.raises(DecodeError, match="only an attached picture"):
        _decode(song)
