"""One video's packet plan split into segments that decoders decode side by side.

A segment owns the wanted frames whose packets lie between two kept
keyframes (decode order). Its decoder starts afresh -- a decoder of its own,
an HEVC CRA marked BLA, exactly as after the plan's own jumps -- at the
earliest keyframe its frames' decoding starts from
(:func:`.packets.packets_to_decode`): its first keyframe, or, where a wanted
leading picture of an open GOP is among its frames, the keyframe before,
whose kept packets it decodes again (the droppable ones left out). So every
frame it outputs is decoded as the one-decoder plan decodes it, and only the
frames it owns are taken from it.

The segments balance the planned work: per kept packet one unit, per wanted
frame one more (its conversion costs about as much as decoding a packet).
How many there are is :func:`cps_ray._devices.split_decoders`'s answer for
the video's threads; :mod:`.planned` decodes them on threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """The frames whose packets lie in ``[begin, end)`` (decode positions),
    decoded from ``decode_from`` (a kept keyframe, ``<= begin``) by a decoder
    that starts afresh there unless it is the ``first`` segment."""

    begin: int
    end: int
    decode_from: int
    first: bool


def split_points(plan) -> np.ndarray:
    """int64 decode positions a segment may begin at: the kept keyframes after
    the plan's first kept packet."""
    points = plan.keep & plan.index.packet_keyframe
    points[: int(np.flatnonzero(plan.keep)[0]) + 1] = False
    return np.flatnonzero(points)


def planned_work(plan) -> np.ndarray:
    """int64 ``[m]``: the work at each decode position (1 per kept packet,
    1 more per wanted frame's packet)."""
    work = plan.keep.astype(np.int64)
    work[plan.index.packet[plan.unique]] += 1
    return work


def choose_segments(plan, count: int, points: np.ndarray | None = None) -> list[Segment]:
    """At most ``count`` segments covering the plan, begun at
    :func:`split_points` so that each owns about the same planned work."""
    kept = np.flatnonzero(plan.keep)
    first, end = int(kept[0]), int(kept[-1]) + 1
    points = split_points(plan) if points is None else points
    bounds: list[int] = []
    if count > 1 and len(points):
        work = planned_work(plan)
        done = np.cumsum(work)
        before = done[points] - work[points]  # the work before each point
        for k in range(1, count):
            i = int(np.argmin(np.abs(before - done[-1] * k / count)))
            if not bounds or points[i] > bounds[-1]:
                bounds.append(int(points[i]))
    own = plan.index.packet[plan.unique]
    start = plan.index.start[plan.unique]
    segments = []
    for i, (b, e) in enumerate(zip([first, *bounds], [*bounds, end], strict=True)):
        owned = (own >= b) & (own < e)
        decode_from = min(b, int(start[owned].min())) if owned.any() else b
        segments.append(Segment(b, e, decode_from, i == 0))
    return segments


def segment_packets(plan, segment: Segment) -> np.ndarray:
    """bool ``[m]``: the packets ``segment``'s decoder decodes: the kept ones
    from ``decode_from`` to ``end``, but for the droppable ones before
    ``begin`` (pictures of frames another segment owns, no reference)."""
    mask = np.zeros(len(plan.keep), dtype=bool)
    mask[segment.decode_from : segment.end] = plan.keep[segment.decode_from : segment.end]
    mask[segment.decode_from : segment.begin] &= ~plan.index.droppable[
        segment.decode_from : segment.begin
    ]
    return mask
