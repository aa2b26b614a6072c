"""In-process API: :func:`decode_only`, :func:`patch_stream` and the
:class:`PatchStream` session, on the per-video core (:mod:`cps_ray._core`)."""

from __future__ import annotations

import dataclasses

from ._config import DecodeConfig, PatchStreamConfig
from ._core import DecodeResult, PatchStream, VideoCore
from .errors import ConfigError

__all__ = ["DecodeResult", "PatchStream", "decode_only", "patch_stream"]


def decode_only(config: DecodeConfig) -> DecodeResult:
    """Decode ``config.sequence_length`` uniform frames of ``config.video_path``.

    Returns a :class:`DecodeResult` whose ``frames`` are a uint8 torch tensor
    ``[T, 3, H, W]`` on the decode device. ``decode_only(DecodeConfig(...,
    input_size=S))`` gives exactly the frames :func:`patch_stream` scores.
    Raises :class:`~cps_ray.DecodeError` for a video that cannot be decoded
    and a ``CpsRayError`` for a backend this node cannot run.
    """
    if not isinstance(config, DecodeConfig):
        raise TypeError(f"decode_only() needs a DecodeConfig, got {type(config).__name__}")
    path = config.require_path()
    core = VideoCore(DecodeConfig(**config.decode_fields()), warm=False)
    out = core.decode(path)
    import torch

    return dataclasses.replace(
        out,
        frames=torch.as_tensor(out.frames),
        frame_indices=torch.as_tensor(out.frame_indices),
        timestamps=torch.as_tensor(out.timestamps),
    )


def patch_stream(config: PatchStreamConfig) -> PatchStream:
    """Decode ``config.video_path`` and keep its ``k_keep`` highest-energy patches.

    Returns a :class:`PatchStream` session (use it as a context manager).
    """
    if not isinstance(config, PatchStreamConfig):
        raise TypeError(f"patch_stream() needs a PatchStreamConfig, got {type(config).__name__}")
    if config.video_path is None:
        raise ConfigError("video_path", None, "patch_stream needs video_path set.")
    return VideoCore(config, warm=False).stream(config.video_path)
