"""Decode ``T`` uniform frames of one video with torchcodec, resized on the
decoder side to ``input_size``.

Resize policy (one, everywhere): the short side is scaled to ``S`` (bilinear,
antialiased, FFmpeg's swscale inside the decoder), the long side to
``round(long * S / short)``, then the center ``S x S`` is cropped. Frames are
in display orientation: torchcodec applies the rotation metadata, and the
resize works on the rotated frame. Pixel aspect ratio is not applied.

Routes, fastest first; a route that fails or gives implausible output hands
over to the next, so a lying header never becomes an error:

1. ``header``: ``seek_mode="approximate"`` (no scan), trusting the header's
   frame count and duration (``auto`` and ``time`` only);
2. ``scan``: ``seek_mode="exact"``, frame count from a scan of the packets;
3. ``sequential``: decode frame by frame from the start and keep the chosen
   frames (files whose seeking is broken, e.g. MPEG-TS with a non-zero start,
   or whose first frames cannot be decoded). At most two passes, and never
   more than ``T`` decoded frames held at once.

Bad and hostile inputs (see :mod:`cps_ray.guards`): the path is checked
before FFmpeg opens it, a frame larger than ``max_pixels`` fails before any
frame is decoded, and ``timeout_s`` is a deadline checked between opens,
seeks and frames. Every failure is a one-line :class:`DecodeError`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from . import faults, sampling
from .errors import DecodeError
from .guards import (
    FATAL_OPEN,
    Limits,
    check_file,
    declared_size,
    ffmpeg_path,
    open_reason,
    short_reason,
)


@dataclass(frozen=True)
class VideoFrames:
    """Frames of one video.

    frames: uint8 ``[T, 3, H, W]`` on the decode device.
    frame_indices: int64 ``[T]``, positions in display order.
    timestamps: float64 ``[T]``, presentation times in seconds.
    num_frames: frames in the video, as the route that succeeded counted them.
    route: which route of the module docstring produced them.
    """

    frames: torch.Tensor
    frame_indices: torch.Tensor
    timestamps: torch.Tensor
    num_frames: int
    route: str
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


def default_ffmpeg_threads(concurrent_videos: int = 1) -> int:
    """FFmpeg threads per video so ``concurrent_videos`` decodes fill the cores once."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, concurrent_videos))


def resized_dims(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the short side of ``height x width`` to ``size``."""
    if height <= width:
        return size, max(size, (width * size + height // 2) // height)
    return max(size, (height * size + width // 2) // width), size


class _UnknownFrameSize(Exception):
    """The header has no frame size, so the resize cannot be planned yet."""


def _resize_transforms(input_size: int | None, limits: Limits, frame_size=None) -> list | None:
    """Decoder-side transforms of the resize policy.

    ``frame_size`` (h, w) is for files whose header lacks it; otherwise the
    size is read from the (rotation-corrected) metadata when the file opens,
    and checked against ``max_pixels`` before the codec is set up.
    """
    if input_size is None:
        return None
    from torchcodec.transforms import CenterCrop, Resize

    first = (
        _ShortSideResize(input_size, limits)
        if frame_size is None
        else Resize(resized_dims(frame_size[0], frame_size[1], input_size))
    )
    return [first, CenterCrop((input_size, input_size))]


def _make_short_side_resize():
    from torchcodec.transforms import DecoderTransform

    class ShortSideResize(DecoderTransform):
        """Decoder-side resize whose output size depends on the input's
        (rotated) size, which torchcodec only knows once the file is open."""

        def __init__(self, size: int, limits: Limits):
            self.size = size
            self.limits = limits
            self._out: tuple[int, int] | None = None

        def _make_transform_spec(self, input_dims):
            height, width = input_dims
            if not height or not width:
                raise _UnknownFrameSize()
            self.limits.check_size(height, width)
            self._out = resized_dims(int(height), int(width), self.size)
            return f"resize, {self._out[0]}, {self._out[1]}"

        def _get_output_dims(self):
            return self._out

    return ShortSideResize


class _LazyShortSideResize:
    _cls = None

    def __call__(self, size: int, limits: Limits):
        if _LazyShortSideResize._cls is None:
            _LazyShortSideResize._cls = _make_short_side_resize()
        return _LazyShortSideResize._cls(size, limits)


_ShortSideResize = _LazyShortSideResize()


def _open(path: str, seek_mode: str, *, transforms, device: str, num_threads: int):
    from torchcodec.decoders import VideoDecoder

    options = dict(
        seek_mode=seek_mode,
        num_ffmpeg_threads=num_threads,
        device=device,
        transforms=transforms,
        dimension_order="NCHW",
    )
    try:
        return VideoDecoder(ffmpeg_path(path), **options)
    except Exception as e:
        # FFmpeg's image2 demuxer reads "%d" (or a glob) in an image's name
        # as a pattern and finds no file: hand it the file's bytes instead.
        if "No such file or directory" not in str(e) or not os.path.isfile(path):
            raise
    return VideoDecoder(open(path, "rb"), **options)  # the decoder keeps the file open


def _opened(decoder, limits: Limits):
    """``decoder`` once its header is read: checked before any frame is decoded."""
    limits.check_time()
    md = decoder.metadata
    limits.check_size(md.height, md.width)
    return decoder


def _iter_frames(decoder, limits: Limits) -> Iterator[tuple[torch.Tensor, float, float]]:
    """Frames in decode order from the start, without seeking.

    torchcodec's public indexing always seeks, which is exactly what fails
    on files this route exists for; its core op ``get_next_frame`` does not.
    A decoding error mid-file ends the walk: what came before is kept. The
    deadline is checked before every frame.
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
_SEEK_CHUNK = 8


def _seek_frames(get, targets: list, limits: Limits):
    """(data, pts, duration) of ``get(targets)``, a few targets per call."""
    parts = []
    for start in range(0, len(targets), _SEEK_CHUNK):
        limits.check_time()
        parts.append(get(targets[start : start + _SEEK_CHUNK]))
    limits.check_size(*parts[0].data.shape[-2:])
    if len(parts) == 1:
        return parts[0].data, parts[0].pts_seconds, parts[0].duration_seconds
    return (
        torch.cat([b.data for b in parts]),
        torch.cat([b.pts_seconds for b in parts]),
        torch.cat([b.duration_seconds for b in parts]),
    )


def _sample_seeking(
    decoder, strategy: str, sequence_length: int, *, trust_rate: bool, limits: Limits
):
    """(positions, frames, timestamps, num_frames) using torchcodec's seeks.

    Seeking is checked, not trusted: some containers (MPEG-PS, some MPEG-TS)
    land on the wrong frame. ``trust_rate`` (the header route) also demands
    that index ``i`` sits at ``begin + i / fps``, which only a constant-rate
    file with a truthful header satisfies; others go on to the scan.
    """
    md = decoder.metadata
    begin = md.begin_stream_seconds or 0.0
    fps = md.average_fps or 0.0
    if strategy == "time":
        end = md.end_stream_seconds
        if end is None or not end > begin:
            raise ValueError("stream begin/end unknown")
        targets = sampling.time_targets(begin, end, sequence_length)
        targets = np.minimum(targets, np.nextafter(end, -np.inf))
        uniq, inverse = np.unique(targets, return_inverse=True)
        data, pts, dur = _seek_frames(decoder.get_frames_played_at, uniq.tolist(), limits)
        pts, dur = pts.to(torch.float64), dur.to(torch.float64)
        wanted = torch.from_numpy(uniq)
        slack = 1e-3
        if bool((pts > wanted + slack).any()) or bool((pts + dur + slack < wanted).any()):
            raise ValueError("seeking returned frames not displayed at the requested times")
        last = max(int(md.num_frames or 1) - 1, 0)
        positions_t = (
            torch.round((pts - begin) * fps).to(torch.int64).clamp(0, last)
            if fps > 0
            else torch.full_like(pts, -1, dtype=torch.int64)
        )
        positions = positions_t[torch.from_numpy(inverse)]
    else:
        n = md.num_frames
        if n is None or n < 1:
            raise ValueError("frame count unknown")
        positions_np = sampling.index_positions(int(n), sequence_length)
        uniq, inverse = np.unique(positions_np, return_inverse=True)
        data, pts, dur = _seek_frames(decoder.get_frames_at, uniq.tolist(), limits)
        pts, dur = pts.to(torch.float64), dur.to(torch.float64)
        if pts.numel() > 1 and bool((pts[1:] <= pts[:-1]).any()):
            raise ValueError("seeking returned the same frame for different indices")
        # Frame 0 must be the stream's first frame and frame n-1 its last:
        # a header that overcounts, or undecodable leading packets, fail here.
        first_ref = _first(md.begin_stream_seconds_from_content, md.begin_stream_seconds)
        last_ref = _first(md.end_stream_seconds_from_content, md.end_stream_seconds)
        if first_ref is not None and abs(float(pts[0]) - first_ref) > 1e-3:
            raise ValueError("frame 0 is not the first frame of the stream")
        if last_ref is not None:
            tolerance = max(float(dur[-1]), 1e-3) + 1e-3
            if abs(float(pts[-1] + dur[-1]) - last_ref) > tolerance:
                raise ValueError("the last frame is not where the stream ends")
        if trust_rate:
            if fps <= 0:
                raise ValueError("no frame rate in the header")
            expected = begin + torch.from_numpy(uniq).to(torch.float64) / fps
            if bool(((pts - expected).abs() > 1.0 / fps).any()):
                raise ValueError("frames are not where a constant frame rate puts them")
        positions = torch.from_numpy(positions_np)
    if len(uniq) == len(inverse):  # no repeated frame: the batch is already in order
        return positions, data, pts, int(md.num_frames or 0)
    inv = torch.from_numpy(inverse)
    return positions, data[inv], pts[inv], int(md.num_frames or 0)


def _first(*values):
    return next((float(v) for v in values if v is not None), None)


def _walk(
    open_decoder: Callable[[], object],
    keep: Callable[[int, float, float | None], bool],
    limits: Limits,
) -> tuple[dict[int, tuple[torch.Tensor, float]], np.ndarray, float]:
    """Decode every frame once; hold only those ``keep(pos, pts, next_pts)`` wants."""
    decoder = open_decoder()
    kept: dict[int, tuple[torch.Tensor, float]] = {}
    all_pts: list[float] = []
    prev: tuple[int, torch.Tensor, float] | None = None
    last_duration = 0.0
    for pos, (frame, pts, duration) in enumerate(_iter_frames(decoder, limits)):
        if prev is not None and keep(prev[0], prev[2], pts):
            kept[prev[0]] = (prev[1], prev[2])
        prev = (pos, frame, pts)
        all_pts.append(pts)
        last_duration = duration
    if prev is not None and keep(prev[0], prev[2], None):
        kept[prev[0]] = (prev[1], prev[2])
    return kept, np.asarray(all_pts, dtype=np.float64), last_duration


def _time_keep(targets: np.ndarray) -> Callable[[int, float, float | None], bool]:
    def keep(pos: int, pts: float, next_pts: float | None) -> bool:
        if pos == 0 and targets[0] < pts:
            return True
        lo = np.searchsorted(targets, pts, side="left")
        if lo >= len(targets):
            return False
        return next_pts is None or targets[lo] < next_pts

    return keep


def _sample_sequential(
    open_decoder, strategy: str, sequence_length: int, hint_decoder, limits: Limits
):
    md = hint_decoder.metadata if hint_decoder is not None else None
    if strategy == "time":
        begin = md.begin_stream_seconds if md is not None else None
        end = md.end_stream_seconds if md is not None else None
        guess_targets = sampling.time_targets(begin or 0.0, end or 0.0, sequence_length)
        keep = _time_keep(guess_targets)
    else:
        n_hint = md.num_frames if md is not None and md.num_frames else 1
        guess = set(sampling.index_positions(int(n_hint), sequence_length).tolist())

        def keep(pos, pts, next_pts):
            return pos in guess

    kept, all_pts, last_duration = _walk(open_decoder, keep, limits)
    if len(all_pts) == 0:
        raise ValueError("no frame could be decoded")
    # Display order: B-frames can leave pts unsorted in decode order.
    order = np.argsort(all_pts, kind="stable")
    if not np.array_equal(order, np.arange(len(all_pts))):
        # Positions were counted in decode order; fall back to a second pass
        # keyed by display rank.
        rank_of_decode = np.empty_like(order)
        rank_of_decode[order] = np.arange(len(order))
    else:
        rank_of_decode = None
    sorted_pts = all_pts[order]
    n = len(all_pts)
    if strategy == "time":
        end = sorted_pts[-1] + max(last_duration, 0.0)
        targets = sampling.time_targets(sorted_pts[0], end, sequence_length)
        targets = np.minimum(targets, sorted_pts[-1])
        ranks = sampling.assign_by_time(targets, sorted_pts)
    else:
        ranks = sampling.index_positions(n, sequence_length)
    decode_pos = ranks if rank_of_decode is None else order[ranks]
    wanted = set(decode_pos.tolist())
    if not wanted.issubset(kept):
        kept, _, _ = _walk(open_decoder, lambda pos, pts, nxt: pos in wanted, limits)
        if not wanted.issubset(kept):
            raise ValueError("the file decoded differently on a second pass")
    frames = torch.stack([kept[int(p)][0] for p in decode_pos])
    timestamps = torch.tensor([kept[int(p)][1] for p in decode_pos], dtype=torch.float64)
    return torch.as_tensor(ranks, dtype=torch.int64), frames, timestamps, n


@dataclass(frozen=True)
class _Request:
    """One ``decode_frames`` call, as the routes below need it."""

    path: str
    sequence_length: int
    uniform_strategy: str
    input_size: int | None
    device: str
    num_threads: int
    limits: Limits

    def open(self, seek_mode: str, transforms=None):
        decoder = _open(
            self.path,
            seek_mode,
            transforms=transforms,
            device=self.device,
            num_threads=self.num_threads,
        )
        return _opened(decoder, self.limits)


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
    """Decode ``sequence_length`` uniform frames of ``path``.

    Returns :class:`VideoFrames` with uint8 ``[T, 3, S, S]`` frames (native
    ``[T, 3, H, W]`` when ``input_size`` is None) on ``device``. A CUDA
    ``device`` decodes on NVDEC; a file NVDEC cannot decode raises, or with
    ``nvdec_fallback`` (``auto``) decodes on the CPU and says why in
    ``device_fallback``.

    ``max_pixels``: a video whose frames (width x height) are larger fails
    before any frame is decoded; None removes the cap. ``timeout_s``: seconds
    the call may take, checked between opens, seeks and frames (a decoder
    stuck inside FFmpeg is not interrupted); None waits forever.

    Raises :class:`DecodeError` with a one-line reason naming the file.
    """
    path = os.fspath(path)
    faults.inject(path)
    limits = Limits(path, max_pixels, timeout_s)
    declared = declared_size(check_file(path))
    if declared is not None:
        limits.check_size(*declared)
    request = _Request(
        path, sequence_length, uniform_strategy, input_size, device, num_threads, limits
    )
    if device.startswith("cuda"):
        return _decode_cuda(request, nvdec_fallback)
    return _decode_cpu(request)


def _decode_cpu(req: _Request) -> VideoFrames:
    try:
        return _decode_routes(req, _resize_transforms(req.input_size, req.limits))
    except _UnknownFrameSize:
        pass
    # No frame size in the header: learn it from the first decoded frame.
    size = _first_frame_size(req)
    return _decode_routes(req, _resize_transforms(req.input_size, req.limits, size))


def _decode_cuda(req: _Request, nvdec_fallback: bool) -> VideoFrames:
    """NVDEC decode at native size, then the resize policy on the GPU."""
    try:
        probe = req.open("approximate")
        fallback = probe.cpu_fallback
        reason = str(fallback).split("Falling back due to:", 1)[-1].strip() if fallback else None
    except DecodeError:
        raise
    except Exception as e:  # torchcodec raises RuntimeError/ValueError
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
        out = _decode_cpu(dataclasses.replace(req, device="cpu"))
        return dataclasses.replace(out, device_fallback=reason)
    out = _decode_routes(req, None)
    if req.input_size is None:
        return out
    from .resize import resize_center_crop

    return dataclasses.replace(out, frames=resize_center_crop(out.frames, req.input_size))


def _first_frame_size(req: _Request) -> tuple[int, int]:
    for seek_mode in ("approximate", "exact"):
        try:
            decoder = req.open(seek_mode)
        except DecodeError:
            raise
        except Exception as e:
            reason = open_reason(e, req.path)
            if reason.startswith(FATAL_OPEN):
                raise DecodeError(req.path, reason) from None
            continue
        for frame, _, _ in _iter_frames(decoder, req.limits):
            return int(frame.shape[-2]), int(frame.shape[-1])
    raise DecodeError(req.path, "too damaged to decode: no frame could be decoded")


def _sample_keyframes(req: _Request, transforms) -> VideoFrames | None:
    """The ``keyframe`` strategy (see :mod:`cps_ray.keyframes`), or ``None``
    when the packets cannot be listed or the decoder disagrees with them; the
    ``index`` routes then decode the exact uniform frames instead."""
    from .keyframes import NoPacketIndex, choose_frames, read_index

    try:
        index = read_index(ffmpeg_path(req.path))
    except NoPacketIndex:
        return None
    req.limits.check_time()
    positions = choose_frames(index, req.sequence_length)
    uniq, inverse = np.unique(positions, return_inverse=True)
    wanted = index.pts_seconds[uniq]
    # Ask for the middle of each frame's display interval: a time computed as
    # exactly its pts can round to just before it, and show the frame before.
    following = np.append(index.pts_seconds[1:], index.pts_seconds[-1] + 2e-3)
    played_at = (wanted + following[uniq]) / 2
    # The approximate mode maps times to frames by the header's rate, which a
    # variable-rate file breaks; the exact mode scans the packets first.
    for seek_mode in ("approximate", "exact"):
        try:
            decoder = req.open(seek_mode, transforms)
            data, pts, _ = _seek_frames(
                decoder.get_frames_played_at, played_at.tolist(), req.limits
            )
        except (RuntimeError, ValueError, IndexError):  # torchcodec's errors
            continue
        if np.allclose(pts.to(torch.float64).numpy(), wanted, rtol=0, atol=1e-6):
            break
    else:
        return None
    inv = torch.from_numpy(inverse)
    frames = data[inv].contiguous()
    timestamps = torch.from_numpy(wanted)[inv]
    positions_t = torch.from_numpy(positions)
    return VideoFrames(frames, positions_t, timestamps, index.num_frames, "keyframe")


def _decode_routes(req: _Request, transforms) -> VideoFrames:
    if req.uniform_strategy == "keyframe":
        out = _sample_keyframes(req, transforms)
        if out is not None:
            return out
        req = dataclasses.replace(req, uniform_strategy="index")

    def opener(seek_mode: str):
        return lambda: req.open(seek_mode, transforms)

    attempts = (
        [("scan", "exact")]
        if req.uniform_strategy == "index"
        else [
            ("header", "approximate"),
            ("scan", "exact"),
        ]
    )
    hint_decoder = None
    for route, seek_mode in attempts:
        req.limits.check_time()
        try:
            decoder = opener(seek_mode)()
        except (_UnknownFrameSize, DecodeError):
            raise
        except Exception as e:  # torchcodec raises RuntimeError/ValueError
            reason = open_reason(e, req.path)
            if reason.startswith(FATAL_OPEN):
                raise DecodeError(req.path, reason) from None
            continue
        hint_decoder = hint_decoder or decoder
        try:
            positions, frames, timestamps, n = _sample_seeking(
                decoder,
                req.uniform_strategy,
                req.sequence_length,
                trust_rate=route == "header",
                limits=req.limits,
            )
        except DecodeError:
            raise
        except Exception:
            continue  # the next route is slower and does not trust what failed here
        return VideoFrames(frames.contiguous(), positions, timestamps, n, route)

    # The walk after a successful open uses the exact mode; where that mode
    # cannot read from the start again (a JPEG through FFmpeg's image2
    # demuxer), the approximate mode can.
    failure: Exception | None = None
    for seq_mode in ("approximate",) if hint_decoder is None else ("exact", "approximate"):
        req.limits.check_time()
        try:
            positions, frames, timestamps, n = _sample_sequential(
                opener(seq_mode),
                req.uniform_strategy,
                req.sequence_length,
                hint_decoder,
                req.limits,
            )
        except (_UnknownFrameSize, DecodeError):
            raise
        except Exception as e:
            failure = e
            continue
        return VideoFrames(frames.contiguous(), positions, timestamps, n, "sequential")
    raise DecodeError(req.path, f"too damaged to decode: {short_reason(failure)}")
