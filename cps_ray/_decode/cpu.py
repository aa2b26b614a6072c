"""Decoding on the CPU: PyAV (FFmpeg in its wheel) and NumPy, no torch.

One open of the file: its video stream is chosen, its header checked
(``max_pixels``, and the output frames against their cap), its packets
indexed and, where they fit, held; the planned packets go to the stream's
decoder -- a long plan's segments to decoders side by side, see
:mod:`.segments` -- and the wanted frames through a
:class:`.resize.FrameConverter` per decoder. Only a file the plan cannot serve is
opened again, by the frame-by-frame route (:mod:`.routes`), which decodes
and converts with the same decoder and conversion: every route gives the
same pixels for the same frame.
"""

from __future__ import annotations

import dataclasses
import functools

from ..errors import DecodeError
from .frames import VideoFrames
from .opening import UNKNOWN_SIZE, CannotOpen, CannotServe, OnlyPictures, Request, open_for_plan
from .opening import video_stream as choose_stream
from .planned import decode_plan, plan_packets
from .resize import FrameConverter
from .routes import decode_sequential, header_hints


def decode_cpu(req: Request, *, plan: bool = True) -> VideoFrames:
    """``req``'s frames decoded on the CPU: NumPy arrays (see :class:`VideoFrames`).
    ``plan=False`` skips the packet plan (tests compare the routes).
    Raises :class:`DecodeError` with a one-line reason naming the file."""
    strategy = req.uniform_strategy
    try:
        with open_for_plan(req.path) as container:
            req.limits.check_time()
            stream = _video_stream(container, req.path)
            req = dataclasses.replace(req, stream_index=stream.index)
            converter = _converter(stream, req)
            hints = header_hints(container, stream)
            try:
                if not plan:
                    raise CannotServe("the packet plan is not asked for")
                planned = plan_packets(container, stream, strategy, req.sequence_length,
                                       req.limits)  # fmt: skip
                positions, frames, timestamps, n, decoders = decode_plan(planned, stream, req,
                                                                         converter)  # fmt: skip
                route = "keyframe" if strategy == "keyframe" else "packets"
                return VideoFrames(frames, positions, timestamps, n, route, stream.index,
                                   decoders=decoders)  # fmt: skip
            except CannotOpen:
                raise
            except CannotServe:
                pass
        # Without a packet index, keyframe gives the exact uniform frames.
        routed = "index" if strategy == "keyframe" else strategy
        convert = converter(req.num_threads)
        positions, frames, timestamps, n = decode_sequential(req, routed, hints, convert)
    except CannotOpen as err:
        raise DecodeError(req.path, err.reason, err.kind) from None
    except CannotServe as err:
        raise DecodeError(req.path, f"too damaged to decode: {err}") from None
    return VideoFrames(frames, positions, timestamps, n, "sequential", req.stream_index)


def _video_stream(container, path: str):
    try:
        stream = choose_stream(container)
    except OnlyPictures:
        reason = "no video stream in the file: only an attached picture (cover art)"
        raise DecodeError(path, reason, "unsupported") from None
    if stream is None:
        raise DecodeError(path, "no video stream in the file", "unsupported")
    return stream


def _converter(stream, req: Request):
    """``converter(threads)``, a new :class:`FrameConverter` of the video (one
    per decoder), once its header's frame size passed the limits and its
    frames fit the cap on the output."""
    codec = stream.codec_context
    if codec is None:
        raise DecodeError(req.path, "no decoder for the codec of its video stream", "unsupported")
    height, width = codec.height, codec.width
    if not height or not width:
        raise DecodeError(req.path, UNKNOWN_SIZE)
    req.limits.check_size(height, width)
    size = req.input_size
    req.limits.check_frames(req.sequence_length, size or height, size or width)
    return functools.partial(_new_converter, req.input_size, (height, width))


def _new_converter(input_size, native_size, threads: int) -> FrameConverter:
    return FrameConverter(input_size, native_size, threads=threads)
