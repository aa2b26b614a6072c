"""The packets of a video, listed without decoding, and the plan of which of
them to decode for a set of frames.

PyAV demuxes the video stream once and records per packet, in decode
order: its timestamp, its keyframe flag and, for H.264 and HEVC, whether it
is *droppable* -- a picture no later picture refers to, read from its NAL
unit headers:

- H.264: every slice has ``nal_ref_idc == 0`` and the packet carries no
  parameter set;
- HEVC: every slice is a sub-layer non-reference picture (``TRAIL_N``,
  ``TSA_N``, ``STSA_N``, ``RADL_N``, ``RASL_N``) of the highest temporal
  layer in the stream, and the packet carries no parameter set.

Other codecs (VP8, VP9, AV1, MPEG-2, MPEG-4) mark no packet droppable: their
plans skip whole groups of pictures only.

A frame can be output after a seek by decoding, from the keyframe that starts
its group (in decode order) up to its own packet, every packet that is not
droppable, then its own. A leading picture of an open GOP (shown before its
group's keyframe, decoded after it) needs the group before, so its decoding
starts at the keyframe before. Packets before the first keyframe, and the
leading pictures of the first keyframe, cannot be decoded at all: they are
not frames of the video here, as they are not for ``ffmpeg -i``.

The packets held here are the ones the CPU decodes (see :mod:`.planned`):
the file is read once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .. import _sampling as sampling
from .opening import CannotOpen, CannotServe, open_container, video_stream

# Packets held from the index pass for the decode, so that a file is read
# once; past this many bytes they are read again for the packets planned.
# Each held packet costs about 1 KiB besides its payload.
HOLD_BYTES = 32 * 2**20
_PACKET_OVERHEAD = 1024

_H264_SLICES = frozenset({1, 5})
_H264_NEVER_DROP = frozenset({7, 8, 13, 14, 15, 20, 21})  # parameter sets, extensions
_HEVC_NONREF = frozenset({0, 2, 4, 6, 8, 10, 12, 14})
_HEVC_PARAMETER_SETS = frozenset({32, 33, 34})


class NoPacketIndex(CannotServe):
    """The container's packets cannot be listed (PyAV cannot open or demux
    it, it has no timestamps, or two packets share one): another route
    decodes the file."""


@dataclass(frozen=True)
class PacketIndex:
    """The video packets of one file.

    Frames (display order, decodable ones only, ``n`` of them):
    pts_seconds float64, keyframe bool, cost int64 (packets decoded to output
    the frame after a seek), packet int64 (its packet's decode position),
    start int64 (the decode position decoding starts from).

    Packets (decode order, all ``m`` of them): packet_pts int64 (stream time
    base), packet_keyframe bool, droppable bool.

    nal_length: bytes of the NAL unit length prefix of H.264/HEVC packets
    (0: Annex B start codes; None: another codec).
    """

    pts_seconds: np.ndarray
    keyframe: np.ndarray
    cost: np.ndarray
    packet: np.ndarray
    start: np.ndarray
    packet_pts: np.ndarray
    packet_keyframe: np.ndarray
    droppable: np.ndarray
    time_base: Fraction
    last_duration: float  # seconds the last frame is shown
    codec: str
    nal_length: int | None
    stream_index: int = 0  # the container's stream these packets are from
    # The packets themselves, in decode order, when they fit HOLD_BYTES.
    held: list | None = field(default=None, compare=False, repr=False)

    @property
    def num_frames(self) -> int:
        return len(self.pts_seconds)


def read_index(path: str) -> PacketIndex:
    """The packet index of ``path``'s video stream (no packets held)."""
    try:
        with open_container(path) as container:
            stream = video_stream(container)
            if stream is None:
                raise NoPacketIndex("no video stream")
            return index_packets(container, stream, hold_bytes=0)
    except CannotOpen as err:
        raise NoPacketIndex(f"PyAV cannot open it: {err.reason}") from None


def index_packets(container, stream, *, hold_bytes: int | None = None) -> PacketIndex:
    """Demux ``stream`` of ``container`` (no decoding), holding the packets
    while they fit ``hold_bytes`` (default :data:`HOLD_BYTES`). Raises
    :class:`NoPacketIndex` where that is impossible."""
    import av

    if hold_bytes is None:
        hold_bytes = HOLD_BYTES

    if stream.codec_context is None:
        raise NoPacketIndex("no decoder for the stream's codec")
    codec = stream.codec_context.name
    nal_length = _nal_length_size(codec, stream.codec_context.extradata)
    pts: list[int] = []
    keys: list[bool] = []
    kinds: list[int] = []  # per packet: -1 keep, else the temporal layer of a droppable one
    held: list | None = [] if hold_bytes > 0 else None
    held_bytes = 0
    last_duration = 0
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue  # flush packets, or packets without a frame
            pts.append(packet.pts)
            keys.append(bool(packet.is_keyframe))
            kinds.append(_droppable_layer(codec, packet, nal_length))
            last_duration = packet.duration or 0
            if held is not None:
                held_bytes += packet.size + _PACKET_OVERHEAD
                held.append(packet)
                if held_bytes > hold_bytes:
                    held = None
    except av.error.FFmpegError as err:
        if not pts:
            raise NoPacketIndex(f"cannot demux it: {err}") from None
        held = None  # a damaged tail: read again rather than trust what was held
    time_base = Fraction(stream.time_base) if stream.time_base else Fraction(0)
    if not pts or time_base <= 0:
        raise NoPacketIndex("no packet timestamps")
    return _build(np.asarray(pts, dtype=np.int64), np.asarray(keys, dtype=bool),
                  np.asarray(kinds, dtype=np.int64), time_base, last_duration, codec,
                  nal_length, stream.index, held)  # fmt: skip


def _build(decode_pts, decode_keys, kinds, time_base, last_duration, codec, nal_length,
           stream_index, held):  # fmt: skip
    if len(np.unique(decode_pts)) != len(decode_pts):
        raise NoPacketIndex("two packets share a timestamp")
    if not decode_keys.any():
        raise NoPacketIndex("no keyframe")
    # Droppable: a non-reference picture of the highest temporal layer.
    droppable = (kinds >= 0) & (kinds == kinds.max())
    order = np.arange(len(decode_pts))
    group_key = np.maximum.accumulate(np.where(decode_keys, order, -1))
    key_positions = np.flatnonzero(decode_keys)
    rank = np.searchsorted(key_positions, group_key)  # which keyframe starts the group
    previous_key = np.where(rank > 0, key_positions[np.maximum(rank - 1, 0)], -1)
    leading = (group_key >= 0) & (decode_pts < decode_pts[np.maximum(group_key, 0)])
    start = np.where(leading, previous_key, group_key)
    decodable = np.flatnonzero(start >= 0)
    # Cost: packets decoded from the start up to this one, droppable ones skipped.
    kept_before = np.cumsum(~droppable) - (~droppable)  # non-droppable packets before each
    cost = kept_before - kept_before[np.maximum(start, 0)] + 1
    display = decodable[np.argsort(decode_pts[decodable], kind="stable")]
    tb = float(time_base)
    if last_duration <= 0 and len(display) > 1:
        last_duration = int(np.median(np.diff(decode_pts[display][-9:])))
    return PacketIndex(
        pts_seconds=decode_pts[display] * tb,
        keyframe=decode_keys[display],
        cost=cost[display],
        packet=display,
        start=start[display],
        packet_pts=decode_pts,
        packet_keyframe=decode_keys,
        droppable=droppable,
        time_base=time_base,
        last_duration=max(last_duration, 0) * tb,
        codec=codec,
        nal_length=nal_length,
        stream_index=stream_index,
        held=held,
    )


def _nal_length_size(codec: str, extradata: bytes | None) -> int | None:
    """Bytes of each NAL unit's length prefix (avcC/hvcC), 0 for Annex B
    start codes, None for codecs whose packets are not read here."""
    if codec not in ("h264", "hevc"):
        return None
    extra = bytes(extradata or b"")
    if codec == "h264" and len(extra) > 4 and extra[0] == 1:
        return (extra[4] & 3) + 1
    if codec == "hevc" and len(extra) > 22 and extra[0] == 1:
        return (extra[21] & 3) + 1
    return 0


def nal_units(data: memoryview, length_size: int):
    """The NAL units of one packet (without their prefixes)."""
    if length_size:
        i, n = 0, len(data)
        while i + length_size <= n:
            size = int.from_bytes(data[i : i + length_size], "big")
            i += length_size
            if size <= 0 or i + size > n:
                raise ValueError("bad NAL length")
            yield data[i : i + size]
            i += size
        return
    raw = data.tobytes()
    starts = []
    i = raw.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = raw.find(b"\x00\x00\x01", i + 3)
    for a, b in zip(starts, starts[1:] + [len(raw) + 3], strict=True):
        yield data[a : b - 3]


def _droppable_layer(codec: str, packet, length_size: int | None) -> int:
    """-1 if ``packet`` must be decoded, else the temporal layer of its
    non-reference picture (0 for H.264)."""
    if length_size is None:
        return -1
    try:
        units = list(nal_units(memoryview(packet), length_size))
    except ValueError:
        return -1
    layer, slices = -1, 0
    for unit in units:
        if len(unit) < 2:
            continue
        if codec == "h264":
            kind, ref = unit[0] & 0x1F, unit[0] >> 5 & 3
            if kind in _H264_NEVER_DROP:
                return -1
            if kind in _H264_SLICES:
                if ref:
                    return -1
                slices, layer = slices + 1, 0
        else:
            kind, tid = unit[0] >> 1 & 0x3F, (unit[1] & 7) - 1
            if kind in _HEVC_PARAMETER_SETS:
                return -1
            if kind < 32:
                if kind not in _HEVC_NONREF or (layer >= 0 and tid != layer):
                    return -1
                slices, layer = slices + 1, tid
    return layer if slices else -1


def choose_keyframes(index: PacketIndex, sequence_length: int) -> np.ndarray:
    """int64 ``[T]`` display positions: per uniform target, the cheapest frame
    within half a sampling interval of it (nearer the target on equal cost)."""
    n = index.num_frames
    targets = sampling.index_positions(n, sequence_length)
    half = (n - 1) / max(sequence_length - 1, 1) / 2
    chosen = np.empty(sequence_length, dtype=np.int64)
    for j, target in enumerate(targets):
        lo = max(0, int(np.ceil(target - half)))
        hi = min(n - 1, int(np.floor(target + half)))
        window = np.arange(lo, hi + 1)
        # Lexicographic: lowest cost, then nearest the target, then earliest.
        best = np.lexsort((window, np.abs(window - target), index.cost[window]))[0]
        chosen[j] = window[best]
    return chosen


def frame_positions(index: PacketIndex, strategy: str, sequence_length: int) -> np.ndarray:
    """int64 ``[T]`` display positions of ``strategy``'s frames."""
    if strategy == "keyframe":
        return choose_keyframes(index, sequence_length)
    if strategy == "time":
        begin = index.pts_seconds[0]
        end = index.pts_seconds[-1] + index.last_duration
        targets = sampling.time_targets(begin, end, sequence_length)
        targets = np.minimum(targets, index.pts_seconds[-1])
        return sampling.assign_by_time(targets, index.pts_seconds)
    return sampling.index_positions(index.num_frames, sequence_length)


def packets_to_decode(index: PacketIndex, positions: np.ndarray) -> np.ndarray:
    """bool ``[m]`` in decode order: the packets that output the frames at
    display ``positions`` -- from each one's start, every packet that is not
    droppable, and the frame's own. Groups that hold no wanted frame are
    left out whole."""
    keep = np.zeros(len(index.packet_pts), dtype=bool)
    for p in np.unique(positions):
        first, own = int(index.start[p]), int(index.packet[p])
        keep[first:own] |= ~index.droppable[first:own]
        keep[own] = True
    return keep


def sequence_starts(index: PacketIndex, keep: np.ndarray) -> np.ndarray:
    """bool ``[m]``: the kept keyframes the plan jumps to over packets a
    decoder would need (a group left out, or the rest of one). There the
    decoder must start afresh, as after a seek: a picture order count that
    wrapped over the jump would otherwise put the frames out of order
    (HEVC's CRA keyframes; H.264's IDR keyframes start afresh by themselves)."""
    kept = np.flatnonzero(keep)
    needed_before = np.cumsum(~index.droppable) - (~index.droppable)
    cur, nxt = kept[:-1], kept[1:]
    skipped = needed_before[nxt] - needed_before[cur] - (~index.droppable[cur]) > 0
    starts = np.zeros(len(keep), dtype=bool)
    starts[nxt[skipped & index.packet_keyframe[nxt]]] = True
    return starts
