"""The per-video work both ``local_stream`` and the Ray stages run: resolve
``auto`` once on this node, warm the kernels, then turn a path into a row.
"""

from __future__ import annotations

from typing import Any

from ..api import run_patch_stream
from ..config import PatchStreamConfig, resolve_backends
from ..decode import default_ffmpeg_threads
from ..errors import ConfigError
from .rows import error_row, success_row


def check_stream_config(config: PatchStreamConfig) -> None:
    if not isinstance(config, PatchStreamConfig):
        raise TypeError(f"config must be a PatchStreamConfig, got {type(config).__name__}")
    if config.video_path is not None:
        raise ConfigError(
            "video_path",
            config.video_path,
            "Leave it None here: each input brings its own path.",
        )


class VideoWorker:
    """Turns one path into one row; never raises for a bad video."""

    def __init__(self, config: PatchStreamConfig, concurrent_videos: int = 1):
        check_stream_config(config)
        self.config = config
        # Resolved on this node, when the worker starts; an explicit gpu that
        # cannot run here fails now, for the whole run, not per video.
        self.resolved = resolve_backends(config)
        self.num_threads = config.ffmpeg_threads or default_ffmpeg_threads(concurrent_videos)
        if self.resolved.process_backend == "cpu":
            from ..kernels import cpu

            cpu.warmup()

    def __call__(self, path: str) -> dict[str, Any]:
        try:
            cfg = self.config.__class__(**{**_fields(self.config), "video_path": path})
            with run_patch_stream(cfg, self.resolved, self.num_threads) as session:
                return success_row(session)
        except Exception as err:  # every failure becomes an error row
            return error_row(
                path,
                err,
                self.config,
                self.resolved.decode_backend,
                self.resolved.process_backend,
            )


def _fields(config) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}
