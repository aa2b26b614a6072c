"""The per-video core (``docs/architecture.md``): one path and a config ->
decoded frames (the decode half), patch tokens (the select half), one row.

:class:`VideoCore` is what every worker holds: the public face
(``decode_only``, ``patch_stream``), ``local_stream``, the pipeline's fused
stage and both halves of its split stages. It resolves ``auto`` once on this
node, fixes its threads per video once, and warms up what it will run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _rows as rows
from ._config import DecodeConfig, PatchStreamConfig, ResolvedBackends, resolve_backends
from ._devices import decode_threads, load_decoders, size_nvdec_cache
from .errors import SessionClosedError


@dataclass(frozen=True)
class DecodeResult:
    """What :func:`~cps_ray.decode_only` returns, and the decode half's output.

    frames: uint8 ``[T, 3, H, W]`` on ``decode_device`` (``H = W = input_size``
    when it is set): a NumPy array from the CPU decoder, a torch tensor from
    NVDEC (``decode_only`` always hands out torch tensors). frame_indices:
    int64 ``[T]``. timestamps: float64 ``[T]`` seconds. num_frames: frames in
    the video. route: how they were found (see :mod:`cps_ray._decode`).
    stream_index: the file's video stream (torchcodec's default pick, never
    an attached picture). device_fallback: why ``auto`` decoded on the CPU of
    a node where torch sees CUDA (``decode_backend`` is then ``"cpu"``).
    decoders: how many decoders decoded segments of the video side by side
    (1 but for a long video given several threads; see ``docs/decoding.md``).
    """

    path: str
    frames: Any
    frame_indices: Any
    timestamps: Any
    decode_backend: str
    decode_device: str
    num_frames: int
    route: str
    decode_seconds: float
    device_fallback: str | None = None
    stream_index: int = 0
    decoders: int = 1


@dataclass(frozen=True)
class Selection:
    """The select half's output: ``patches`` ``[k, 3, p, p]`` (as a row keeps
    them on the CPU: NumPy, bf16 as uint16 bits; torch on a GPU),
    ``meta_fields`` int32 ``[k, 3]``, ``meta_scores`` float32 ``[k]``,
    ``meta_motion`` float32 ``[T, 2, 3]`` (the camera motion compensated)."""

    patches: Any
    meta_fields: Any
    meta_scores: Any
    meta_motion: Any
    process_backend: str
    process_device: str
    seconds: float


class VideoCore:
    """One worker's per-video core: ``auto`` resolved on this node when it is
    built (an explicit ``gpu`` this node cannot serve fails here, for the
    whole run), one FFmpeg thread count, and a warm-up of what it runs.

    Args:
        config: a :class:`DecodeConfig` (decode half only) or a
            :class:`PatchStreamConfig`.
        concurrent_videos: videos this core decodes at once (threads): they
            share ``cores`` (this process's usable cores by default). A
            video's share (``num_threads``, :func:`~cps_ray._devices.decode_threads`)
            goes to decoders side by side where its plan is long enough
            (:func:`~cps_ray._devices.split_decoders`), else to FFmpeg's threads.
        decode, select: ``False`` for a worker that runs only the other half
            (the stages of a split pipeline).
        warm: load the decoders and the selection kernel now, not inside the
            first video's deadline.
        processes_per_gpu: decode processes sharing the GPU (sizes the NVDEC cache).
    """

    def __init__(self, config: DecodeConfig, *, concurrent_videos: int = 1,
                 cores: float | None = None, decode: bool = True, select: bool = True,
                 warm: bool = True, processes_per_gpu: int = 1):  # fmt: skip
        self.config = config
        self.resolved: ResolvedBackends = resolve_backends(config, decode=decode, process=select)
        self.num_threads = decode_threads(config, concurrent_videos, cores)
        if warm:
            self._warm_up(decode, processes_per_gpu)

    def _warm_up(self, decode: bool, processes_per_gpu: int) -> None:
        if decode:
            load_decoders()
            if self.resolved.decode_backend == "gpu":
                size_nvdec_cache(processes_per_gpu)
        if self.resolved.process_backend == "gpu":
            from ._kernels import cuda

            cuda.warmup(self.config.process_device_id)
        elif self.resolved.process_backend == "cpu":
            from ._kernels import cpu

            cpu.warmup()

    # -- the decode half ----------------------------------------------------------

    def decode(self, path: str) -> DecodeResult:
        """``sequence_length`` frames of ``path``; raises :class:`~cps_ray.DecodeError`."""
        from ._decode import decode_frames

        config, resolved = self.config, self.resolved
        start = time.perf_counter()
        out = decode_frames(
            path,
            sequence_length=config.sequence_length,
            uniform_strategy=config.uniform_strategy,
            input_size=config.input_size,
            device=resolved.decode_device,
            num_threads=self.num_threads,
            nvdec_fallback=config.decode_backend == "auto",
            max_pixels=config.max_pixels,
            timeout_s=config.decode_timeout_s,
        )
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
            decoders=out.decoders,
        )

    # -- the select half ----------------------------------------------------------

    def select(self, decoded: DecodeResult) -> Selection:
        """Keep ``k_keep`` patches of ``decoded``'s frames on this core's
        process backend (on the CPU in NumPy alone: no torch)."""
        from . import _select

        config, resolved = self.config, self.resolved
        start = time.perf_counter()
        if resolved.process_backend == "cpu":
            frames = decoded.frames
            if not isinstance(frames, np.ndarray):  # NVDEC frames, gpu -> cpu
                frames = frames.cpu().numpy()
            out = _select.select_video_on_cpu(frames, config, decoded.path)
        else:
            frames = decoded.frames  # NumPy frames go to the kernel's device in the kernel
            if not isinstance(frames, np.ndarray) and str(frames.device) != resolved.process_device:
                frames = frames.to(resolved.process_device)  # between devices; gpu -> gpu stays
            out = _select.select_video(frames, config, decoded.path, "gpu")
        return Selection(*out, resolved.process_backend, resolved.process_device,
                         time.perf_counter() - start)  # fmt: skip

    # -- rows -----------------------------------------------------------------------

    def row(self, path: str) -> dict[str, Any]:
        """``path``'s row (both halves); never raises for a bad video."""
        try:
            decoded = self.decode(path)
        except Exception as err:  # every failure becomes an error row
            return self.error_row(path, rows.failure(err))
        return self.select_row(decoded)

    def select_row(self, decoded: DecodeResult) -> dict[str, Any]:
        """The row of frames the decode half gave; never raises."""
        try:
            return rows.make_row(decoded, self.select(decoded), self.config.output_dtype)
        except Exception as err:  # a selection that fails is the video's error row
            return self.error_row(decoded.path, rows.failure(err), decoded.decode_backend,
                                  decoded.device_fallback)  # fmt: skip

    def error_row(self, path: str, why: tuple[str, str], decode_backend: str | None = None,
                  device_fallback: str | None = None) -> dict[str, Any]:  # fmt: skip
        """The error row of ``path``: ``why`` is ``(reason, kind)``; the decode
        backend and fallback are this core's unless the decode half said."""
        resolved = self.resolved
        return rows.error_row(path, why, self.config, decode_backend or resolved.decode_backend,
                              resolved.process_backend,
                              device_fallback or resolved.decode_fallback)  # fmt: skip

    def stream(self, path: str) -> PatchStream:
        """The :class:`PatchStream` session of ``path``; raises for a bad video."""
        decoded = self.decode(path)
        return PatchStream(self.config, decoded, self.select(decoded))


class PatchStream:
    """The patch tokens of one video; a context manager.

    patches: ``output_dtype [k_keep, 3, p, p]`` in [0, 1].
    metadata_tensors: ``(meta_fields int32 [k_keep, 3] = (t, row, col),
    meta_scores float32 [k_keep])``.
    meta_motion: float32 ``[T, 2, 3]``, the camera motion ``A_t`` (frame t's
    pixel ``(x, y, 1)`` -> frame t - 1) the energies compensated; identity
    rows with ``motion="none"``. See :func:`cps_ray.rebuild_clip`.
    All are torch tensors, on the CPU for ``process_backend="cpu"`` and on
    ``cuda:{process_device_id}`` for ``"gpu"``. After :meth:`close` they are
    released and reading them raises :class:`~cps_ray.errors.SessionClosedError`.
    """

    def __init__(self, config: PatchStreamConfig, decoded: DecodeResult, selection: Selection):
        import torch

        self.config = config
        self.path = decoded.path
        self.decode_backend = decoded.decode_backend
        self.decode_device = decoded.decode_device
        self.process_backend = selection.process_backend
        self.process_device = selection.process_device
        self.frame_indices = torch.as_tensor(decoded.frame_indices)
        self.timestamps = torch.as_tensor(decoded.timestamps)
        self.num_frames = decoded.num_frames
        self.route = decoded.route
        self.stream_index = decoded.stream_index
        self.decode_seconds = decoded.decode_seconds
        self.device_fallback = decoded.device_fallback
        self.select_seconds = selection.seconds
        patches = selection.patches
        if isinstance(patches, np.ndarray):
            patches = rows.row_patches({"patches": patches, "patches_dtype": config.output_dtype})
        self._tensors: tuple | None = (
            patches,
            torch.as_tensor(selection.meta_fields),
            torch.as_tensor(selection.meta_scores),
            torch.as_tensor(selection.meta_motion),
        )

    def _get(self) -> tuple:
        if self._tensors is None:
            raise SessionClosedError(
                f"patch_stream session for {self.path} is closed; its tensors were released"
            )
        return self._tensors

    @property
    def patches(self):
        return self._get()[0]

    @property
    def metadata_tensors(self):
        _, fields, scores, _ = self._get()
        return fields, scores

    @property
    def meta_motion(self):
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
