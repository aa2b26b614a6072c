"""In-process API: :func:`decode_only`, :func:`patch_stream` and the
:class:`PatchStream` session (the per-video work is :mod:`cps_ray._core`)."""

from __future__ import annotations

from ._config import DecodeConfig, PatchStreamConfig, resolve_backends
from ._core import DecodeResult, PatchStream, decode_video, run_patch_stream
from ._decode import ffmpeg_threads_for
from .errors import ConfigError

__all__ = ["DecodeResult", "PatchStream", "decode_only", "patch_stream"]


def decode_only(config: DecodeConfig) -> DecodeResult:
    """Decode ``config.sequence_length`` uniform frames of ``config.video_path``.

    ``decode_only(DecodeConfig(..., input_size=S))`` gives exactly the frames
    :func:`patch_stream` scores. Raises :class:`~cps_ray.DecodeError` for a
    video that cannot be decoded and a ``CpsRayError`` for a backend this
    node cannot run.
    """
    if not isinstance(config, DecodeConfig):
        raise TypeError(f"decode_only() needs a DecodeConfig, got {type(config).__name__}")
    config.require_path()
    resolved = resolve_backends(config)
    threads = ffmpeg_threads_for(config)
    return decode_video(config, resolved, threads)


def patch_stream(config: PatchStreamConfig) -> PatchStream:
    """Decode ``config.video_path`` and keep its ``k_keep`` highest-energy patches.

    Returns a :class:`PatchStream` session (use it as a context manager).
    """
    if not isinstance(config, PatchStreamConfig):
        raise TypeError(f"patch_stream() needs a PatchStreamConfig, got {type(config).__name__}")
    if config.video_path is None:
        raise ConfigError("video_path", None, "patch_stream needs video_path set.")
    resolved = resolve_backends(config)
    threads = ffmpeg_threads_for(config)
    return run_patch_stream(config, resolved, threads)
