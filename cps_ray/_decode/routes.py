"""The ``sequential`` route of the CPU: for files the packet plan
(:mod:`.planned`) cannot serve -- PyAV cannot list their packets (two
packets share a timestamp, no keyframe, an image read by FFmpeg's image2
demuxer), the header lies about the frame count, the file is truncated or
damaged, or the decoder disagrees with the plan.

It decodes the file frame by frame from the start, with the same PyAV
decoder and the same conversion as the plan, and keeps the chosen frames:
no seek is trusted (MPEG-TS and MPEG-PS seek badly), so the frames are
exactly those of a full decode, as the plan's are. The first pass keeps the
frames the header's frame count (or duration) points at; where the true
count differs, a second pass keeps the right ones. At most two passes, and
never more than ``T + 1`` converted frames held at once: they are converted
into one buffer, which becomes the output. It runs one decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import _sampling as sampling
from .opening import CannotServe, Request, decoded_frames, open_container, set_threads


@dataclass(frozen=True)
class HeaderHints:
    """What the header says, to guess the frames on the first pass:
    num_frames (0: unknown), begin and end of the stream in seconds."""

    num_frames: int
    begin_seconds: float
    end_seconds: float


def header_hints(container, stream) -> HeaderHints:
    """The :class:`HeaderHints` of ``stream`` (nothing decoded)."""
    tb = float(stream.time_base) if stream.time_base else 0.0
    begin = stream.start_time * tb if stream.start_time is not None else 0.0
    if stream.duration and tb:
        end = begin + stream.duration * tb
    elif container.duration:
        end = begin + container.duration / 1e6
    else:
        end = begin
    count = stream.frames or 0
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    if count <= 0 and rate > 0 and end > begin:
        count = round((end - begin) * rate)
    return HeaderHints(int(count), float(begin), float(end))


Keep = Callable[[int, float, "float | None"], bool]


class _Kept:
    """The frames a walk keeps, converted into one uint8 buffer of
    ``capacity`` slots in the order they come (into arrays of their own
    past it), with their times: the buffer becomes the output."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buffer: np.ndarray | None = None
        self.slot: dict[int, int | None] = {}
        self.frames: dict[int, np.ndarray] = {}
        self.seconds: dict[int, float] = {}

    def add(self, pos: int, frame, seconds: float, convert) -> None:
        if self.buffer is None:
            shape = convert.output_shape(frame.rotation)
            self.buffer = np.empty((self.capacity, *shape), dtype=np.uint8)
        n = len(self.frames)
        self.slot[pos] = n if n < self.capacity else None
        self.frames[pos] = convert(frame, self.buffer[n] if n < self.capacity else None)
        self.seconds[pos] = seconds

    def gather(self, decode_pos: np.ndarray) -> np.ndarray:
        """uint8 ``[T, 3, H, W]`` of the frames at ``decode_pos``: the buffer
        itself, filled in place from its end, where they were kept in that
        order (frames come out in display order, which sampling follows);
        else a copy."""
        t = len(decode_pos)
        slots = [self.slot[int(p)] for p in decode_pos]
        in_place = (t <= self.capacity and None not in slots
                    and all(s <= i for i, s in enumerate(slots))
                    and all(a <= b for a, b in zip(slots, slots[1:])))  # fmt: skip
        if not in_place:
            return np.stack([self.frames[int(p)] for p in decode_pos])
        for i in range(t - 1, -1, -1):  # each slot read before it is written
            if slots[i] != i:
                self.buffer[i] = self.buffer[slots[i]]
        return self.buffer[:t]


def _walk(req: Request, keep: Keep, convert):
    """Decode every frame once; convert and hold those ``keep(pos, pts, next_pts)``
    wants (at most ``T + 1``; see :class:`_Kept`). Returns (kept, every pts,
    last duration)."""
    kept = _Kept(req.sequence_length + 1)
    with open_container(req.path) as container:
        stream = container.streams[req.stream_index]
        codec = stream.codec_context
        set_threads(codec, req.num_threads)
        tb = float(stream.time_base) if stream.time_base else 0.0
        all_pts: list[float] = []
        prev = None  # (pos, frame, seconds)
        packets = container.demux(stream)
        for pos, frame in enumerate(decoded_frames(codec, packets, req.limits)):
            seconds = _seconds(frame, tb, all_pts)
            if prev is not None and keep(prev[0], prev[2], seconds):
                kept.add(prev[0], prev[1], prev[2], convert)
            prev = (pos, frame, seconds)
            all_pts.append(seconds)
        if prev is not None and keep(prev[0], prev[2], None):
            kept.add(prev[0], prev[1], prev[2], convert)
        last_duration = float(prev[1].duration or 0) * tb if prev is not None else 0.0
    return kept, np.asarray(all_pts, dtype=np.float64), last_duration


def _seconds(frame, tb: float, before: list[float]) -> float:
    """A frame's presentation time; without one (raw streams), the decode
    timestamp, else one tick after the frame before."""
    ticks = frame.pts if frame.pts is not None else frame.dts
    if ticks is not None and tb:
        return ticks * tb
    return before[-1] + (tb or 1e-3) if before else 0.0


def decode_sequential(req: Request, strategy: str, hints: HeaderHints, convert):
    """(positions, frames, timestamps, num_frames) of ``strategy``'s frames
    (``index``, ``time`` or ``auto``) by decoding ``req``'s stream frame by
    frame: positions int64 ``[T]``, frames uint8 ``[T, 3, H, W]`` made by
    ``convert``, timestamps float64 ``[T]`` seconds.

    Raises :class:`CannotServe` where no frame can be decoded.
    """
    t = req.sequence_length
    keep = sampling.walk_guess(strategy, hints.begin_seconds, hints.end_seconds,
                               hints.num_frames, t)  # fmt: skip
    kept, all_pts, last_duration = _walk(req, keep, convert)
    if len(all_pts) == 0:
        raise CannotServe("no frame could be decoded")
    n = len(all_pts)
    ranks, decode_pos = sampling.walked_positions(all_pts, last_duration, strategy, t)
    wanted = set(decode_pos.tolist())
    if not wanted.issubset(kept.frames):
        # The header's count was wrong: walk again for exactly the wanted
        # frames (the first pass's are let go: T held at most).
        del kept
        kept, _, _ = _walk(req, lambda pos, pts, nxt: pos in wanted, convert)
        if not wanted.issubset(kept.frames):
            raise CannotServe("the file decoded differently on a second pass")
    timestamps = np.array([kept.seconds[int(p)] for p in decode_pos], dtype=np.float64)
    return ranks.astype(np.int64), kept.gather(decode_pos), timestamps, n
