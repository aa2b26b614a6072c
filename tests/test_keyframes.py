"""uniform_strategy="keyframe": per uniform target, the cheapest frame to
decode within half a sampling interval, decoded exactly as a full decode
shows it, through every API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decoded import full_decode

from cps_ray import DecodeConfig, PatchStreamConfig, decode_only, local_stream
from cps_ray._decode.packets import NoPacketIndex, choose_keyframes, read_index
from cps_ray._sampling import index_positions

T = 8


def _decode(path, strategy, **kwargs):
    cfg = DecodeConfig(video_path=str(path), sequence_length=T, uniform_strategy=strategy,
                       decode_backend="cpu", **kwargs)  # fmt: skip
    return decode_only(cfg)


def _every_frame(path) -> torch.Tensor:
    """Every frame, decoded in order by PyAV and converted as the routes do."""
    return torch.from_numpy(full_decode(path)[0])


@pytest.mark.parametrize("name", ["h264.mp4", "long_gop.mp4", "hevc.mkv", "vfr.mp4", "vp9.webm"])
def test_frames_are_the_full_decode_and_near_the_targets(media, name):
    out = _decode(media[name], "keyframe")
    assert out.route == "keyframe"
    full = _every_frame(media[name])
    n = len(full)
    assert out.num_frames == n
    positions = out.frame_indices.numpy()
    # the very frames a full decode shows at those positions, bit for bit
    assert torch.equal(out.frames, full[torch.from_numpy(positions)])
    # each within half a sampling interval of its uniform target
    targets = index_positions(n, T)
    assert np.all(np.abs(positions - targets) <= (n - 1) / (T - 1) / 2)
    # and the cheapest there: no frame of the window costs less
    index = read_index(str(media[name]))
    half = (n - 1) / (T - 1) / 2
    for target, chosen in zip(targets, positions):
        window = np.arange(max(0, int(np.ceil(target - half))), int(target + half) + 1)
        window = window[window < n]
        assert index.cost[chosen] == index.cost[window].min()
    # timestamps are the chosen frames' own
    pts = torch.from_numpy(full_decode(media[name], 8)[1][positions])
    assert torch.allclose(out.timestamps, pts, atol=1e-6)


def test_keyframes_are_taken_where_the_window_has_one(media):
    index = read_index(str(media["h264.mp4"]))  # GOP 12 over 50 frames
    chosen = choose_keyframes(index, T)
    assert index.keyframe.sum() == 5
    keys = np.flatnonzero(index.keyframe)
    targets = index_positions(index.num_frames, T)
    half = (index.num_frames - 1) / (T - 1) / 2
    for target, frame in zip(targets, chosen):
        if np.any(np.abs(keys - target) <= half):
            assert index.keyframe[frame]


def test_all_intra_gives_the_exact_uniform_frames(media):
    exact = _decode(media["gop1.mp4"], "index", input_size=32)
    cheap = _decode(media["gop1.mp4"], "keyframe", input_size=32)
    assert cheap.frame_indices.tolist() == exact.frame_indices.tolist()
    assert torch.equal(cheap.frames, exact.frames)


def test_a_leading_picture_of_an_open_gop_costs_from_the_keyframe_before(tmp_path):
    """HEVC open GOP: frames shown before a CRA keyframe are decoded after it
    and cannot be output by a seek to it; their cost counts from the group before."""
    import subprocess

    path = tmp_path / "open_gop.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=2",
         "-c:v", "libx265", "-x265-params", "log-level=error:keyint=12:open-gop=1:bframes=3",
         "-pix_fmt", "yuv420p", str(path)], check=True,
    )  # fmt: skip
    index = read_index(str(path))
    keys = np.flatnonzero(index.keyframe)
    assert len(keys) >= 3
    # the frames just before a later keyframe are costly, the keyframe costs 1
    assert index.cost[keys[1]] == 1 and index.cost[keys[1] - 1] > 3
    out = _decode(path, "keyframe")
    full = _every_frame(path)
    assert out.route == "keyframe"
    assert torch.equal(out.frames, full[out.frame_indices])


def test_unlistable_files_fall_back_to_the_exact_frames(media):
    with pytest.raises(NoPacketIndex):
        read_index(str(media["broken/text.mp4"]))
    # a file PyAV cannot index but torchcodec decodes still gives frames: the
    # index strategy's; a broken file is the same DecodeError as under index
    from cps_ray import DecodeError

    with pytest.raises(DecodeError, match="text.mp4"):
        _decode(media["broken/text.mp4"], "keyframe")


def test_keyframe_rows_through_local_stream(media):
    cfg = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10,
                            uniform_strategy="keyframe")  # fmt: skip
    paths = [str(media["h264.mp4"]), str(media["broken/empty.mp4"])]
    good, bad = local_stream(paths, cfg, num_workers=1)
    assert good["error"] is None and bad["error"]
    alone = _decode(media["h264.mp4"], "keyframe")
    four = decode_only(DecodeConfig(video_path=str(media["h264.mp4"]), sequence_length=4,
                                    uniform_strategy="keyframe", input_size=28))  # fmt: skip
    assert four.route == alone.route == "keyframe"
    assert good["frame_indices"].tolist() == four.frame_indices.tolist()
