"""The per-video work both ``local_stream`` and the Ray stages run: resolve
``auto`` once on this node, warm the kernels, then turn a path into a row;
:class:`VideoWorker` is that work, :class:`Worker` runs it in this process or
in isolated child processes (see :mod:`cps_ray.pipeline._isolation`).
"""

from __future__ import annotations

import functools
from typing import Any

from .._config import PatchStreamConfig, resolve_backends
from .._devices import (
    DECODER_MODULES,
    default_ffmpeg_threads,
    ffmpeg_threads_for,
    load_decoders,
    size_nvdec_cache,
)
from ..errors import ConfigError
from ._isolation import check_isolation, contained
from ._rows import error_row


def check_stream_config(config: PatchStreamConfig) -> None:
    if not isinstance(config, PatchStreamConfig):
        raise TypeError(f"config must be a PatchStreamConfig, got {type(config).__name__}")
    if config.video_path is not None:
        raise ConfigError(
            "video_path",
            config.video_path,
            "Leave it None here: each input brings its own path.",
        )


def warm_up(resolved, config: PatchStreamConfig, processes_per_gpu: int = 1) -> None:
    """What a worker does once when it starts, not in its first video: load
    the decoders' libraries, size the NVDEC cache for the GPU's decode processes,
    compile (or load) the selection kernel it will run."""
    load_decoders()
    if resolved.decode_backend == "gpu":
        size_nvdec_cache(processes_per_gpu)
    if resolved.process_backend == "gpu":
        from .._kernels import cuda

        cuda.warmup(config.process_device_id)
    elif resolved.process_backend == "cpu":
        from .._kernels import cpu

        cpu.warmup()


class VideoWorker:
    """Turns one path into one row; never raises for a bad video.

    ``processes_per_gpu``: decode processes sharing the GPU (sizes the NVDEC cache).
    """

    def __init__(
        self, config: PatchStreamConfig, concurrent_videos: int = 1, *, processes_per_gpu: int = 1
    ):
        check_stream_config(config)
        self.config = config
        # Resolved on this node, when the worker starts; an explicit gpu that
        # cannot run here fails now, for the whole run, not per video.
        self.resolved = resolve_backends(config)
        self.num_threads = ffmpeg_threads_for(config, concurrent_videos)
        warm_up(self.resolved, config, processes_per_gpu)

    def __call__(self, path: str) -> dict[str, Any]:
        from .._core import video_row

        return video_row(self.config, self.resolved, self.num_threads, path)


def share_cores(threads: int, *, numba_threads: bool = True) -> None:
    """Size an isolated child's compute pools: ``threads`` Numba threads (its
    share of the cores; skipped with ``numba_threads=False``, a child that
    only decodes) and one torch thread.

    Threads of one process share torch's and Numba's pools; separate
    processes do not, and pools sized to every core (the default)
    oversubscribe the machine. torch only stacks and converts small tensors
    here, and its idle OpenMP threads spin on the cores FFmpeg decodes on: one
    torch thread made a child 30% faster (13.3 vs 10.3 videos/s on 2 cores),
    and two children on two cores twice as fast.

    Call it once the worker is built: starting Numba's OpenMP pool (its
    warm-up, or ``set_num_threads``) sets OpenMP's thread count back to the
    cores, torch's included. In a child forked from a zygote it did, and two
    children ran 2.4 times slower.
    """
    if numba_threads:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    import torch

    torch.set_num_threads(1)


# What an isolated child of :class:`Worker` imports (and loads), once per zygote.
VIDEO_PRELOAD = (
    "torch",
    *DECODER_MODULES,
    "numba",
    "cps_ray._core",
    "cps_ray._kernels.cpu:load_serial",
    "cps_ray.pipeline._worker",
)


def child_video_worker(
    config: PatchStreamConfig, concurrent_videos: int, processes_per_gpu: int = 1
) -> VideoWorker:
    """The :class:`VideoWorker` of an isolated child, one of ``concurrent_videos``."""
    worker = VideoWorker(config, concurrent_videos, processes_per_gpu=processes_per_gpu)
    share_cores(default_ffmpeg_threads(concurrent_videos))
    return worker


class Worker:
    """Turns one path into one row, never raising: the per-video core
    (:class:`VideoWorker`) behind the isolation the caller asked for
    (:func:`~cps_ray.pipeline._isolation.contained`). ``concurrent_videos``
    callers may use it at once (threads): as many isolated children, or one
    :class:`VideoWorker` they share. ``processes_per_gpu``: workers like this
    one sharing a GPU (pipeline actors); isolated children multiply it."""

    def __init__(
        self,
        config: PatchStreamConfig,
        concurrent_videos: int = 1,
        *,
        isolation: str,
        max_attempts: int,
        processes_per_gpu: int = 1,
    ):
        check_stream_config(config)
        check_isolation(isolation, max_attempts)
        self.config = config
        # Checked here too, so a config this node cannot run fails at once.
        self.resolved = resolve_backends(config)
        self.runner = contained(
            functools.partial(
                VideoWorker, config, concurrent_videos, processes_per_gpu=processes_per_gpu
            ),
            functools.partial(
                child_video_worker, config, concurrent_videos, processes_per_gpu * concurrent_videos
            ),
            isolation=isolation,
            timeout_s=config.decode_timeout_s,
            max_attempts=max_attempts,
            size=concurrent_videos,
            preload=VIDEO_PRELOAD,
        )

    def __call__(self, path: str) -> dict[str, Any]:
        ok, value = self.runner.run(path)
        if ok:
            return value
        resolved = self.resolved
        return error_row(
            path,
            value,
            self.config,
            resolved.decode_backend,
            resolved.process_backend,
            resolved.decode_fallback,
        )

    def close(self) -> None:
        self.runner.close()
