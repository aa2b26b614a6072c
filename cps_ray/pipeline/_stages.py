"""The Ray Data stages as plain callables over NumPy batches: ``DecodeStage``,
``SelectStage`` and ``FusedStage``. Nothing here imports ``ray``; the actor
pools around them are built in :mod:`cps_ray.pipeline._dataset`.

Each stage resolves ``auto`` when its actor starts, on its own node (inside
an actor the visible GPUs are the ones Ray assigned), warms up there, and
records what it resolved in every row.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._config import PatchStreamConfig, resolve_decode, resolve_process_backend
from .._devices import (
    DECODER_MODULES,
    cuda_available,
    ffmpeg_threads_for,
    load_decoders,
    processes_per_gpu,
    size_nvdec_cache,
    torch_device,
)
from ._isolation import DEFAULT_ISOLATION, DEFAULT_MAX_ATTEMPTS, check_isolation, contained
from ._rows import (
    error_reason,
    error_row,
    local_path,
    make_row,
    rows_to_batch,
    transport_path,
)
from ._worker import Worker, check_stream_config, share_cores


def _paths(batch: dict[str, np.ndarray]) -> list[str]:
    return [local_path(str(p)) for p in batch["path"]]


class FrameDecoder:
    """One path -> ``(frames, frame_indices, timestamps, device_fallback, stream_index)``
    as NumPy (frames uint8 ``[T, 3, S, S]``; ``device_fallback`` "" unless
    ``auto`` decoded on the CPU of a GPU node, then why); raises
    ``DecodeError``. What a decode actor runs per video, in itself or in its
    isolated child; ``processes_per_gpu`` sizes its NVDEC cache."""

    def __init__(self, config: PatchStreamConfig, num_threads: int, processes_per_gpu: int = 1):
        self.config = config
        self.decode_backend, self.fallback = resolve_decode(
            config.decode_backend, config.decode_device_id
        )
        self.device = torch_device(self.decode_backend, config.decode_device_id)
        self.num_threads = num_threads
        load_decoders()

        if self.decode_backend == "gpu":
            size_nvdec_cache(processes_per_gpu)

    def __call__(self, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, int]:
        from .._core import decode_with

        out = decode_with(self.config, path, self.device, self.num_threads)
        return (
            out.frames.cpu().numpy(),
            out.frame_indices.numpy(),
            out.timestamps.numpy(),
            out.device_fallback or self.fallback or "",
            out.stream_index,
        )


# What a decode stage's child imports, once per zygote.
DECODE_PRELOAD = ("torch", *DECODER_MODULES, "cps_ray._decode", "cps_ray.pipeline._stages")


def child_frame_decoder(
    config: PatchStreamConfig, num_threads: int, processes_per_gpu: int = 1
) -> FrameDecoder:
    """The :class:`FrameDecoder` of a decode actor's isolated child, using
    the actor's share of the cores (see :func:`share_cores`)."""
    decoder = FrameDecoder(config, num_threads, processes_per_gpu)
    share_cores(num_threads, numba_threads=False)
    return decoder


class DecodeStage:
    """``{"path": [B]}`` -> ``frames`` uint8 ``[B, T, 3, S, S]`` (zeros on error),
    ``frame_indices``, ``timestamps``, ``decode_backend``, ``device_fallback``
    and ``error`` ("" when none).

    With ``isolation="process"`` the decoding runs in a child process, see
    :mod:`cps_ray.pipeline._isolation`. ``gpu_share``: the fraction of a GPU
    each decode actor asks for (sizes the NVDEC cache of its process).
    """

    def __init__(
        self,
        config: PatchStreamConfig,
        ffmpeg_threads: int = 0,
        isolation: str = DEFAULT_ISOLATION,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        gpu_share: float = 0.0,
    ):
        check_stream_config(config)
        check_isolation(isolation, max_attempts)
        self.config = config
        self.decode_backend, self.fallback = resolve_decode(
            config.decode_backend, config.decode_device_id
        )
        threads = ffmpeg_threads or ffmpeg_threads_for(config)
        per_gpu = processes_per_gpu(gpu_share)
        self.runner = contained(
            functools.partial(FrameDecoder, config, threads, per_gpu),
            functools.partial(child_frame_decoder, config, threads, per_gpu),
            isolation=isolation,
            timeout_s=config.decode_timeout_s,
            max_attempts=max_attempts,
            preload=DECODE_PRELOAD,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg = self.config
        paths = _paths(batch)
        n, t, s = len(paths), cfg.sequence_length, cfg.input_size
        frames = np.zeros((n, t, 3, s, s), np.uint8)
        indices = np.full((n, t), -1, np.int64)
        stamps = np.zeros((n, t), np.float64)
        streams = np.full(n, -1, np.int64)
        # "" means no error: a column of only None does not survive Arrow.
        errors: list[str] = [""] * n
        backends = [self.decode_backend] * n
        fallbacks = [self.fallback or ""] * n
        for i, path in enumerate(paths):
            ok, value = self.runner.run(path)
            if not ok:
                errors[i] = value
                continue
            try:
                frames[i], indices[i], stamps[i], fallbacks[i], streams[i] = value
            except Exception as err:  # frames of another shape: never expected
                errors[i] = error_reason(err)
                continue
            if fallbacks[i]:
                backends[i] = "cpu"
        return {
            "path": np.array([transport_path(p) for p in paths], dtype=object),
            "frames": frames,
            "frame_indices": indices,
            "timestamps": stamps,
            "stream_index": streams,
            "decode_backend": np.array(backends, dtype=object),
            "device_fallback": np.array(fallbacks, dtype=object),
            "error": np.array(errors, dtype=object),
        }


class SelectStage:
    """Decoded batch -> the rows of DESIGN.md.

    ``process_backend="auto"`` follows each row's resolved decode backend,
    using the GPU only where this actor has one.
    """

    def __init__(self, config: PatchStreamConfig):
        check_stream_config(config)
        self.config = config
        self.has_cuda = cuda_available()
        if config.process_backend == "auto":
            self.fixed_backend = None
        else:
            self.fixed_backend = resolve_process_backend(
                config.process_backend, config.process_device_id, "cpu"
            )
        if self.fixed_backend != "gpu":
            from .._kernels import cpu

            cpu.warmup()
        if self.fixed_backend == "gpu" or (self.fixed_backend is None and self.has_cuda):
            from .._kernels import cuda

            cuda.warmup(config.process_device_id)

    def backend_for(self, decode_backend: str) -> str:
        if self.fixed_backend is not None:
            return self.fixed_backend
        return "gpu" if decode_backend == "gpu" and self.has_cuda else "cpu"

    def select(self, frames: np.ndarray, path: str, backend: str):
        """One video's selection: in NumPy on the CPU (this process never
        imports torch for it), through torch on a GPU."""
        if backend == "cpu":
            from .._select import select_video_on_cpu

            return select_video_on_cpu(frames, self.config, path)
        from .._select import select_video

        return select_video(frames, self.config, path, backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg = self.config
        rows: list[dict[str, Any]] = []
        for i, path in enumerate(_paths(batch)):
            decode_backend = str(batch["decode_backend"][i])
            fallback = str(batch["device_fallback"][i] or "") or None
            backend = self.backend_for(decode_backend)
            error = batch["error"][i]
            if not isinstance(error, str) or not error:
                try:
                    # meta_motion (the 4th) is not a row column yet.
                    patches, fields, scores, _ = self.select(batch["frames"][i], path, backend)
                    rows.append(
                        make_row(
                            path,
                            patches,
                            fields,
                            scores,
                            batch["frame_indices"][i],
                            batch["timestamps"][i],
                            decode_backend,
                            backend,
                            cfg.output_dtype,
                            fallback,
                            int(batch["stream_index"][i]),
                        )
                    )
                    continue
                except Exception as err:
                    error = error_reason(err)
            rows.append(error_row(path, str(error), cfg, decode_backend, backend, fallback))
        return rows_to_batch(rows)


class FusedStage:
    """Decode and select in one actor, frames never leave its device
    (the default for gpu -> gpu on one device)."""

    def __init__(
        self,
        config: PatchStreamConfig,
        ffmpeg_threads: int = 0,
        isolation: str = DEFAULT_ISOLATION,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        gpu_share: float = 0.0,
    ):
        if ffmpeg_threads and not config.ffmpeg_threads:
            from dataclasses import replace

            config = replace(config, ffmpeg_threads=ffmpeg_threads)
        self.worker = Worker(
            config,
            isolation=isolation,
            max_attempts=max_attempts,
            processes_per_gpu=processes_per_gpu(gpu_share),
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return rows_to_batch([self.worker(path) for path in _paths(batch)])
