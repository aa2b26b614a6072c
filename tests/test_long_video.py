"""One long video on every core: its plan split into segments that start at
keyframes, decoded side by side by decoders of their own, gives the frames
of one decoder bit for bit; many frames are held as the output array alone,
and frames that cannot fit are a clear error."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
from decoded import full_decode
from media import _ffmpeg, make_long_video
from test_planned import SOURCES, STRATEGIES

import cps_ray._devices as devices
from cps_ray import DecodeConfig, DecodeError, decode_only
from cps_ray._decode import packets, planned
from cps_ray._decode.cpu import decode_cpu
from cps_ray._decode.opening import CannotServe, Request, open_for_plan, video_stream
from cps_ray._decode.planned import plan_packets
from cps_ray._decode.segments import choose_segments, split_points
from cps_ray._guards import FRAMES_BYTES_ENV, Limits
from cps_ray.errors import ConfigError

# Files of several groups of pictures (the VFR source is one group).
MULTI_GOP = ["h264_bpyramid.mp4", "hevc_bpyramid.mp4", "hevc_open_gop.mkv", "looped.mp4"]


@pytest.fixture(scope="module")
def planned_media(tmp_path_factory):
    """test_planned's sources of several groups, and one of them looped."""
    folder = tmp_path_factory.mktemp("long_planned")
    paths = {}
    for name in MULTI_GOP[:-1]:
        _ffmpeg(SOURCES[name], folder / name)
        paths[name] = folder / name
    looped = folder / "looped.mp4"
    _ffmpeg(["-stream_loop", "2", "-i", str(paths["h264_bpyramid.mp4"]), "-c", "copy"], looped)
    paths["looped.mp4"] = looped
    return paths


@pytest.fixture
def split_short_plans(monkeypatch):
    """Split plans of any length: the test files are short."""
    monkeypatch.setattr(devices, "MIN_WORK_PER_DECODER", 1)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return make_long_video(tmp_path_factory.mktemp("long"))


def _decode(path, strategy="index", threads=1, t=12, size=None):
    return decode_only(DecodeConfig(str(path), sequence_length=t, uniform_strategy=strategy,
                                    input_size=size, decode_backend="cpu",
                                    ffmpeg_threads=threads))  # fmt: skip


def _assert_same(split, one):
    assert split.route == one.route and split.num_frames == one.num_frames
    assert np.array_equal(split.frame_indices.numpy(), one.frame_indices.numpy())
    assert np.array_equal(split.timestamps.numpy(), one.timestamps.numpy())
    assert np.array_equal(split.frames.numpy(), one.frames.numpy())


def test_the_rule_spends_threads_on_decoders_where_the_work_pays():
    least = devices.MIN_WORK_PER_DECODER
    assert devices.split_decoders(2, least - 1, 10) == (1, 2)  # short: FFmpeg's threads
    assert devices.split_decoders(2, 10 * least, 10) == (2, 1)
    assert devices.split_decoders(16, 10 * least, 4) == (4, 4)  # four groups
    assert devices.split_decoders(16, 3 * least, 100) == (3, 5)
    assert devices.split_decoders(1, 10 * least, 10) == (1, 1)


@pytest.mark.parametrize("name", MULTI_GOP)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("t", [12, 40])
def test_split_frames_are_those_of_one_decoder(planned_media, split_short_plans, name, strategy,
                                               t):  # fmt: skip
    path = planned_media[name]
    one = _decode(path, strategy, threads=1, t=t)
    split = _decode(path, strategy, threads=3, t=t)
    assert one.decoders == 1 and split.decoders > 1
    _assert_same(split, one)
    every = full_decode(path)[0]
    assert np.array_equal(split.frames.numpy(), every[split.frame_indices.numpy()])


def test_split_resized_frames_are_those_of_one_decoder(planned_media, split_short_plans):
    path = planned_media["hevc_open_gop.mkv"]
    one = _decode(path, "time", threads=1, t=30, size=48)
    split = _decode(path, "time", threads=4, t=30, size=48)
    assert split.decoders == 4
    _assert_same(split, one)


@pytest.mark.parametrize("name", ["h264_bpyramid.mp4", "hevc_open_gop.mkv"])
def test_segments_read_again_seek_to_their_keyframes(planned_media, split_short_plans,
                                                     monkeypatch, name):  # fmt: skip
    """Packets that do not fit HOLD_BYTES: each decoder reads its segment
    from the file again, from a seek to its keyframe."""
    path = planned_media[name]
    one = _decode(path, "index", threads=1, t=40)
    monkeypatch.setattr(packets, "HOLD_BYTES", 0)
    split = _decode(path, "index", threads=3, t=40)
    assert split.decoders == 3
    _assert_same(split, one)


def test_a_segment_with_a_wanted_leading_picture_decodes_from_the_keyframe_before(planned_media):
    """An open GOP's leading pictures decode from the group before: the
    segment that owns one starts its decoder at that group's keyframe."""
    path = str(planned_media["hevc_open_gop.mkv"])
    with open_for_plan(path) as container:
        plan = plan_packets(container, video_stream(container), "index", 40,
                            Limits(path, None, None))  # fmt: skip
    index = plan.index
    segments = choose_segments(plan, 3, split_points(plan))
    assert len(segments) == 3 and segments[0].first
    own, start = index.packet[plan.unique], index.start[plan.unique]
    owners = np.zeros(len(own), dtype=np.int64)
    for s in segments:
        owned = (own >= s.begin) & (own < s.end)
        owners += owned
        assert index.packet_keyframe[s.begin] and plan.keep[s.decode_from]
        assert s.decode_from == min(s.begin, start[owned].min())
    assert (owners == 1).all()  # each frame is one segment's
    assert any(s.decode_from < s.begin for s in segments[1:])  # a wanted leading picture
    assert segments[-1].end == int(np.flatnonzero(plan.keep)[-1]) + 1


def test_a_short_clip_is_not_split(media, planned_media):
    """Below MIN_WORK_PER_DECODER, and one group of pictures at any length."""
    assert _decode(media["h264.mp4"], threads=2, t=16).decoders == 1
    assert _decode(planned_media["h264_bpyramid.mp4"], threads=2, t=40).decoders == 1
    devices_min = devices.MIN_WORK_PER_DECODER
    try:
        devices.MIN_WORK_PER_DECODER = 1
        one_group = _decode(media["long_gop.mp4"], threads=4, t=40)
        assert one_group.decoders == 1 and one_group.route == "packets"
    finally:
        devices.MIN_WORK_PER_DECODER = devices_min


def test_decoders_run_side_by_side(planned_media, split_short_plans, monkeypatch):
    """Each decoder waits at its first packet until the others are there:
    one after the other they could not all arrive (the barrier breaks)."""
    decoders = 3
    barrier = threading.Barrier(decoders, timeout=120)
    seen: dict[int, int] = {}
    lock = threading.Lock()
    decode_packet = planned.decode_packet

    def observed(codec, packet, limits):
        me = threading.get_ident()
        with lock:
            first = me not in seen
            seen.setdefault(me, id(codec))
        if first:
            barrier.wait()
        return decode_packet(codec, packet, limits)

    monkeypatch.setattr(planned, "decode_packet", observed)
    out = _decode(planned_media["looped.mp4"], "index", threads=decoders, t=40)
    assert out.decoders == decoders and out.route == "packets"
    assert len(seen) == decoders and len(set(seen.values())) == decoders  # own decoders


def test_a_split_the_decoders_disagree_with_is_decoded_by_one(planned_media, split_short_plans,
                                                              monkeypatch):  # fmt: skip
    """A decoder that started afresh and disagreed with the plan: one decoder
    decodes the whole plan again, as before the split."""
    path = planned_media["h264_bpyramid.mp4"]
    decode_segment = planned._decode_segment

    def disagree(plan, segment, *args):
        if not segment.first:
            raise CannotServe("the decoder did not output the planned frames")
        return decode_segment(plan, segment, *args)

    one = _decode(path, "index", threads=1, t=40)
    monkeypatch.setattr(planned, "_decode_segment", disagree)
    again = _decode(path, "index", threads=3, t=40)
    assert again.decoders == 1
    _assert_same(again, one)


@pytest.mark.parametrize("name", ["lying_count.mp4", "headless_gop.ts", "truncated_50.mkv"])
def test_a_file_whose_plan_is_rejected_still_decodes(media, split_short_plans, name):
    one = _decode(media[name], "index", threads=1, t=8)
    split = _decode(media[name], "index", threads=3, t=8)
    _assert_same(split, one)
    if one.route == "sequential":
        assert split.decoders == 1


# -- many frames -------------------------------------------------------------------------------


def _peak_bytes(fn):
    """``fn()`` and the most bytes Python and NumPy held while it ran (the
    libraries are loaded before)."""
    import torch  # noqa: F401 (decode_only hands out tensors)

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_thousand_frames_are_held_as_the_output_alone(long_video, threads):
    """T = 1000 of 15000 frames (96x64): the planned route allocates the
    output once and converts into it; nothing else of that size is held."""
    path = long_video["long_10min.mp4"]
    out, peak = _peak_bytes(lambda: _decode(path, "index", threads=threads, t=1000))
    assert out.route == "packets" and out.frames.shape == (1000, 3, 64, 96)
    assert peak < 1.25 * out.frames.numpy().nbytes


def test_a_thousand_frames_split_are_those_of_one_decoder(long_video):
    path = long_video["long_10min.mp4"]
    one = _decode(path, "time", threads=1, t=1000, size=32)
    split = _decode(path, "time", threads=2, t=1000, size=32)
    assert split.decoders == 2
    _assert_same(split, one)


def test_the_frame_by_frame_route_holds_the_output_once(long_video):
    """The route for files without a plan gathers the output without a
    second copy of it."""
    path = str(long_video["long_10min.mp4"])
    request = Request(path, 1000, "index", None, "cpu", 1, Limits(path, None, None))
    out, peak = _peak_bytes(lambda: decode_cpu(request, plan=False))
    assert out.route == "sequential" and out.frames.shape == (1000, 3, 64, 96)
    assert peak < 1.25 * out.frames.nbytes


def test_frames_above_the_cap_are_a_config_error(monkeypatch):
    monkeypatch.setenv(FRAMES_BYTES_ENV, str(1000 * 3 * 32 * 32 - 1))
    with pytest.raises(ConfigError, match=r"sequence_length \(1000\).*CPS_RAY_MAX_FRAMES_BYTES"):
        DecodeConfig(sequence_length=1000, input_size=32)
    DecodeConfig(sequence_length=999, input_size=32)
    DecodeConfig(sequence_length=1000)  # native size: known when the video is opened


def test_native_frames_above_the_cap_are_a_clear_decode_error(long_video, monkeypatch):
    from cps_ray import _guards

    path = long_video["long_10min.mp4"]
    monkeypatch.setattr(_guards, "MAX_FRAMES_BYTES", 999 * 3 * 64 * 96)
    with pytest.raises(DecodeError, match="1000 frames of 3 x 64 x 96 bytes") as caught:
        _decode(path, "index", t=1000)
    assert caught.value.kind == "too_large"
    assert _decode(path, "index", t=999).frames.shape[0] == 999


def test_frames_above_this_machines_memory_are_too_large(long_video, monkeypatch):
    from cps_ray import _guards

    monkeypatch.setattr(_guards, "MAX_FRAMES_BYTES", 2**62)
    monkeypatch.setattr(_guards, "_physical_memory", lambda: 3 * 64 * 96 * 10)
    with pytest.raises(DecodeError, match="this machine's memory") as caught:
        _decode(long_video["long_10min.mp4"], "index", t=11)
    assert caught.value.kind == "too_large"


def test_local_stream_gives_one_video_the_cores_of_idle_workers(long_video, monkeypatch):
    """One video, two workers: it decodes with every core (its plan split
    where they are several), and its row is the one of one worker."""
    from cps_ray import PatchStreamConfig, local_stream
    from cps_ray._devices import usable_cores

    budgets = []
    split_decoders = devices.split_decoders

    def recorded(threads, work, max_decoders):
        budgets.append(threads)
        return split_decoders(threads, work, max_decoders)

    monkeypatch.setattr(planned, "split_decoders", recorded)
    cfg = PatchStreamConfig(sequence_length=64, input_size=28, patch_size=14, k_keep=16,
                            decode_backend="cpu", process_backend="cpu")  # fmt: skip
    path = str(long_video["long_10min.mp4"])
    (two,) = local_stream([path], cfg, num_workers=2, isolation="none")
    assert budgets and set(budgets) == {usable_cores()}
    (one,) = local_stream([path], cfg, num_workers=1, isolation="none")
    assert two["error"] is None
    for column in ("patches", "meta_fields", "meta_scores", "frame_indices", "timestamps"):
        assert np.array_equal(np.asarray(two[column]), np.asarray(one[column]))
