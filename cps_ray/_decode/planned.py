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


def decode_planned(req: Request, transforms, strategy: str):
    """(positions, frames, timestamps, num_frames) of ``strategy``'s frames."""
    with open_container(req.path) as container:
        index = index_packets(container)
        req.limits.check_time()
        positions = frame_positions(index, strategy, req.sequence_length)
        uniq, inverse = np.unique(positions, return_inverse=True)
        keep = packets_to_decode(index, uniq)
        data = remux(container, req.path, index, keep)
    req.limits.check_time()
    try:
        decoder = req.open("exact", transforms, source=io.BytesIO(data))
    except TORCHCODEC_ERRORS as err:
        raise CannotServe(f"torchcodec cannot open the planned packets: {err}") from None
    if len(decoder) != int(keep.sum()):
        raise CannotServe("torchcodec counts the planned packets differently")
    kept_pts = np.sort(index.packet_pts[keep])
    local = np.searchsorted(kept_pts, index.packet_pts[index.packet[uniq]])
    data_, pts, _ = seek_frames(decoder.get_frames_at, local.tolist(), req.limits)
    wanted = index.pts_seconds[uniq]
    offset = pts.to(torch.float64).numpy() - wanted
    if np.ptp(offset) > _TIME_SLACK_S:
        raise CannotServe("the decoder output other frames than the planned ones")
    inv = torch.from_numpy(inverse)
    frames = data_[inv].contiguous()
    return torch.from_numpy(positions), frames, torch.from_numpy(wanted)[inv], index.num_frames


def remux(container, path: str, index: PacketIndex, keep: np.ndarray) -> bytes:
    """The packets ``keep`` selects (decode order) of ``container``'s first
    video stream, as a Matroska file: the packets held by the index, or read
    again from ``path``."""
    import av

    last = int(np.flatnonzero(keep)[-1])
    starts = sequence_starts(index, keep) if index.codec == "hevc" else None
    out = io.BytesIO()
    try:
        with av.open(out, "w", format="matroska") as muxer:
            stream = muxer.add_stream_from_template(container.streams.video[0], opaque=True)
            if index.held is not None:
                _mux(muxer, stream, index.held, keep, last, starts, index)
            else:
                with open_container(path) as again:
                    source = again.streams.video[0]
                    packets = (p for p in again.demux(source) if p.pts is not None and p.size)
                    _mux(muxer, stream, packets, keep, last, starts, index)
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
