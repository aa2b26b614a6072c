"""The Ray Data stages as plain callables over NumPy batches: the two halves
of the per-video core (:class:`DecodeStage`: paths -> frames;
:class:`SelectStage`: frames -> rows) and both in one actor
(:class:`FusedStage`). Nothing here imports ``ray``; the actor pools around
them are built in :mod:`cps_ray.pipeline._dataset`.

Each stage builds its core when its actor starts: ``auto`` is resolved there,
on its own node (inside an actor the visible GPUs are the ones Ray
assigned), and recorded in every row.
"""

from __future__ import annotations

import numpy as np

from .._config import PatchStreamConfig
from .._core import DecodeResult, VideoCore
from .._devices import processes_per_gpu
from .._rows import local_path, rows_to_batch, transport_path
from ._isolation import DEFAULT_ISOLATION, DEFAULT_MAX_ATTEMPTS
from ._worker import FrameWorker, Worker, check_stream_config


def _paths(batch: dict[str, np.ndarray]) -> list[str]:
    return [local_path(str(p)) for p in batch["path"]]


class DecodeStage:
    """``{"path": [B]}`` -> ``frames`` uint8 ``[B, T, 3, S, S]`` (zeros on
    error), ``frame_indices``, ``timestamps``, ``stream_index``,
    ``decode_backend``, ``device_fallback``, ``error`` and ``error_kind``
    ("" when none: a column of only None does not survive Arrow).

    ``cpus``: the CPUs each actor holds (its FFmpeg threads); ``gpu_share``:
    the fraction of a GPU each holds (sizes the NVDEC cache of its process).
    """

    def __init__(self, config: PatchStreamConfig, cpus: float = 1.0,
                 isolation: str = DEFAULT_ISOLATION, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 gpu_share: float = 0.0):  # fmt: skip
        self.config = config
        self.worker = FrameWorker(
            config,
            isolation=isolation,
            max_attempts=max_attempts,
            cores=cpus,
            processes_per_gpu=processes_per_gpu(gpu_share),
        )
        self.resolved = self.worker.core.resolved

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg, resolved = self.config, self.resolved
        paths = _paths(batch)
        n, t, s = len(paths), cfg.sequence_length, cfg.input_size
        out = {
            "path": np.array([transport_path(p) for p in paths], dtype=object),
            "frames": np.zeros((n, t, 3, s, s), np.uint8),
            "frame_indices": np.full((n, t), -1, np.int64),
            "timestamps": np.zeros((n, t), np.float64),
            "stream_index": np.full(n, -1, np.int64),
            "decode_backend": np.array([resolved.decode_backend] * n, dtype=object),
            "device_fallback": np.array([resolved.decode_fallback or ""] * n, dtype=object),
            "error": np.array([""] * n, dtype=object),
            "error_kind": np.array([""] * n, dtype=object),
        }
        for i, path in enumerate(paths):
            ok, value = self.worker(path)
            if not ok:
                out["error"][i], out["error_kind"][i] = value
                continue
            out["frames"][i] = value.frames
            out["frame_indices"][i] = value.frame_indices
            out["timestamps"][i] = value.timestamps
            out["stream_index"][i] = value.stream_index
            out["decode_backend"][i] = value.decode_backend
            out["device_fallback"][i] = value.device_fallback or ""
        return out


class SelectStage:
    """A :class:`DecodeStage` batch -> rows: the select half of the core."""

    def __init__(self, config: PatchStreamConfig):
        check_stream_config(config)
        self.core = VideoCore(config, decode=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for i, path in enumerate(_paths(batch)):
            backend = str(batch["decode_backend"][i])
            fallback = str(batch["device_fallback"][i] or "") or None
            error = batch["error"][i]
            if isinstance(error, str) and error:
                why = (error, str(batch["error_kind"][i]) or "internal")
                rows.append(self.core.error_row(path, why, backend, fallback))
                continue
            decoded = DecodeResult(
                path=path, frames=batch["frames"][i], frame_indices=batch["frame_indices"][i],
                timestamps=batch["timestamps"][i], decode_backend=backend,
                decode_device="cpu", num_frames=0, route="", decode_seconds=0.0,
                device_fallback=fallback, stream_index=int(batch["stream_index"][i]),
            )  # fmt: skip
            rows.append(self.core.select_row(decoded))
        return rows_to_batch(rows)


class FusedStage:
    """Decode and select in one actor: frames never leave its process (or
    its isolated child), nor its device."""

    def __init__(self, config: PatchStreamConfig, cpus: float = 1.0,
                 isolation: str = DEFAULT_ISOLATION, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 gpu_share: float = 0.0):  # fmt: skip
        self.worker = Worker(config, isolation=isolation, max_attempts=max_attempts, cores=cpus,
                             processes_per_gpu=processes_per_gpu(gpu_share))  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return rows_to_batch([self.worker(path) for path in _paths(batch)])
