"""``rebuild_clip``: a clip as its kept patches show it, the way a decoder
rebuilds video from coded blocks (docs/selection.md, "Camera motion").

Frame ``t`` starts as the rebuilt frame ``t - 1`` warped by ``A_t`` (the
same fixed-point warp, rounded to the nearest pixel, as the energy; grey 128
where it comes from outside the frame; frame 0 starts all grey), then frame
``t``'s kept patches are pasted over it. With identity motion a dropped
patch repeats the latest kept value at its position, a codec's skipped block.
"""

from __future__ import annotations

import numpy as np

from ._kernels.reference import GREY, motion_to_warp, warp_frame
from .errors import ConfigError


def _host(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device
        values = values.detach().cpu()
        if str(values.dtype) == "torch.bfloat16":
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _pixels(patches: np.ndarray) -> np.ndarray:
    """uint8 pixels from kept patches: uint8 as they are, uint16 as a row
    keeps bf16 (its bits), floats in [0, 1] (``output_dtype``) times 255."""
    if patches.dtype == np.uint8:
        return patches
    if patches.dtype == np.uint16:  # bf16 bits, as rows store them
        patches = (patches.astype(np.uint32) << 16).view(np.float32)
    if not np.issubdtype(patches.dtype, np.floating):
        raise ConfigError("patches", f"dtype {patches.dtype}", "Patches must be uint8, "
                          "bf16 bits (uint16) or floats in [0, 1].")  # fmt: skip
    # Every output dtype holds v / 255 closer than half a step of 1 / 255.
    return np.rint(patches.astype(np.float64) * 255.0).clip(0, 255).astype(np.uint8)


def rebuild_clip(patches, meta_fields, meta_motion, *, input_size: int) -> np.ndarray:
    """Rebuild the ``T`` frames of a clip from its kept patches and motion.

    Args:
        patches: ``[k, 3, p, p]``: uint8, floats in [0, 1] (any
            ``output_dtype``, NumPy or torch on any device), or bf16 bits as
            a row keeps them (uint16).
        meta_fields: int ``[k, 3]`` = (t, row, col) of each patch.
        meta_motion: float ``[T, 2, 3]``: ``A_t`` maps pixel ``(x, y, 1)`` of
            frame t to frame t - 1 (row 0 is not used).
        input_size: S, the frames' side; a multiple of p.

    Returns:
        uint8 ``[T, 3, S, S]`` NumPy: frame t is the rebuilt frame t - 1
        warped by ``A_t`` (grey 128 where that falls outside; all grey for
        frame 0) with frame t's kept patches pasted over it.
    """
    pixels = _pixels(_host(patches))
    fields = _host(meta_fields).astype(np.int64)
    motion = _host(meta_motion)
    if motion.ndim != 3 or motion.shape[0] < 1 or motion.shape[1:] != (2, 3):
        raise ConfigError("meta_motion", f"shape {motion.shape}", "It must be [T, 2, 3].")
    warp = motion_to_warp(motion)
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3]:
        raise ConfigError("patches", f"shape {pixels.shape}", "Patches must be [k, 3, p, p].")
    k, p = pixels.shape[0], pixels.shape[2]
    if fields.shape != (k, 3):
        raise ConfigError("meta_fields", f"shape {fields.shape}", f"It must be [k, 3] = {(k, 3)}.")
    if not isinstance(input_size, int) or input_size < 1 or input_size % p:
        raise ConfigError("input_size", input_size, f"It must be a multiple of the patch size {p}.")
    num_t, g = warp.shape[0], input_size // p
    if k and (fields.min() < 0 or fields[:, 0].max() >= num_t or fields[:, 1:].max() >= g):
        raise ConfigError("meta_fields", "out of range", f"(t, row, col) must lie in "
                          f"[0, {num_t}) x [0, {g}) x [0, {g}).")  # fmt: skip
    frames = np.empty((num_t, 3, input_size, input_size), np.uint8)
    state = np.full((3, input_size, input_size), GREY, np.uint8)
    for t in range(num_t):
        if t > 0:
            state = warp_frame(state, warp[t])
        for i in np.flatnonzero(fields[:, 0] == t):
            r, c = fields[i, 1] * p, fields[i, 2] * p
            state[:, r : r + p, c : c + p] = pixels[i]
        frames[t] = state
    return frames
