"""``uniform_strategy="keyframe"``: nearly uniform frames that are the cheapest
to decode, planned from the container's packets without decoding any.

PyAV demuxes the video stream once (packet timestamps and keyframe flags, in
decode order; about 12 ms for a minute of 480p H.264). A frame's *cost* is the
number of packets a decoder must decode to output it after a seek: from the
keyframe that starts its group, in decode order, up to its own packet (1 for
a keyframe; a leading picture of an open GOP counts from the keyframe before,
since a seek to its own group's keyframe cannot output it). For each of the
``T`` uniform targets (the ``index`` strategy's
``round(linspace(0, n - 1, T))``), the chosen frame is the cheapest within half
a sampling interval of the target (``|i - target| <= (n - 1) / (T - 1) / 2``),
nearer the target on equal cost: a keyframe wherever the window holds one,
as Temporal Segment Networks take one frame per segment. ``frame_indices``
and ``timestamps`` report the frames actually chosen.

PyAV is used here, and only here, because it exposes packets with their
keyframe flags without decoding (torchcodec 0.13 has no public packet index);
the pixels still come from torchcodec, so the resize policy and the devices
are those of every other strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import sampling


class NoPacketIndex(Exception):
    """The container's packets cannot be listed (PyAV cannot open or demux
    it, or it has no timestamps): the caller decodes the ``index`` frames."""


@dataclass(frozen=True)
class PacketIndex:
    """The video packets of one file, in display order.

    pts_seconds: float64 ``[n]`` presentation times; keyframe: bool ``[n]``;
    cost: int64 ``[n]`` packets decoded to output each frame after a seek.
    """

    pts_seconds: np.ndarray
    keyframe: np.ndarray
    cost: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.pts_seconds)


def read_index(path: str) -> PacketIndex:
    """Demux ``path``'s first video stream (no decoding). Raises
    :class:`NoPacketIndex` where that is impossible."""
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as err:
        raise NoPacketIndex(f"PyAV cannot open it: {err}") from None
    with container:
        if not container.streams.video:
            raise NoPacketIndex("no video stream")
        stream = container.streams.video[0]
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue  # flush packets, or packets without a frame
                pts.append(packet.pts)
                keys.append(bool(packet.is_keyframe))
        except av.error.FFmpegError as err:
            if not pts:
                raise NoPacketIndex(f"cannot demux it: {err}") from None
        time_base = float(stream.time_base) if stream.time_base else 0.0
    if not pts or time_base <= 0:
        raise NoPacketIndex("no packet timestamps")
    decode_pts = np.asarray(pts, dtype=np.int64)
    decode_keys = np.asarray(keys, dtype=bool)
    order = np.arange(len(pts))
    # Cost in decode order: packets since the keyframe that starts the group,
    # this one included. A leading picture (shown before its group's keyframe,
    # an open GOP's RASL frame) needs the group before: a seek lands on the
    # keyframe and the decoder drops it, so it costs from the keyframe before.
    group_key = np.maximum.accumulate(np.where(decode_keys, order, -1))
    key_positions = np.flatnonzero(decode_keys)
    rank = np.searchsorted(key_positions, group_key)  # which keyframe starts the group
    previous_key = np.where(rank > 0, key_positions[np.maximum(rank - 1, 0)], -1)
    leading = (group_key >= 0) & (decode_pts < decode_pts[np.maximum(group_key, 0)])
    start = np.where(leading, previous_key, group_key)
    unreachable = 1 << 30  # before any keyframe: no seek reaches it
    decode_cost = np.where(start >= 0, order - start + 1, unreachable)
    display = np.argsort(decode_pts, kind="stable")
    return PacketIndex(decode_pts[display] * time_base, decode_keys[display], decode_cost[display])


def choose_frames(index: PacketIndex, sequence_length: int) -> np.ndarray:
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
