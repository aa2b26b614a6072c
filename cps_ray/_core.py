"""The per-video core: one path and a config whose backends are resolved ->
decoded frames (:func:`decode_video`), patch tokens (:func:`run_patch_stream`)
or one row (:func:`video_row`).

The public face (:mod:`cps_ray._api`: ``decode_only``, ``patch_stream``) and
every worker of the pipeline and of ``local_stream`` call these; the path is
an argument, so a worker builds and checks its config once for all its
videos.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ._config import DecodeConfig, PatchStreamConfig, ResolvedBackends
from ._decode import VideoFrames, decode_frames
from ._select import select_video
from .errors import SessionClosedError


@dataclass(frozen=True)
class DecodeResult:
    """What :func:`decode_only` returns.

    frames: uint8 ``[T, 3, H, W]`` on ``decode_device`` (``H = W = input_size``
    when it is set). frame_indices: int64 ``[T]``. timestamps: float64 ``[T]``
    seconds. decode_backend: the resolved ``"cpu"``/``"gpu"``.
    num_frames: frames in the video. route: how they were found (see
    :mod:`cps_ray._decode`). stream_index: the file's video stream they come
    from (torchcodec's default pick, never an attached picture).
    decode_seconds: wall time of the decode.
    device_fallback: why ``auto`` decoded on the CPU of a node where torch
    sees CUDA: torchcodec cannot decode on this node's GPU, or NVDEC cannot
    decode this file (``decode_backend`` is then ``"cpu"``); ``None`` otherwise.
    """

    path: str
    frames: torch.Tensor
    frame_indices: torch.Tensor
    timestamps: torch.Tensor
    decode_backend: str
    decode_device: str
    num_frames: int
    route: str
    decode_seconds: float
    device_fallback: str | None = None
    stream_index: int = 0


def decode_with(config: DecodeConfig, path: str, device: str, num_threads: int) -> VideoFrames:
    """``decode_frames`` of ``path`` as ``config`` asks, on ``device``."""
    return decode_frames(
        path,
        sequence_length=config.sequence_length,
        uniform_strategy=config.uniform_strategy,
        input_size=config.input_size,
        device=device,
        num_threads=num_threads,
        nvdec_fallback=config.decode_backend == "auto",
        max_pixels=config.max_pixels,
        timeout_s=config.decode_timeout_s,
    )


def decode_video(config: DecodeConfig, resolved: ResolvedBackends, num_threads: int,
            path: str | None = None) -> DecodeResult:  # fmt: skip
    path = config.require_path() if path is None else path
    start = time.perf_counter()
    out = decode_with(config, path, resolved.decode_device, num_threads)
    # Only auto falls back (a file NVDEC cannot decode); the result says so.
    fell_back = out.device_fallback is not None
    return DecodeResult(
        path=path,
        frames=out.frames,
        frame_indices=out.frame_indices,
        timestamps=out.timestamps,
        decode_backend="cpu" if fell_back else resolved.decode_backend,
        decode_device="cpu" if fell_back else resolved.decode_device,
        num_frames=out.num_frames,
        route=out.route,
        decode_seconds=time.perf_counter() - start,
        device_fallback=out.device_fallback or resolved.decode_fallback,
        stream_index=out.stream_index,
    )


class PatchStream:
    """The patch tokens of one video; a context manager.

    patches: ``output_dtype [k_keep, 3, p, p]`` in [0, 1].
    metadata_tensors: ``(meta_fields int32 [k_keep, 3] = (t, row, col),
    meta_scores float32 [k_keep])``.
    meta_motion: float32 ``[T, 2, 3]``, the camera motion ``A_t`` (frame t's
    pixel ``(x, y, 1)`` -> frame t - 1) the energies compensated; identity
    rows with ``motion="none"``. See :func:`cps_ray.rebuild_clip`.
    All live on the CPU for ``process_backend="cpu"`` and on
    ``cuda:{process_device_id}`` for ``"gpu"``. After :meth:`close` they are
    released and reading them raises :class:`~cps_ray.errors.SessionClosedError`.
    device_fallback: as in :class:`DecodeResult`.
    """

    def __init__(
        self,
        config: PatchStreamConfig,
        decoded: DecodeResult,
        resolved: ResolvedBackends,
        patches: torch.Tensor,
        meta_fields: torch.Tensor,
        meta_scores: torch.Tensor,
        select_seconds: float,
        meta_motion: torch.Tensor,
    ):
        self.config = config
        self.path = decoded.path
        self.decode_backend = decoded.decode_backend
        self.decode_device = decoded.decode_device
        self.process_backend = resolved.process_backend
        self.process_device = resolved.process_device
        self.frame_indices = decoded.frame_indices
        self.timestamps = decoded.timestamps
        self.num_frames = decoded.num_frames
        self.route = decoded.route
        self.stream_index = decoded.stream_index
        self.decode_seconds = decoded.decode_seconds
        self.device_fallback = decoded.device_fallback
        self.select_seconds = select_seconds
        self._tensors: tuple[torch.Tensor, ...] | None = (
            patches,
            meta_fields,
            meta_scores,
            meta_motion,
        )

    def _get(self) -> tuple[torch.Tensor, ...]:
        if self._tensors is None:
            raise SessionClosedError(
                f"patch_stream session for {self.path} is closed; its tensors were released"
            )
        return self._tensors

    @property
    def patches(self) -> torch.Tensor:
        return self._get()[0]

    @property
    def metadata_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, fields, scores, _ = self._get()
        return fields, scores

    @property
    def meta_motion(self) -> torch.Tensor:
        return self._get()[3]

    @property
    def closed(self) -> bool:
        return self._tensors is None

    def close(self) -> None:
        """Release the tensors (GPU memory included). Idempotent."""
        self._tensors = None

    def __enter__(self) -> PatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"k_keep={self.config.k_keep}"
        return (
            f"PatchStream({self.path!r}, {state}, decode={self.decode_backend}, "
            f"process={self.process_backend})"
        )


def run_patch_stream(
    config: PatchStreamConfig, resolved: ResolvedBackends, num_threads: int, path: str | None = None
) -> PatchStream:
    """Decode and select ``path`` (default: ``config.video_path``) with
    backends already resolved: workers call this, one config for every video."""
    decoded = decode_video(config, resolved, num_threads, path)
    start = time.perf_counter()
    frames = decoded.frames
    if resolved.process_device != decoded.decode_device:
        # cpu -> gpu, gpu -> cpu, or between two GPUs; gpu -> gpu on one
        # device keeps the frames where they are.
        frames = frames.to(resolved.process_device)
    patches, fields, scores, motion = select_video(
        frames, config, decoded.path, resolved.process_backend
    )
    return PatchStream(
        config, decoded, resolved, patches, fields, scores, time.perf_counter() - start, motion
    )


def video_row(
    config: PatchStreamConfig, resolved: ResolvedBackends, num_threads: int, path: str
) -> dict[str, Any]:
    """One video's row (DESIGN.md's schema): its tokens, or ``error`` set to
    one line naming the file and the reason. Never raises for a bad video."""
    from .pipeline._rows import error_row, success_row

    try:
        with run_patch_stream(config, resolved, num_threads, path) as session:
            return success_row(session)
    except Exception as err:  # every failure becomes an error row
        return error_row(
            path,
            err,
            config,
            resolved.decode_backend,
            resolved.process_backend,
            resolved.decode_fallback,
        )
