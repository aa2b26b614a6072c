"""What a decode returns: :class:`VideoFrames`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoFrames:
    """Frames of one video.

    On the CPU, NumPy arrays: frames uint8 ``[T, 3, H, W]`` (C-contiguous),
    frame_indices int64 ``[T]``, timestamps float64 ``[T]``. On a CUDA
    device, torch tensors: frames on that device, the other two on the CPU.

    frames: uint8 ``[T, 3, H, W]`` (``H = W = input_size`` when it is set).
    frame_indices: positions in display order. timestamps: presentation
    times in seconds.
    num_frames: frames in the video, as the route that succeeded counted them.
    stream_index: the file's stream they come from: the one torchcodec and
    FFmpeg pick by default, never an attached picture, on every route.
    route: which route produced them (``packets``, ``keyframe``,
    ``sequential``; on the GPU also ``header`` and ``scan``; see
    :mod:`cps_ray._decode`).
    """

    frames: Any
    frame_indices: Any
    timestamps: Any
    num_frames: int
    route: str
    # The container's stream the frames come from (see opening.video_stream).
    stream_index: int = 0
    # Why NVDEC could not decode the file when ``auto`` fell back to the CPU.
    device_fallback: str | None = None
    # Decoders that decoded the frames side by side (segments of the plan).
    decoders: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.frames, np.ndarray):
            _check_numpy(self)
        else:
            _check_torch(self)

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(frames, frame_indices, timestamps)`` as NumPy arrays on the host
        (frames copied from the GPU where they are there)."""
        if isinstance(self.frames, np.ndarray):
            return self.frames, self.frame_indices, self.timestamps
        return (self.frames.cpu().numpy(), self.frame_indices.numpy(),
                self.timestamps.numpy())  # fmt: skip


def _check_numpy(out: VideoFrames) -> None:
    frames, indices, stamps = out.frames, out.frame_indices, out.timestamps
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {frames.shape}")
    if not frames.flags.c_contiguous:
        raise ValueError("frames must be C-contiguous")
    t = frames.shape[0]
    for name, value, dtype in (("frame_indices", indices, np.int64),
                               ("timestamps", stamps, np.float64)):  # fmt: skip
        if not isinstance(value, np.ndarray) or value.shape != (t,) or value.dtype != dtype:
            raise ValueError(f"{name} must be a NumPy {np.dtype(dtype).name} [T] array")


def _check_torch(out: VideoFrames) -> None:
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(out.frames, torch.Tensor):
        raise TypeError(f"frames must be a NumPy array or a torch tensor, got {type(out.frames)}")
    frames = out.frames
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}"
        )
    t = frames.shape[0]
    for name, value, dtype in (("frame_indices", out.frame_indices, torch.int64),
                               ("timestamps", out.timestamps, torch.float64)):  # fmt: skip
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or value.shape != (t,):
            raise ValueError(f"{name} must be a torch {dtype} [T] tensor")
