"""The ``packets`` route: decode only the packets the frames need.

From the packet index (:mod:`.packets`) the wanted frames' packets are
planned: per frame, from the keyframe its decoding starts at, every packet
that is not droppable, and its own. A packet left out is one no kept picture
refers to, and groups of pictures without a wanted frame are left out whole.

On the CPU, the planned packets (held by the index, or read again when they
did not fit) go straight to the stream's own PyAV decoder, and each wanted
frame is converted as it comes out (:class:`.resize.FrameConverter`). Where
the plan jumps over packets a decoder would need, the decoder starts afresh
exactly as after a seek: it is drained, its buffers flushed, and an HEVC CRA
keyframe is marked BLA. So the frames are bit for bit those of decoding every
frame in order (``tests/test_planned.py``). On the GPU the same packets are
copied into an in-memory Matroska file for torchcodec (:func:`remux`).

The route checks its own work: every wanted frame's timestamp must come out
of the decoder, else it hands over (:class:`CannotServe`) to the routes that
decode the file itself.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .opening import CannotServe, Request, decode_packet, drain, open_container, set_threads
from .packets import (
    PacketIndex,
    frame_positions,
    index_packets,
    nal_units,
    packets_to_decode,
    sequence_starts,
)

# A CRA keyframe the plan jumps to is marked BLA_W_LP: the same slice syntax
# and the same pixels, but the decoder starts a new sequence there, as after
# a seek. Without it, the picture order count would be derived across the
# jump, wrap, and put frames of two groups out of order.
_HEVC_CRA, _HEVC_BLA_W_LP = 21, 16


@dataclass(frozen=True)
class PacketPlan:
    """The packets ``strategy``'s frames need.

    positions: int64 ``[T]`` display positions; unique: the distinct ones,
    ascending, and inverse: ``positions = unique[inverse]``. pts: int64
    timestamps (stream time base) of the unique frames, seconds: the same in
    float64 seconds. keep: bool ``[m]``, the packets to decode (decode order);
    starts: bool ``[m]``, where the decoder must start afresh.
    """

    positions: np.ndarray
    unique: np.ndarray
    inverse: np.ndarray
    pts: np.ndarray
    seconds: np.ndarray
    keep: np.ndarray
    starts: np.ndarray
    index: PacketIndex

    @property
    def num_frames(self) -> int:
        return self.index.num_frames

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


def plan_packets(container, stream, strategy: str, sequence_length: int, limits) -> PacketPlan:
    """Index ``stream`` and plan the packets of ``strategy``'s frames (no
    decoding). Raises :class:`CannotServe` where the plan cannot be made."""
    index = index_packets(container, stream)
    limits.check_time()
    positions = frame_positions(index, strategy, sequence_length)
    unique, inverse = np.unique(positions, return_inverse=True)
    keep = packets_to_decode(index, unique)
    pts = index.packet_pts[index.packet[unique]]
    return PacketPlan(positions, unique, inverse, pts, index.pts_seconds[unique], keep,
                      sequence_starts(index, keep), index)  # fmt: skip


def decode_plan(plan: PacketPlan, stream, req: Request, convert):
    """(positions, frames, timestamps, num_frames) of ``plan``'s frames,
    decoded by PyAV on the CPU: frames uint8 ``[T, 3, H, W]`` made by
    ``convert`` (a :class:`.resize.FrameConverter`), the rest NumPy.
    ``stream``: the indexed stream, whose container is still open.
    Raises :class:`CannotServe` where the decoder disagrees with the plan."""
    req.limits.check_time()
    if plan.index.held is not None:
        return _decode_packets(plan, stream, plan.index.held, req, convert)
    with open_container(req.path) as again:  # the packets did not fit HOLD_BYTES
        source = again.streams[stream.index]
        packets = (p for p in again.demux(source) if p.pts is not None and p.size)
        return _decode_packets(plan, source, packets, req, convert)


def _decode_packets(plan: PacketPlan, stream, packets, req: Request, convert):
    import av

    codec = stream.codec_context
    set_threads(codec, req.num_threads)
    slot_of = {int(p): i for i, p in enumerate(plan.pts)}
    frames: np.ndarray | None = None
    done = np.zeros(len(plan.pts), dtype=bool)

    def take(decoded) -> None:
        nonlocal frames
        for frame in decoded:
            slot = slot_of.get(frame.pts)
            if slot is None or done[slot]:
                continue
            if frames is None:
                shape = convert.output_shape(frame.rotation)
                frames = np.empty((len(plan.pts), *shape), dtype=np.uint8)
            convert(frame, frames[slot])
            done[slot] = True

    hevc = plan.index.codec == "hevc"
    last = int(np.flatnonzero(plan.keep)[-1])
    for position, packet in enumerate(_planned(plan, packets, last)):
        if packet is None:
            continue
        req.limits.check_time()
        if plan.starts[position]:  # as after a seek
            take(drain(codec, req.limits))
            codec.flush_buffers()
            if hevc:
                packet = _as_sequence_start(packet, plan.index.nal_length)
        try:
            take(decode_packet(codec, packet, req.limits))
        except av.error.FFmpegError as err:
            raise CannotServe(f"the decoder rejected a planned packet: {err}") from None
    take(drain(codec, req.limits))
    if not done.all():
        raise CannotServe("the decoder did not output the planned frames")
    if np.array_equal(plan.inverse, np.arange(len(plan.inverse))):  # each frame once, in order
        return plan.positions, frames, plan.seconds, plan.num_frames
    return plan.positions, frames[plan.inverse], plan.seconds[plan.inverse], plan.num_frames


def _planned(plan: PacketPlan, packets, last: int):
    """``packets`` (decode order) with those the plan leaves out as None,
    up to the last kept one."""
    for position, packet in enumerate(packets):
        yield packet if plan.keep[position] else None
        if position == last:
            return
    raise CannotServe("the file gave fewer packets on a second read")


def remux(container, stream, path: str, plan: PacketPlan) -> bytes:
    """The planned packets (decode order) of ``stream``, as a Matroska file
    for torchcodec on the GPU: the packets held by the index, or read again
    from ``path``."""
    import av

    last = int(np.flatnonzero(plan.keep)[-1])
    starts = plan.starts if plan.index.codec == "hevc" else None
    out = io.BytesIO()
    try:
        with av.open(out, "w", format="matroska") as muxer:
            target = muxer.add_stream_from_template(stream, opaque=True)
            if plan.index.held is not None:
                _mux(muxer, target, plan.index.held, plan.keep, last, starts, plan.index)
            else:
                with open_container(path) as again:
                    source = again.streams[stream.index]
                    packets = (p for p in again.demux(source) if p.pts is not None and p.size)
                    _mux(muxer, target, packets, plan.keep, last, starts, plan.index)
    except (av.error.FFmpegError, ValueError) as err:  # ValueError: a codec Matroska lacks
        raise CannotServe(f"cannot copy the planned packets: {err}") from None
    return out.getvalue()


def _mux(muxer, stream, packets, keep, last, starts, index: PacketIndex) -> None:
    for position, packet in enumerate(packets):
        if keep[position]:
            if starts is not None and starts[position]:
                packet = _as_sequence_start(packet, index.nal_length)
            packet.stream = stream
            muxer.mux(packet)
        if position == last:
            return
    raise CannotServe("the file gave fewer packets on a second read")


def _as_sequence_start(packet, nal_length: int):
    """``packet`` (HEVC) with its CRA slices marked BLA_W_LP, in a new packet.

    Its bytes live in a buffer FFmpeg allocated (``av.Packet(size)``): a
    packet made from Python bytes is freed through a callback that takes the
    GIL, and a decoder's frame thread that drops the last reference to it
    while the codec is being closed under the GIL deadlocks.
    """
    import av

    out = av.Packet(packet.size)
    data = memoryview(out)
    data[:] = memoryview(packet)
    for unit in nal_units(data, nal_length):
        if unit[0] >> 1 & 0x3F == _HEVC_CRA:
            unit[0] = (unit[0] & 0x81) | (_HEVC_BLA_W_LP << 1)
    out.pts, out.dts, out.duration = packet.pts, packet.dts, packet.duration
    out.time_base = packet.time_base
    out.is_keyframe = packet.is_keyframe
    return out
