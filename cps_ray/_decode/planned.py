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

A long plan is split into segments that start at keyframes
(:mod:`.segments`), each decoded on a thread of its own by a decoder and a
converter of its own: PyAV releases the GIL while FFmpeg decodes
(``avcodec_send_packet``, ``avcodec_receive_frame``) and while swscale
converts (``sws_scale_frame``), so the decoders run side by side. How many
is :func:`cps_ray._devices.split_decoders`'s rule. Every decoder converts
its frames straight into the one output array: nothing else of the output's
size is held.

The route checks its own work: every wanted frame's timestamp must come out
of the decoder, else it hands over (:class:`CannotServe`) to the routes that
decode the file itself.
"""

from __future__ import annotations

import contextlib
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .._devices import split_decoders
from .opening import (
    CannotServe,
    Request,
    decode_packet,
    drain,
    open_container,
    open_for_plan,
    set_threads,
)
from .packets import (
    PacketIndex,
    frame_positions,
    index_packets,
    nal_units,
    packets_to_decode,
    sequence_starts,
)
from .segments import Segment, choose_segments, planned_work, segment_packets, split_points

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


def decode_plan(plan: PacketPlan, stream, req: Request, converter):
    """(positions, frames, timestamps, num_frames, decoders) of ``plan``'s
    frames, decoded by PyAV on the CPU: frames uint8 ``[T, 3, H, W]`` made by
    ``converter(threads)`` (a new :class:`.resize.FrameConverter` per
    decoder), the rest NumPy; ``decoders``: how many decoded side by side.
    ``stream``: the indexed stream, whose container is still open.

    ``req.num_threads`` are spent by :func:`cps_ray._devices.split_decoders`:
    a long plan is split into segments (:mod:`.segments`), each decoded on a
    thread by a decoder of its own. A split whose decoder disagrees with the
    plan is tried again by one decoder. Raises :class:`CannotServe` where
    the decoder disagrees with the plan."""
    req.limits.check_time()
    points = split_points(plan)
    work = int(planned_work(plan).sum())
    decoders, _ = split_decoders(req.num_threads, work, len(points) + 1)
    fresh = True  # the stream's own decoder has decoded nothing yet
    if decoders > 1:
        segments = choose_segments(plan, decoders, points)
        decoders, threads = split_decoders(req.num_threads, work, len(segments))
        if decoders > 1:
            try:
                return _decode_segments(plan, stream, req, converter, segments, threads, fresh)
            except CannotServe:
                fresh = False  # a decoder that started afresh disagreed: one decoder tries
    whole = choose_segments(plan, 1)
    return _decode_segments(plan, stream, req, converter, whole, req.num_threads, fresh)


def _decode_segments(plan: PacketPlan, stream, req: Request, converter, segments, threads: int,
                     reuse: bool):  # fmt: skip
    """Decode ``segments`` side by side, the first on this thread (with
    ``stream``'s own decoder where ``reuse``), each with ``threads`` FFmpeg
    threads; the first error stops the others and is raised."""
    out = _PlannedFrames(plan)
    stop = threading.Event()

    def run(segment: Segment) -> None:
        try:
            with _segment_source(plan, stream, req, segment, reuse) as (codec, packets):
                set_threads(codec, threads)
                _decode_segment(plan, segment, codec, packets, converter(threads), out, req, stop)
        except BaseException:
            stop.set()
            raise

    if len(segments) == 1:
        run(segments[0])
    else:
        errors: list[Exception] = []
        with ThreadPoolExecutor(len(segments) - 1, thread_name_prefix="cps_ray-decoder") as pool:
            futures = [pool.submit(run, segment) for segment in segments[1:]]
            try:
                run(segments[0])
            except Exception as err:
                errors.append(err)
            for future in futures:
                try:
                    future.result()
                except Exception as err:
                    errors.append(err)
        if errors:
            raise errors[0]
    frames = out.result()
    return plan.positions, frames, plan.seconds[plan.inverse], plan.num_frames, len(segments)


class _PlannedFrames:
    """The output of a plan, filled by its decoders: uint8 ``[T, 3, H, W]``,
    allocated at the first frame (its rotation fixes the shape). Each wanted
    frame is converted once, into its first slot, and copied into the others
    (a frame sampled twice): nothing but the output and the decoders' own
    frames is held."""

    def __init__(self, plan: PacketPlan):
        self._unique_of = {int(p): u for u, p in enumerate(plan.pts)}
        self._packet = plan.index.packet[plan.unique]  # each frame's decode position
        order = np.argsort(plan.inverse, kind="stable")
        counts = np.bincount(plan.inverse, minlength=len(plan.pts))
        self._slots = np.split(order, np.cumsum(counts)[:-1])
        self._count = len(plan.inverse)
        self._lock = threading.Lock()
        self.done = np.zeros(len(plan.pts), dtype=bool)
        self.frames: np.ndarray | None = None

    def take(self, decoded, convert, segment: Segment) -> None:
        """Convert the frames of ``decoded`` that ``segment`` owns."""
        for frame in decoded:
            u = self._unique_of.get(frame.pts)
            if u is None or self.done[u] or not segment.begin <= self._packet[u] < segment.end:
                continue
            frames = self.frames
            if frames is None:
                frames = self._allocate(convert.output_shape(frame.rotation))
            first, *more = self._slots[u]
            convert(frame, frames[first])
            for slot in more:
                frames[slot] = frames[first]
            self.done[u] = True

    def _allocate(self, shape) -> np.ndarray:
        with self._lock:
            if self.frames is None:
                self.frames = np.empty((self._count, *shape), dtype=np.uint8)
            return self.frames

    def result(self) -> np.ndarray:
        if self.frames is None or not self.done.all():
            raise CannotServe("the decoder did not output the planned frames")
        return self.frames


def _decode_segment(plan: PacketPlan, segment: Segment, codec, packets, convert,
                    out: _PlannedFrames, req: Request, stop: threading.Event) -> None:  # fmt: skip
    """Decode one segment's kept ``packets`` (``(position, packet)`` pairs)."""
    import av

    hevc = plan.index.codec == "hevc"
    fresh = not segment.first  # a decoder of its own, starting at a keyframe mid-plan
    for position, packet in packets:
        if stop.is_set():
            return
        req.limits.check_time()
        if fresh or plan.starts[position]:  # as after a seek
            if not fresh:
                out.take(drain(codec, req.limits), convert, segment)
                codec.flush_buffers()
            if hevc:
                packet = _as_sequence_start(packet, plan.index.nal_length)
            fresh = False
        try:
            out.take(decode_packet(codec, packet, req.limits), convert, segment)
        except av.error.FFmpegError as err:
            raise CannotServe(f"the decoder rejected a planned packet: {err}") from None
    out.take(drain(codec, req.limits), convert, segment)


@contextlib.contextmanager
def _segment_source(plan: PacketPlan, stream, req: Request, segment: Segment, reuse: bool):
    """(decoder, kept ``(position, packet)`` pairs) of ``segment``: the
    packets the index holds, or read again from the file."""
    held = plan.index.held
    if held is not None:
        packets = ((p, held[p]) for p in np.flatnonzero(segment_packets(plan, segment)).tolist())
        if segment.first and reuse:
            yield stream.codec_context, packets
            return
        with open_for_plan(req.path) as again:  # for a decoder of its own
            yield again.streams[stream.index].codec_context, packets
        return
    with open_container(req.path) as again:  # the packets did not fit HOLD_BYTES
        source = again.streams[stream.index]
        yield source.codec_context, _read_again(again, source, plan, segment)


def _read_again(container, stream, plan: PacketPlan, segment: Segment):
    """``segment``'s ``(position, packet)`` pairs, demuxed again; a later
    segment seeks to its first keyframe. Each packet's timestamp must be the
    index's."""
    pts = plan.index.packet_pts
    wanted = segment_packets(plan, segment)
    position: int | None = 0
    if not segment.first:
        container.seek(int(pts[segment.decode_from]), stream=stream, backward=True)
        position = None  # found from the first packet read
    for packet in container.demux(stream):
        if packet.pts is None or not packet.size:
            continue
        if position is None:
            found = np.flatnonzero(pts == packet.pts)
            if not len(found) or found[0] > segment.decode_from:
                raise CannotServe("seeking to a segment's keyframe went past it")
            position = int(found[0])
        if position >= segment.end:
            return
        if pts[position] != packet.pts:
            raise CannotServe("the file gave other packets on a second read")
        if wanted[position]:
            yield position, packet
        position += 1
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
