"""Opening a video with PyAV, choosing its video stream, and decoding its
packets: what every CPU route shares (and the GPU route's packet plan).

Nothing here imports torch or torchcodec: a process that decodes on the CPU
loads PyAV (FFmpeg in its wheel) and NumPy only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .._guards import Limits, ffmpeg_open_reason, ffmpeg_path, open_by_handle

# A stream whose frame size FFmpeg's probe did not find (torchcodec cannot
# open it; the routes decode by the size the header states).
UNKNOWN_SIZE = (
    "no video stream of known frame size: FFmpeg found no decodable frame while "
    "probing the start of the file"
)


class CannotServe(Exception):
    """This route cannot decode this file (the file, not a bug): the next
    route tries. The message says why, for the error row if none can."""


class CannotOpen(CannotServe):
    """FFmpeg (PyAV) cannot open the file; ``reason`` and ``kind`` are the
    error row's (see :mod:`cps_ray.errors`)."""

    def __init__(self, reason: str, kind: str = "corrupt"):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


class OnlyPictures(Exception):
    """The file's only video streams are attached pictures (cover art)."""


@dataclass(frozen=True)
class Request:
    """One ``decode_frames`` call, as the routes need it."""

    path: str
    sequence_length: int
    uniform_strategy: str
    input_size: int | None
    device: str
    num_threads: int
    limits: Limits
    # The file's video stream (see video_stream); None: not chosen yet.
    stream_index: int | None = None


@contextlib.contextmanager
def open_container(path: str, *, probe: bool = True) -> Iterator:
    """PyAV's input container of ``path``, closed on exit (the file handle
    too, for names FFmpeg must not parse: see :func:`open_by_handle`).

    ``probe=False``: FFmpeg's probe reads the packets it needs but decodes
    none. It decodes the first frames otherwise, to learn what a decoder
    learns anyway: the pixel format
    and, for H.264 without reordering limits in its SPS, the reorder depth.
    It also counts frames per stream, which FFmpeg's choice among several
    video streams weighs: see :func:`open_for_plan`.

    Raises:
        CannotOpen: FFmpeg cannot open it; the reason names why.
    """
    import av

    source = ffmpeg_path(path)  # absolute: no prefix of the name is a protocol
    options = None if probe else {"skip_frame": "all"}  # the probe's decoders only
    try:
        handle = open(source, "rb") if open_by_handle(source) else None
    except OSError as err:
        raise CannotOpen(f"cannot open the file ({err.strerror})", "unreadable") from None
    try:
        try:
            container = av.open(handle or source, options=options, metadata_errors="replace")
        except av.error.FFmpegError as err:
            raise CannotOpen(ffmpeg_open_reason(err.strerror or str(err), path)) from None
        with container:
            yield container
    finally:
        if handle is not None:
            handle.close()


@contextlib.contextmanager
def open_for_plan(path: str) -> Iterator:
    """:func:`open_container` without the probe's decoding where that changes
    nothing the routes use: one video stream, whose size the header states.
    Else (several video streams, whose choice weighs the frames the probe
    decodes; no size before decoding), the container probed as usual.

    The frames are the same either way: a decoder that starts from a lower
    guess of H.264's reorder depth can drop a frame while it learns the
    depth, never change one, and the packet plan checks that every wanted
    frame comes out (the frame-by-frame route opens the file as usual).
    """
    with open_container(path, probe=False) as container:
        video = container.streams.video
        codec = video[0].codec_context if len(video) == 1 else None  # None: no decoder
        if codec is not None and codec.width and codec.height:
            yield container
            return
    with open_container(path) as container:
        yield container


def video_stream(container):
    """The video stream cps_ray decodes: the one FFmpeg's
    ``av_find_best_stream`` (and so torchcodec) picks by default, never an
    attached picture; ``None`` when the file has no video stream.

    FFmpeg ranks streams by disposition, frames seen while probing, then
    bit rate; where its pick is an attached picture, the best of the other
    video streams by disposition, frame count and bit rate is taken.

    Raises:
        OnlyPictures: every video stream is an attached picture.
    """
    import av

    streams = list(container.streams.video)
    if not streams:
        return None
    pictures = av.stream.Disposition.attached_pic
    movies = [s for s in streams if not s.disposition & pictures]
    if not movies:
        raise OnlyPictures()
    best = container.streams.best("video")
    if best is not None and not best.disposition & pictures:
        return best

    def rank(stream):
        default = bool(stream.disposition & av.stream.Disposition.default)
        codec = stream.codec_context  # None where FFmpeg has no decoder for it
        bit_rate = codec.bit_rate if codec is not None else 0
        return (default, stream.frames or 0, bit_rate or 0, -stream.index)

    return max(movies, key=rank)


def set_threads(codec_context, num_threads: int) -> None:
    """FFmpeg's decoder threads, as torchcodec and the ffmpeg CLI set them
    (frame and slice threads; PyAV's own default is every core, slices only).
    Threads change the speed, never the frames."""
    codec_context.thread_count = num_threads
    codec_context.thread_type = "AUTO"


def decode_packet(codec_context, packet, limits: Limits) -> list:
    """The frames ``codec_context`` outputs once it has ``packet``, their
    sizes checked against ``max_pixels``. Raises PyAV's errors."""
    frames = codec_context.decode(packet)
    for frame in frames:
        limits.check_size(frame.height, frame.width)
    return frames


def decoded_frames(codec_context, packets: Iterable, limits: Limits) -> Iterator:
    """Every frame ``codec_context`` outputs for ``packets``, then drained.

    A packet the decoder rejects is skipped, as the ffmpeg CLI skips it; an
    error while reading (demuxing) ends the packets. Every frame's size is
    checked against ``max_pixels``, and the deadline before every packet.
    """
    import av

    iterator = iter(packets)
    while True:
        limits.check_time()
        try:
            packet = next(iterator)
        except StopIteration:
            break
        except av.error.FFmpegError:
            break  # a damaged file ends here: what came before is kept
        if packet.size == 0:
            continue  # the demuxer's end marker: drained below
        try:
            frames = decode_packet(codec_context, packet, limits)
        except av.error.FFmpegError:
            continue
        yield from frames
    yield from drain(codec_context, limits)


def drain(codec_context, limits: Limits) -> list:
    """The frames the decoder still holds (end of stream, or before a jump)."""
    import av

    try:
        return decode_packet(codec_context, None, limits)
    except av.error.FFmpegError:
        return []
