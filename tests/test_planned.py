"""The packets route: only the packets the frames need are decoded, and the
frames are bit for bit those of decoding every frame with the same decoder
and the same conversion."""

from __future__ import annotations

import numpy as np
import pytest
from decoded import full_decode
from media import X265, _ffmpeg, lavfi

from cps_ray import DecodeConfig, decode_only
from cps_ray._decode.packets import (
    frame_positions,
    packets_to_decode,
    read_index,
    sequence_starts,
)

# Encoder defaults that users' files have: B-frames as references (b-pyramid).
X264_BPYRAMID = ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-x264-params",
                 "b-pyramid=normal", "-pix_fmt", "yuv420p"]  # fmt: skip
X265_BPYRAMID = X265[:-1] + ["log-level=error:bframes=4:b-pyramid=1", "-pix_fmt", "yuv420p"]
VFR = ["-vf", "setpts='if(lt(N,20),N/25,0.8+(N-20)/5)/TB'", "-fps_mode", "vfr"]

SOURCES = {
    "h264_bpyramid.mp4": lavfi(seconds=4) + X264_BPYRAMID + ["-g", "40"],
    "hevc_bpyramid.mp4": lavfi(seconds=4)
    + X265_BPYRAMID[:-3]
    + ["log-level=error:bframes=4:b-pyramid=1:keyint=40", "-pix_fmt", "yuv420p"],
    "hevc_open_gop.mkv": lavfi(seconds=4)
    + X265[:-1]
    + ["log-level=error:keyint=12:open-gop=1:bframes=3:b-pyramid=1", "-pix_fmt", "yuv420p"],
    "h264_vfr_bframes.mp4": lavfi(seconds=3) + X264_BPYRAMID + VFR,
}
STRATEGIES = ["auto", "index", "time", "keyframe"]


@pytest.fixture(scope="module")
def planned_media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planned")
    paths = {}
    for name, args in SOURCES.items():
        _ffmpeg(args, folder / name)
        paths[name] = folder / name
    # Concatenated with -c copy: the file played three times over.
    looped = folder / "looped.mp4"
    _ffmpeg(["-stream_loop", "2", "-i", str(paths["h264_bpyramid.mp4"]), "-c", "copy"], looped)
    paths["looped.mp4"] = looped
    return paths


def _full_decode(path, size=None) -> np.ndarray:
    """Every frame, decoded in order from the start by PyAV, converted as the routes do."""
    return full_decode(path, size)[0]


def _same(out, every) -> bool:
    return np.array_equal(out.frames.numpy(), every[out.frame_indices.numpy()])


@pytest.mark.parametrize("name", [*SOURCES, "looped.mp4"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_frames_are_those_of_a_full_decode(planned_media, name, strategy):
    path = planned_media[name]
    out = decode_only(DecodeConfig(str(path), sequence_length=12, uniform_strategy=strategy,
                                   decode_backend="cpu"))  # fmt: skip
    every = _full_decode(path)
    assert out.route == ("keyframe" if strategy == "keyframe" else "packets")
    assert out.num_frames == len(every)
    assert _same(out, every)


def test_resized_frames_are_those_of_a_full_decode(planned_media):
    path = planned_media["hevc_open_gop.mkv"]
    out = decode_only(DecodeConfig(str(path), sequence_length=16, input_size=48))
    assert out.route == "packets"
    assert _same(out, _full_decode(path, 48))


@pytest.mark.parametrize("name", ["h264_bpyramid.mp4", "hevc_bpyramid.mp4", "hevc_open_gop.mkv"])
def test_non_reference_pictures_are_not_decoded(planned_media, name):
    index = read_index(str(planned_media[name]))
    assert index.droppable.sum() > len(index.droppable) // 5
    positions = frame_positions(index, "index", 12)
    keep = packets_to_decode(index, positions)
    wanted = set(index.packet[positions].tolist())
    # every droppable packet decoded is a wanted frame
    assert all(p in wanted for p in np.flatnonzero(keep & index.droppable))
    assert keep.sum() < int(index.packet[positions].max()) + 1 - index.droppable.sum() // 2


def test_leading_pictures_of_an_open_gop_decode_from_the_group_before(planned_media):
    path = planned_media["hevc_open_gop.mkv"]
    index = read_index(str(path))
    keys = np.flatnonzero(index.keyframe)
    # frames shown just before a later keyframe are decoded after it
    leading = [k - 1 for k in keys[1:] if index.packet[k - 1] > index.packet[k]]
    assert leading, "the encoder made no leading pictures"
    for p in leading:
        assert index.start[p] < index.packet[keys[keys < p][-1]] + 1
    out = decode_only(DecodeConfig(str(path), sequence_length=len(leading), decode_backend="cpu",
                                   uniform_strategy="index"))  # fmt: skip
    every = _full_decode(path)
    frames = np.asarray(leading)
    keep = packets_to_decode(index, frames)
    assert keep[index.start[frames]].all()
    assert _same(out, every)


@pytest.mark.parametrize("strategy", ["keyframe", "index"])
def test_jumps_between_open_gops_start_a_new_sequence(tmp_path, strategy):
    """HEVC open GOPs far apart (150 frames, more than half the picture order
    count's range): each group the plan jumps to decodes as after a seek."""
    path = tmp_path / "far_open_gops.mp4"
    _ffmpeg(lavfi("64x48", seconds=24) + X265[:-1]
            + ["log-level=error:keyint=150:min-keyint=150:open-gop=1:bframes=4:scenecut=0",
               "-pix_fmt", "yuv420p"], path)  # fmt: skip
    out = decode_only(DecodeConfig(str(path), sequence_length=4, uniform_strategy=strategy,
                                   decode_backend="cpu"))  # fmt: skip
    assert out.route == ("keyframe" if strategy == "keyframe" else "packets")
    index = read_index(str(path))
    keep = packets_to_decode(index, out.frame_indices.numpy())
    assert sequence_starts(index, keep).sum() >= 2
    assert _same(out, _full_decode(path))


def test_groups_without_a_wanted_frame_are_left_out(planned_media):
    index = read_index(str(planned_media["looped.mp4"]))
    keys = np.flatnonzero(index.keyframe)
    assert len(keys) >= 6
    positions = np.array([0, index.num_frames - 1])
    keep = packets_to_decode(index, positions)
    middle = slice(int(index.packet[keys[2]]), int(index.packet[keys[-2]]))
    assert not keep[middle].any()


def test_a_looped_file_is_planned_from_its_packets_under_time(planned_media):
    """``-stream_loop`` with ``-c copy``: the time strategy is planned from
    the packets, not decoded frame by frame."""
    path = planned_media["looped.mp4"]
    out = decode_only(DecodeConfig(str(path), sequence_length=7, uniform_strategy="time"))
    assert out.route == "packets"
    steps = np.diff(out.timestamps.numpy())
    assert steps.min() > 0 and steps.max() - steps.min() < 0.1
