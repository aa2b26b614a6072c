"""The per-video core behind the isolation a caller asked for:
:class:`Worker` turns a path into a row (``local_stream``, the fused
stage), :class:`FrameWorker` into decoded frames (the decode stage of a
split pipeline). Both never raise for a bad video; an explicit backend this
node cannot serve fails when they are built.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from .._config import PatchStreamConfig
from .._core import DecodeResult, VideoCore
from .._devices import DECODER_MODULES
from ..errors import ConfigError
from ._isolation import contained

# What every child imports once, in the fork server: the decoders, the
# kernels and the core. A GPU adds torch and torchcodec.
CORE_PRELOAD = ("numpy", *DECODER_MODULES, "numba", "cps_ray._core", "cps_ray._select",
                "cps_ray._kernels.cpu", "cps_ray._decode")  # fmt: skip
GPU_PRELOAD = ("torch", "torchcodec.decoders")


def check_stream_config(config: PatchStreamConfig) -> None:
    if not isinstance(config, PatchStreamConfig):
        raise TypeError(f"config must be a PatchStreamConfig, got {type(config).__name__}")
    if config.video_path is not None:
        raise ConfigError(
            "video_path", config.video_path, "Leave it None here: each input brings its own path."
        )


def preload_for(core: VideoCore) -> tuple[str, ...]:
    """The modules children of ``core``'s worker import in the fork server."""
    resolved = core.resolved
    needs_torch = "gpu" in (resolved.decode_backend, resolved.process_backend)
    return CORE_PRELOAD + (GPU_PRELOAD if needs_torch else ())


def share_cores(threads: int) -> None:
    """Size an isolated child's compute pools: ``threads`` Numba threads (its
    share of the cores) and one torch thread. Children are separate
    processes: pools sized to every core would oversubscribe the machine
    (two children on two cores ran 2.4 times slower)."""
    import sys

    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _child_core(config, concurrent_videos, cores, processes_per_gpu, select=True) -> VideoCore:
    core = VideoCore(config, concurrent_videos=concurrent_videos, cores=cores, select=select,
                     processes_per_gpu=processes_per_gpu)  # fmt: skip
    share_cores(core.num_threads)
    return core


def _row_target(*args):
    return _child_core(*args).row


def _frames_target(*args):
    return functools.partial(frames_on_host, _child_core(*args, select=False))


def frames_on_host(core: VideoCore, path: str) -> DecodeResult:
    """``core.decode(path)`` with its arrays as NumPy (to cross a process or
    Ray's object store); raises for a bad video."""
    out = core.decode(path)
    frames = out.frames if isinstance(out.frames, np.ndarray) else out.frames.cpu().numpy()
    return dataclasses.replace(out, frames=frames, frame_indices=np.asarray(out.frame_indices),
                               timestamps=np.asarray(out.timestamps))  # fmt: skip


class Worker:
    """Turns a path into a row, never raising: a :class:`VideoCore` in this
    process (``isolation="none"``) or in ``concurrent_videos`` isolated
    children (``"process"``), shared by the caller's threads.

    ``cores``: what the worker holds (default: this process's usable cores);
    ``processes_per_gpu``: workers like this one sharing a GPU."""

    def __init__(self, config: PatchStreamConfig, concurrent_videos: int = 1, *,
                 isolation: str, max_attempts: int, cores: float | None = None,
                 processes_per_gpu: int = 1):  # fmt: skip
        check_stream_config(config)
        # Resolved here, once, so a config this node cannot run fails at once;
        # the error rows this process writes record it.
        self.core = VideoCore(config, concurrent_videos=concurrent_videos, cores=cores,
                              warm=isolation == "none",
                              processes_per_gpu=processes_per_gpu)  # fmt: skip
        children = processes_per_gpu * concurrent_videos
        self.runner = contained(
            lambda: self.core.row,
            functools.partial(_row_target, config, concurrent_videos, cores, children),
            isolation=isolation,
            timeout_s=config.decode_timeout_s,
            max_attempts=max_attempts,
            size=concurrent_videos,
            preload=preload_for(self.core),
        )

    def __call__(self, path: str) -> dict[str, Any]:
        ok, value = self.runner.run(path)
        return value if ok else self.core.error_row(path, value)

    def close(self) -> None:
        self.runner.close()


class FrameWorker:
    """Turns a path into ``(True, DecodeResult with NumPy arrays)`` or
    ``(False, (reason, kind))``: the decode half, isolated as asked."""

    def __init__(self, config: PatchStreamConfig, *, isolation: str, max_attempts: int,
                 cores: float | None = None, processes_per_gpu: int = 1):  # fmt: skip
        check_stream_config(config)
        self.core = VideoCore(config, cores=cores, select=False, warm=isolation == "none",
                              processes_per_gpu=processes_per_gpu)  # fmt: skip
        self.runner = contained(
            lambda: functools.partial(frames_on_host, self.core),
            functools.partial(_frames_target, config, 1, cores, processes_per_gpu),
            isolation=isolation,
            timeout_s=config.decode_timeout_s,
            max_attempts=max_attempts,
            preload=preload_for(self.core),
        )

    def __call__(self, path: str) -> tuple[bool, Any]:
        return self.runner.run(path)
