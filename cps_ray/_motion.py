"""Global camera motion per clip, for ``motion="global"`` (docs/selection.md, "Camera
motion"): one deterministic estimate per clip, on the CPU, handed to every
selection kernel as one fixed-point warp.

The estimator (:mod:`cps_ray._kernels.motion`, described in
``docs/selection.md``): the green channel summed over blocks of ``S // 56``
pixels, in integers (on the frames' own device, so a GPU clip copies 200 KiB,
not its frames), a three-level pyramid, an exhaustive translation search on
the coarsest level, then a robust Gauss-Newton fit of a similarity on the two
finer ones; a model that does not halve the residual over the overlap, or
moves no pixel by half a pixel, is no motion.

NumPy and Numba only on a NumPy input: a select actor on the CPU never
imports torch.
"""

from __future__ import annotations

import numpy as np

from ._kernels import motion as kernels
from ._kernels.reference import WARP_LIMIT, WARP_ONE, identity_warp, warp_to_motion


def base_factor(size: int) -> int:
    """Pixels of the ``S x S`` frames per pixel of the pyramid's base level."""
    return max(1, size // kernels.BASE_SIZE)


def block_sums(frames) -> np.ndarray:
    """int32 ``[T, h, w]`` on the host: the green channel of uint8
    ``[T, 3, S, S]`` frames summed over blocks of :func:`base_factor` pixels
    (NumPy, or torch on any device: summed there, in integers, so every
    device gives the same sums)."""
    size = frames.shape[-1]
    factor = base_factor(size)
    side = size // factor
    if isinstance(frames, np.ndarray):
        out = np.empty((frames.shape[0], side, side), np.int32)
        kernels.green_sums(np.ascontiguousarray(frames), factor, out)
        return out
    import torch

    green = frames[:, 1, : side * factor, : side * factor].to(torch.int32)
    blocks = green.reshape(-1, side, factor, side, factor).sum(dim=(2, 4), dtype=torch.int32)
    return blocks.cpu().numpy()


def estimate_motion(frames) -> np.ndarray:
    """float64 ``[T, 2, 3]``: per frame ``t`` the similarity ``A_t`` mapping
    pixel ``(x, y)`` of frame ``t`` to ``A_t (x, y, 1)`` in frame ``t - 1``
    (origin at the centre of the top-left pixel), as estimated; the
    identity for frame 0 and wherever no motion is found."""
    sums = block_sums(frames)
    factor = base_factor(frames.shape[-1])
    base = sums.astype(np.float64) / float(factor * factor)
    out = np.empty((sums.shape[0], 6))
    kernels.estimate_clip(base, factor, frames.shape[-1], out)
    return out.reshape(-1, 2, 3)


def global_warp(frames) -> np.ndarray:
    """int64 ``[T, 6]``: :func:`estimate_motion` in the fixed point every
    kernel uses (see :mod:`cps_ray._kernels.reference`)."""
    motion = estimate_motion(frames).reshape(-1, 6)
    warp = np.rint(motion * WARP_ONE).astype(np.int64)
    # A model beyond float32's exact range is no plausible motion: none.
    too_large = np.abs(warp).max(axis=1) >= WARP_LIMIT
    warp[too_large] = identity_warp(int(too_large.sum()))
    return warp


def motion_warp(frames, motion: str) -> tuple[np.ndarray | None, np.ndarray]:
    """``(warp, meta_motion)`` for ``motion`` (``"global"`` or ``"none"``):
    the int64 ``[T, 6]`` warp for the kernels (``None`` for ``"none"``) and
    float32 ``[T, 2, 3]`` ``meta_motion`` on the host (identity rows for ``"none"``)."""
    if motion == "none":
        return None, warp_to_motion(identity_warp(frames.shape[0]))
    warp = global_warp(frames)
    return warp, warp_to_motion(warp)
