"""Decode ``T`` frames of one video with torchcodec, resized on the decoder
side to ``input_size``.

Where to look:

- :mod:`.packets`: the packet index (PyAV, no decoding) and the plan of which
  packets the frames need;
- :mod:`.planned`: the ``packets`` route, first for every strategy: only the
  planned packets are decoded (``keyframe`` is its route name under
  ``uniform_strategy="keyframe"``);
- :mod:`.routes`: the ``header``, ``scan`` and ``sequential`` routes, for
  files the plan cannot serve;
- :mod:`.opening`: opening a file with torchcodec, and the shims over it;
- :mod:`.resize`: the resize policy (decoder side on the CPU, torch on the GPU).

Frames are in display orientation: torchcodec applies the rotation metadata,
and the resize works on the rotated frame. Pixel aspect ratio is not applied.

Bad and hostile inputs (see :mod:`cps_ray._guards`): the path is checked
before FFmpeg opens it, a frame larger than ``max_pixels`` fails before any
frame is decoded, and ``timeout_s`` is a deadline checked between opens,
seeks and frames. Every failure is a one-line :class:`DecodeError`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .. import _faults as faults
from .._guards import FATAL_OPEN, Limits, check_file, declared_size, open_reason, short_reason
from .._remote import is_remote, local_copy, redact
from ..errors import DecodeError
from .opening import TORCHCODEC_ERRORS, CannotServe, Request, UnknownFrameSize, iter_frames
from .opening import resize_transforms as _resize_transforms
from .packets import OnlyPictures, open_container, video_stream
from .planned import PacketPlan, decode_plan, plan_packets
from .resize import resized_dims
from .routes import decode_routes

__all__ = [
    "VideoFrames",
    "decode_frames",
    "resized_dims",
]


@dataclass(frozen=True)
class VideoFrames:
    """Frames of one video.

    frames: uint8 ``[T, 3, H, W]`` on the decode device.
    frame_indices: int64 ``[T]``, positions in display order.
    timestamps: float64 ``[T]``, presentation times in seconds.
    num_frames: frames in the video, as the route that succeeded counted them.
    stream_index: the file's stream they come from: the one torchcodec and
    FFmpeg pick by default, never an attached picture, on every route.
    route: which route produced them (``packets``, ``keyframe``, ``header``,
    ``scan``, ``sequential``; see the module docstring).
    """

    frames: torch.Tensor
    frame_indices: torch.Tensor
    timestamps: torch.Tensor
    num_frames: int
    route: str
    # The container's stream the frames come from (see packets.video_stream).
    stream_index: int = 0
    # Why NVDEC could not decode the file when ``auto`` fell back to the CPU.
    device_fallback: str | None = None

    def __post_init__(self) -> None:
        t = self.frames.shape[0]
        if self.frames.dtype != torch.uint8 or self.frames.ndim != 4 or self.frames.shape[1] != 3:
            raise ValueError(
                f"frames must be uint8 [T, 3, H, W], got {self.frames.dtype} "
                f"{tuple(self.frames.shape)}"
            )
        if tuple(self.frame_indices.shape) != (t,) or self.frame_indices.dtype != torch.int64:
            raise ValueError("frame_indices must be int64 [T]")
        if tuple(self.timestamps.shape) != (t,) or self.timestamps.dtype != torch.float64:
            raise ValueError("timestamps must be float64 [T]")


def decode_frames(
    path: str,
    *,
    sequence_length: int,
    uniform_strategy: str = "auto",
    input_size: int | None = None,
    device: str = "cpu",
    num_threads: int = 1,
    nvdec_fallback: bool = False,
    max_pixels: int | None = None,
    timeout_s: float | None = None,
) -> VideoFrames:
    """Decode ``sequence_length`` frames of ``path`` chosen by ``uniform_strategy``.

    Returns :class:`VideoFrames` with uint8 ``[T, 3, S, S]`` frames (native
    ``[T, 3, H, W]`` when ``input_size`` is None) on ``device``. A CUDA
    ``device`` decodes on NVDEC; a file NVDEC cannot decode raises, or with
    ``nvdec_fallback`` (``auto``) decodes on the CPU and says why in
    ``device_fallback``.

    ``path`` may be a URI (``s3://``, ``gs://``, ``https://``, ...): the
    object is copied to a local spill file first (see :mod:`cps_ray._remote`).

    ``max_pixels``: a video whose frames (width x height) are larger fails
    before any frame is decoded; None removes the cap. ``timeout_s``: seconds
    the call may take, checked between opens, seeks and frames (a decoder
    stuck inside FFmpeg is not interrupted); None waits forever.

    Raises :class:`DecodeError` with a one-line reason naming the file.
    """
    path = os.fspath(path)
    faults.inject(path)
    options = dict(sequence_length=sequence_length, uniform_strategy=uniform_strategy,
                   input_size=input_size, device=device, num_threads=num_threads,
                   nvdec_fallback=nvdec_fallback)  # fmt: skip
    if not is_remote(path):
        return _decode_file(path, Limits(path, max_pixels, timeout_s), **options)
    shown = redact(path)
    limits = Limits(shown, max_pixels, timeout_s)  # the deadline covers the copy
    with local_copy(path, limits.check_time) as local:
        try:
            return _decode_file(local, limits, **options)
        except DecodeError as err:
            raise DecodeError(shown, err.reason, err.kind) from None


def _decode_file(
    path: str, limits: Limits, *, sequence_length: int, uniform_strategy: str,
    input_size: int | None, device: str, num_threads: int, nvdec_fallback: bool,
) -> VideoFrames:  # fmt: skip
    declared = declared_size(check_file(path))
    if declared is not None:
        limits.check_size(*declared)
    stream_index, plan = _plan(path, uniform_strategy, sequence_length, limits)
    request = Request(path, sequence_length, uniform_strategy, input_size, device, num_threads,
                      limits, stream_index)  # fmt: skip
    if device.startswith("cuda"):
        return _decode_cuda(request, plan, nvdec_fallback)
    return _decode_cpu(request, plan)


def _plan(path: str, strategy: str, sequence_length: int,
          limits: Limits) -> tuple[int | None, PacketPlan | None]:  # fmt: skip
    """The file's video stream, chosen once for every route, and the packet
    plan of its frames: ``(None, None)`` where PyAV cannot open the file or
    sees no video stream (torchcodec then picks and decodes), ``(index,
    None)`` where the plan cannot be made."""
    try:
        container = open_container(path)
    except CannotServe:
        return None, None
    with container:
        try:
            stream = video_stream(container)
        except OnlyPictures:
            reason = "no video stream in the file: only an attached picture (cover art)"
            raise DecodeError(path, reason, "unsupported") from None
        if stream is None:
            return None, None
        try:
            return stream.index, plan_packets(container, stream, path, strategy,
                                              sequence_length, limits)  # fmt: skip
        except CannotServe:
            return stream.index, None


def _decode(req: Request, plan: PacketPlan | None, transforms) -> VideoFrames:
    """The packet plan first; the routes that decode the file itself after."""
    strategy = req.uniform_strategy
    if plan is not None:
        try:
            positions, frames, timestamps, n = decode_plan(plan, req, transforms)
            route = "keyframe" if strategy == "keyframe" else "packets"
            return VideoFrames(frames, positions, timestamps, n, route, req.stream_index)
        except CannotServe:
            pass
    # Without a packet index, keyframe gives the exact uniform frames.
    strategy = "index" if strategy == "keyframe" else strategy
    route, positions, frames, timestamps, n, stream = decode_routes(req, transforms, strategy)
    return VideoFrames(frames.contiguous(), positions, timestamps, n, route, stream)


def _decode_cpu(req: Request, plan: PacketPlan | None) -> VideoFrames:
    try:
        return _decode(req, plan, _resize_transforms(req.input_size, req.limits))
    except UnknownFrameSize:
        pass
    # No frame size in the header: learn it from the first decoded frame.
    size = _first_frame_size(req)
    return _decode(req, plan, _resize_transforms(req.input_size, req.limits, size))


def _decode_cuda(req: Request, plan: PacketPlan | None, nvdec_fallback: bool) -> VideoFrames:
    """NVDEC decode at native size, then the resize policy on the GPU."""
    try:
        probe = req.open("approximate")
        fallback = probe.cpu_fallback
        reason = str(fallback).split("Falling back due to:", 1)[-1].strip() if fallback else None
    except TORCHCODEC_ERRORS as e:
        opened = open_reason(e, req.path)
        if opened.startswith(FATAL_OPEN):
            raise DecodeError(req.path, opened) from None
        # The CUDA decoder refused a file FFmpeg can open (a codec or size
        # NVDEC lacks): the CPU decodes it under auto, or says why it cannot.
        reason = f"the CUDA decoder cannot open it: {short_reason(e)}"
    if reason is not None:
        if not nvdec_fallback:
            raise DecodeError(
                req.path,
                f"NVDEC cannot decode it on {req.device} ({reason}); use decode_backend='cpu', "
                "or 'auto' to fall back to the CPU",
            )
        out = _decode_cpu(dataclasses.replace(req, device="cpu"), plan)
        return dataclasses.replace(out, device_fallback=reason)
    out = _decode(req, plan, None)
    if req.input_size is None:
        return out
    from .resize import resize_center_crop

    return dataclasses.replace(out, frames=resize_center_crop(out.frames, req.input_size))


def _first_frame_size(req: Request) -> tuple[int, int]:
    for seek_mode in ("approximate", "exact"):
        try:
            decoder = req.open(seek_mode)
        except TORCHCODEC_ERRORS as e:
            reason = open_reason(e, req.path)
            if reason.startswith(FATAL_OPEN):
                raise DecodeError(req.path, reason) from None
            continue
        for frame, _, _ in iter_frames(decoder, req.limits):
            return int(frame.shape[-2]), int(frame.shape[-1])
    raise DecodeError(req.path, "too damaged to decode: no frame could be decoded")
