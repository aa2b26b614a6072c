"""The ``packets`` route: decode only the packets the frames need.

From the packet index (:mod:`.packets`) the wanted frames' packets are
planned: per frame, from the keyframe its decoding starts at, every packet
that is not droppable, and its own. Those packets, copied without
re-encoding into an in-memory Matroska file (it keeps the rotation and the
colour metadata), go to torchcodec, which decodes them on the requested
device with the same resize as every route. A packet left out is one no
kept picture refers to, so the frames are bit for bit those of a full decode
(``tests/test_planned.py``); groups of pictures without a wanted frame are
left out whole, and between them torchcodec seeks, so each group decodes as
after a seek.

The route checks its own work: the decoded frames' timestamps must be the
planned ones (up to Matroska's millisecond rounding), else it hands over
(:class:`CannotServe`) to the routes that decode the file itself.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from .opening import TORCHCODEC_ERRORS, CannotServe, Request, seek_frames
from .packets import (
    PacketIndex,
    frame_positions,
    index_packets,
    nal_units,
    open_container,
    packets_to_decode,
    sequence_starts,
)

# A CRA keyframe the plan jumps to is marked BLA_W_LP: the same slice syntax
# and the same pixels, but the decoder starts a new sequence there, as after
# a seek. Without it, the picture order count would be derived across the
# jump, wrap, and put frames of two groups out of order.
_HEVC_CRA, _HEVC_BLA_W_LP = 21, 16

# Matroska stores times in milliseconds.
_TIME_SLACK_S = 1.5e-3


@dataclass(frozen=True)
class PacketPlan:
    """The packets ``strategy``'s frames need, copied into a Matroska file.

    positions: int64 ``[T]`` display positions; unique: the distinct ones,
    ascending, and inverse: ``positions = unique[inverse]``. local: each
    unique frame's position among the kept packets (the decoder's index).
    seconds: float64 timestamps of the unique frames.
    """

    positions: np.ndarray
    unique: np.ndarray
    inverse: np.ndarray
    local: np.ndarray
    seconds: np.ndarray
    num_frames: int
    kept: int
    data: bytes


def plan_packets(container, stream, path: str, strategy: str, sequence_length: int,
                 limits) -> PacketPlan:  # fmt: skip
    """Index ``stream`` and copy the packets of ``strategy``'s frames (no
    decoding). Raises :class:`CannotServe` where the plan cannot be made."""
    index = index_packets(container, stream)
    limits.check_time()
    positions = frame_positions(index, strategy, sequence_length)
    unique, inverse = np.unique(positions, return_inverse=True)
    keep = packets_to_decode(index, unique)
    data = remux(container, stream, path, index, keep)
    kept_pts = np.sort(index.packet_pts[keep])
    local = np.searchsorted(kept_pts, index.packet_pts[index.packet[unique]])
    return PacketPlan(positions, unique, inverse, local, index.pts_seconds[unique],
                      index.num_frames, int(keep.sum()), data)  # fmt: skip


def decode_plan(plan: PacketPlan, req: Request, transforms):
    """(positions, frames, timestamps, num_frames) of ``plan``'s frames,
    decoded by torchcodec from its packets. Raises :class:`CannotServe`
    where the decoder disagrees with the plan."""
    req.limits.check_time()
    try:
        decoder = req.open("exact", transforms, source=io.BytesIO(plan.data))
    except TORCHCODEC_ERRORS as err:
        raise CannotServe(f"torchcodec cannot open the planned packets: {err}") from None
    if len(decoder) != plan.kept:
        raise CannotServe("torchcodec counts the planned packets differently")
    data, pts, _ = seek_frames(decoder.get_frames_at, plan.local.tolist(), req.limits)
    offset = pts.to(torch.float64).numpy() - plan.seconds
    if np.ptp(offset) > _TIME_SLACK_S:
        raise CannotServe("the decoder output other frames than the planned ones")
    inv = torch.from_numpy(plan.inverse)
    frames = data[inv].contiguous()
    timestamps = torch.from_numpy(plan.seconds)[inv]
    return torch.from_numpy(plan.positions), frames, timestamps, plan.num_frames


def remux(container, stream, path: str, index: PacketIndex, keep: np.ndarray) -> bytes:
    """The packets ``keep`` selects (decode order) of ``stream``, as a
    Matroska file: the packets held by the index, or read again from ``path``."""
    import av

    last = int(np.flatnonzero(keep)[-1])
    starts = sequence_starts(index, keep) if index.codec == "hevc" else None
    out = io.BytesIO()
    try:
        with av.open(out, "w", format="matroska") as muxer:
            target = muxer.add_stream_from_template(stream, opaque=True)
            if index.held is not None:
                _mux(muxer, target, index.held, keep, last, starts, index)
            else:
                with open_container(path) as again:
                    source = again.streams[stream.index]
                    packets = (p for p in again.demux(source) if p.pts is not None and p.size)
                    _mux(muxer, target, packets, keep, last, starts, index)
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
    """``packet`` (HEVC) with its CRA slices marked BLA_W_LP."""
    import av

    data = bytearray(bytes(packet))
    for unit in nal_units(memoryview(data), nal_length):
        if unit[0] >> 1 & 0x3F == _HEVC_CRA:
            unit[0] = (unit[0] & 0x81) | (_HEVC_BLA_W_LP << 1)
    out = av.Packet(bytes(data))
    out.pts, out.dts, out.duration = packet.pts, packet.dts, packet.duration
    out.time_base = packet.time_base
    out.is_keyframe = packet.is_keyframe
    return out
