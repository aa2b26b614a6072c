"""Decoding on a CUDA device: torchcodec on NVDEC, at native size, then the
torch resize of :mod:`.resize`. Frames are torch tensors on the device.

The packet plan (:mod:`.planned`, indexed by PyAV) is copied into an
in-memory Matroska file that torchcodec decodes; files it cannot serve go
to torchcodec's own routes (:mod:`.nvdec_routes`). Where NVDEC cannot decode
a file, ``auto`` decodes it on the CPU (:mod:`.cpu`) and says why. One
decoder per video: the plan is not split here (the CPU's segments are), and
the ``T`` native frames are held on the device until they are resized.

Private torchcodec hooks used here, each pinned by the ``torchcodec<0.15``
bound in ``pyproject.toml`` and exercised by ``tests/test_decode.py``:

- ``torchcodec._core.get_next_frame`` (decode the next frame without a seek,
  for the frame-by-frame route);
- ``VideoDecoder._decoder`` (the core decoder object that op takes).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
import torch

from .._guards import FATAL_OPEN, Limits, ffmpeg_path, open_by_handle, open_reason, short_reason
from ..errors import DecodeError
from .frames import VideoFrames
from .opening import CannotOpen, CannotServe, OnlyPictures, Request, open_container, video_stream
from .planned import PacketPlan, plan_packets, remux

# torchcodec's errors for a file it cannot open, seek or decode.
TORCHCODEC_ERRORS = (RuntimeError, ValueError, IndexError)

# Matroska stores times in milliseconds.
_TIME_SLACK_S = 1.5e-3


def open_decoder(req: Request, seek_mode: str, source=None):
    """A torchcodec ``VideoDecoder`` of the file's video stream (or of
    ``source``, a file-like object holding one stream) on ``req.device``,
    checked against the limits before any frame is decoded."""
    from torchcodec.decoders import VideoDecoder

    options = dict(
        stream_index=req.stream_index if source is None else None,
        seek_mode=seek_mode,
        num_ffmpeg_threads=req.num_threads,
        device=req.device,
        dimension_order="NCHW",
    )
    if source is None:
        source = ffmpeg_path(req.path)
        if open_by_handle(source):
            source = open(source, "rb")  # the decoder keeps the file open
    decoder = VideoDecoder(source, **options)
    req.limits.check_time()
    md = decoder.metadata
    req.limits.check_size(md.height, md.width)
    # The T frames are held on the device at their native size before the resize.
    req.limits.check_frames(req.sequence_length, md.height, md.width)
    return decoder


def decode_cuda(req: Request, nvdec_fallback: bool) -> VideoFrames:
    """``req``'s frames decoded by NVDEC on ``req.device``, resized there; a
    file NVDEC cannot decode raises, or with ``nvdec_fallback`` (``auto``)
    is decoded on the CPU, saying why in ``device_fallback``."""
    stream_index, plan = _plan(req)
    req = dataclasses.replace(req, stream_index=stream_index)
    try:
        probe = open_decoder(req, "approximate")
        fallback = probe.cpu_fallback
        reason = str(fallback).split("Falling back due to:", 1)[-1].strip() if fallback else None
    except TORCHCODEC_ERRORS as e:
        opened = open_reason(e, req.path)
        if opened.startswith(FATAL_OPEN):
            kind = "unsupported" if opened.startswith("no video stream") else "corrupt"
            raise DecodeError(req.path, opened, kind) from None
        # The CUDA decoder refused a file FFmpeg can open (a codec or size
        # NVDEC lacks): the CPU decodes it under auto, or says why it cannot.
        reason = f"the CUDA decoder cannot open it: {short_reason(e)}"
    if reason is not None:
        if not nvdec_fallback:
            raise DecodeError(
                req.path,
                f"NVDEC cannot decode it on {req.device} ({reason}); use decode_backend='cpu', "
                "or 'auto' to fall back to the CPU",
                "unsupported",
            )
        from .cpu import decode_cpu

        out = decode_cpu(dataclasses.replace(req, device="cpu", stream_index=None))
        return dataclasses.replace(out, device_fallback=reason)
    out = _decode(req, plan)
    if req.input_size is None:
        return out
    from .resize import resize_center_crop

    return dataclasses.replace(out, frames=resize_center_crop(out.frames, req.input_size))


def _plan(req: Request) -> tuple[int | None, tuple[PacketPlan, bytes] | None]:
    """The file's video stream, chosen once for every route, and the packet
    plan of its frames with the planned packets as Matroska: ``(None,
    None)`` where PyAV cannot open the file or sees no video stream
    (torchcodec then picks and decodes), ``(index, None)`` where the plan
    cannot be made."""
    try:
        with open_container(req.path) as container:
            try:
                stream = video_stream(container)
            except OnlyPictures:
                reason = "no video stream in the file: only an attached picture (cover art)"
                raise DecodeError(req.path, reason, "unsupported") from None
            if stream is None:
                return None, None
            try:
                plan = plan_packets(container, stream, req.uniform_strategy,
                                    req.sequence_length, req.limits)  # fmt: skip
                return stream.index, (plan, remux(container, stream, req.path, plan))
            except CannotServe:
                return stream.index, None
    except CannotOpen:
        return None, None


def _decode(req: Request, planned: tuple[PacketPlan, bytes] | None) -> VideoFrames:
    """The packet plan first; torchcodec's routes that decode the file itself after."""
    from .nvdec_routes import decode_routes

    strategy = req.uniform_strategy
    if planned is not None:
        try:
            positions, frames, timestamps, n = _decode_plan(*planned, req)
            route = "keyframe" if strategy == "keyframe" else "packets"
            return VideoFrames(frames, positions, timestamps, n, route, req.stream_index)
        except CannotServe:
            pass
    # Without a packet index, keyframe gives the exact uniform frames.
    strategy = "index" if strategy == "keyframe" else strategy
    route, positions, frames, timestamps, n, stream = decode_routes(req, strategy)
    return VideoFrames(frames.contiguous(), positions, timestamps, n, route, stream)


def _decode_plan(plan: PacketPlan, data: bytes, req: Request):
    """(positions, frames, timestamps, num_frames) of ``plan``'s frames,
    decoded by torchcodec from its Matroska copy. Raises
    :class:`CannotServe` where the decoder disagrees with the plan."""
    req.limits.check_time()
    try:
        decoder = open_decoder(req, "exact", source=io.BytesIO(data))
    except TORCHCODEC_ERRORS as err:
        raise CannotServe(f"torchcodec cannot open the planned packets: {err}") from None
    if len(decoder) != plan.kept:
        raise CannotServe("torchcodec counts the planned packets differently")
    kept_pts = np.sort(plan.index.packet_pts[plan.keep])
    local = np.searchsorted(kept_pts, plan.pts)  # each frame's index in the copy
    data, pts, _ = seek_frames(decoder.get_frames_at, local.tolist(), req.limits)
    offset = pts.to(torch.float64).numpy() - plan.seconds
    if np.ptp(offset) > _TIME_SLACK_S:
        raise CannotServe("the decoder output other frames than the planned ones")
    inv = torch.from_numpy(plan.inverse)
    frames = data[inv].contiguous()
    timestamps = torch.from_numpy(plan.seconds)[inv]
    return torch.from_numpy(plan.positions), frames, timestamps, plan.num_frames


def iter_frames(decoder, limits: Limits) -> Iterator[tuple[torch.Tensor, float, float]]:
    """Frames in decode order from the start, without seeking.

    torchcodec's public indexing always seeks, which is exactly what fails
    on files the frame-by-frame route exists for; its core op
    ``get_next_frame`` does not. A decoding error mid-file ends the walk:
    what came before is kept. The deadline is checked before every frame.
    """
    from torchcodec import _core

    while True:
        limits.check_time()
        try:
            frame, pts, duration = _core.get_next_frame(decoder._decoder)
        except (IndexError, RuntimeError):
            return
        limits.check_size(frame.shape[-2], frame.shape[-1])
        yield frame, float(pts), float(duration)


# Frames fetched per seek call, so that the deadline is checked between seeks.
SEEK_CHUNK = 8


def seek_frames(get, targets: list, limits: Limits):
    """(data, pts, duration) of ``get(targets)``, a few targets per call.
    torchcodec's errors become :class:`CannotServe`."""
    parts = []
    for start in range(0, len(targets), SEEK_CHUNK):
        limits.check_time()
        try:
            parts.append(get(targets[start : start + SEEK_CHUNK]))
        except TORCHCODEC_ERRORS as err:
            raise CannotServe(f"seeking failed: {err}") from None
    limits.check_size(*parts[0].data.shape[-2:])
    if len(parts) == 1:
        return parts[0].data, parts[0].pts_seconds, parts[0].duration_seconds
    return (
        torch.cat([b.data for b in parts]),
        torch.cat([b.pts_seconds for b in parts]),
        torch.cat([b.duration_seconds for b in parts]),
    )
