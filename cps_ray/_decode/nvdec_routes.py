"""torchcodec's routes on a CUDA device, for files the packet plan
(:mod:`.planned`) cannot serve -- PyAV cannot list their packets, or the
decoder disagrees with the plan (the CPU's route is :mod:`.routes`).
Fastest first; a route that fails or gives implausible output hands over
(:class:`CannotServe`) to the next, so a lying header never becomes an error:

1. ``header``: ``seek_mode="approximate"`` (no scan), trusting the header's
   frame count and duration (``auto`` and ``time`` only);
2. ``scan``: ``seek_mode="exact"``, frame count from torchcodec's scan;
3. ``sequential``: decode frame by frame from the start and keep the chosen
   frames (files whose seeking is broken, e.g. MPEG-TS with a non-zero start,
   or whose first frames cannot be decoded). At most two passes, and never
   more than ``T`` decoded frames held at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from .. import _sampling as sampling
from .._guards import FATAL_OPEN, Limits, open_reason, short_reason
from ..errors import DecodeError
from .nvdec import TORCHCODEC_ERRORS, iter_frames, open_decoder, seek_frames
from .opening import CannotServe, Request


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
            raise CannotServe("stream begin/end unknown")
        targets = sampling.time_targets(begin, end, sequence_length)
        targets = np.minimum(targets, np.nextafter(end, -np.inf))
        uniq, inverse = np.unique(targets, return_inverse=True)
        data, pts, dur = seek_frames(decoder.get_frames_played_at, uniq.tolist(), limits)
        pts, dur = pts.to(torch.float64), dur.to(torch.float64)
        wanted = torch.from_numpy(uniq)
        slack = 1e-3
        if bool((pts > wanted + slack).any()) or bool((pts + dur + slack < wanted).any()):
            raise CannotServe("seeking returned frames not displayed at the requested times")
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
            raise CannotServe("frame count unknown")
        positions_np = sampling.index_positions(int(n), sequence_length)
        uniq, inverse = np.unique(positions_np, return_inverse=True)
        data, pts, dur = seek_frames(decoder.get_frames_at, uniq.tolist(), limits)
        pts, dur = pts.to(torch.float64), dur.to(torch.float64)
        if pts.numel() > 1 and bool((pts[1:] <= pts[:-1]).any()):
            raise CannotServe("seeking returned the same frame for different indices")
        # Frame 0 must be the stream's first frame and frame n-1 its last:
        # a header that overcounts, or undecodable leading packets, fail here.
        first_ref = _first(md.begin_stream_seconds_from_content, md.begin_stream_seconds)
        last_ref = _first(md.end_stream_seconds_from_content, md.end_stream_seconds)
        if first_ref is not None and abs(float(pts[0]) - first_ref) > 1e-3:
            raise CannotServe("frame 0 is not the first frame of the stream")
        if last_ref is not None:
            tolerance = max(float(dur[-1]), 1e-3) + 1e-3
            if abs(float(pts[-1] + dur[-1]) - last_ref) > tolerance:
                raise CannotServe("the last frame is not where the stream ends")
        if trust_rate:
            if fps <= 0:
                raise CannotServe("no frame rate in the header")
            expected = begin + torch.from_numpy(uniq).to(torch.float64) / fps
            if bool(((pts - expected).abs() > 1.0 / fps).any()):
                raise CannotServe("frames are not where a constant frame rate puts them")
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
    for pos, (frame, pts, duration) in enumerate(iter_frames(decoder, limits)):
        if prev is not None and keep(prev[0], prev[2], pts):
            kept[prev[0]] = (prev[1], prev[2])
        prev = (pos, frame, pts)
        all_pts.append(pts)
        last_duration = duration
    if prev is not None and keep(prev[0], prev[2], None):
        kept[prev[0]] = (prev[1], prev[2])
    return kept, np.asarray(all_pts, dtype=np.float64), last_duration


def _sample_sequential(
    open_decoder, strategy: str, sequence_length: int, hint_decoder, limits: Limits
):
    md = hint_decoder.metadata if hint_decoder is not None else None
    keep = sampling.walk_guess(
        strategy,
        (md.begin_stream_seconds if md is not None else None) or 0.0,
        (md.end_stream_seconds if md is not None else None) or 0.0,
        int(md.num_frames) if md is not None and md.num_frames else 1,
        sequence_length,
    )
    kept, all_pts, last_duration = _walk(open_decoder, keep, limits)
    if len(all_pts) == 0:
        raise CannotServe("no frame could be decoded")
    n = len(all_pts)
    ranks, decode_pos = sampling.walked_positions(all_pts, last_duration, strategy,
                                                  sequence_length)  # fmt: skip
    wanted = set(decode_pos.tolist())
    if not wanted.issubset(kept):
        kept, _, _ = _walk(open_decoder, lambda pos, pts, nxt: pos in wanted, limits)
        if not wanted.issubset(kept):
            raise CannotServe("the file decoded differently on a second pass")
    frames = torch.stack([kept[int(p)][0] for p in decode_pos])
    timestamps = torch.tensor([kept[int(p)][1] for p in decode_pos], dtype=torch.float64)
    return torch.as_tensor(ranks, dtype=torch.int64), frames, timestamps, n


def decode_routes(req: Request, strategy: str):
    """(route, positions, frames, timestamps, num_frames, stream_index) of
    ``strategy``'s frames (``index``, ``time`` or ``auto``). Every route
    decodes the stream of ``req`` (torchcodec's pick when it has none: the
    first decoder opened pins it for the others). Raises
    :class:`DecodeError` when no route can decode the file."""

    def opener(seek_mode: str):
        return lambda: open_decoder(req, seek_mode)

    attempts = [("scan", "exact")] if strategy == "index" else [("header", "approximate"),
                                                                ("scan", "exact")]  # fmt: skip
    hint_decoder = None
    failure: Exception | None = None
    for route, seek_mode in attempts:
        req.limits.check_time()
        try:
            decoder = opener(seek_mode)()
        except TORCHCODEC_ERRORS as e:
            reason = open_reason(e, req.path)
            if reason.startswith(FATAL_OPEN):
                kind = "unsupported" if reason.startswith("no video stream") else "corrupt"
                raise DecodeError(req.path, reason, kind) from None
            failure = e
            continue
        if req.stream_index is None:
            req = dataclasses.replace(req, stream_index=decoder.stream_index)
        hint_decoder = hint_decoder or decoder
        try:
            positions, frames, timestamps, n = _sample_seeking(
                decoder, strategy, req.sequence_length, trust_rate=route == "header",
                limits=req.limits,
            )  # fmt: skip
        except (CannotServe, *TORCHCODEC_ERRORS) as e:
            failure = e
            continue  # the next route is slower and does not trust what failed here
        return route, positions, frames, timestamps, n, req.stream_index

    # The walk after a successful open uses the exact mode; where that mode
    # cannot read from the start again (a JPEG through FFmpeg's image2
    # demuxer), the approximate mode can.
    for seq_mode in ("approximate",) if hint_decoder is None else ("exact", "approximate"):
        req.limits.check_time()
        try:
            positions, frames, timestamps, n = _sample_sequential(
                opener(seq_mode), strategy, req.sequence_length, hint_decoder, req.limits
            )
        except (CannotServe, *TORCHCODEC_ERRORS) as e:
            failure = e
            continue
        stream = req.stream_index if req.stream_index is not None else _opened_stream(opener)
        return "sequential", positions, frames, timestamps, n, stream
    raise DecodeError(req.path, f"too damaged to decode: {short_reason(failure)}")


def _opened_stream(opener) -> int:
    """torchcodec's pick of stream, for a file only the walk could open."""
    try:
        return int(opener("approximate")().stream_index)
    except TORCHCODEC_ERRORS:
        return 0
