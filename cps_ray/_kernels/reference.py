"""The oracle: DESIGN.md's energy and selection rule in plain NumPy.

Slow and obviously correct; every other backend is compared with it.
"""

from __future__ import annotations

import numpy as np

# The frame before the first: every value mid-grey, as a codec that starts
# from nothing codes its first frame in full.
GREY = 128
# The name of this rule, recorded in every manifest. Outputs written before
# 2026-11 scored frame 0 by its variance; their manifests have no rule.
ENERGY_RULE = "residual-grey128"
LEGACY_ENERGY_RULE = "variance-first-frame"


def patch_energies(frames: np.ndarray, patch_size: int) -> np.ndarray:
    """int64 ``[T * G * G]`` energies of uint8 ``[T, 3, S, S]`` frames, flat
    index ``t * N + r * G + c``: ``n * sum_ch sum (x_t - x_{t-1})^2`` with
    ``n = p * p`` and ``x_{-1} = 128``."""
    t, ch, s, _ = frames.shape
    p = patch_size
    g = s // p
    n = p * p
    x = frames.astype(np.int64)
    before = np.concatenate([np.full_like(x[:1], GREY), x[:-1]])
    d2 = (x - before) ** 2
    # [T, C, G, p, G, p] -> sum over channel and pixels -> [T, G, G]
    per_patch = d2.reshape(t, ch, g, p, g, p).sum(axis=(1, 3, 5))
    return (n * per_patch).reshape(-1)


def top_k(energies: np.ndarray, k_keep: int) -> np.ndarray:
    """int64 ``[k]`` flat indices of the ``k`` largest energies, smaller index
    first on ties, returned in ascending index order."""
    order = np.lexsort((np.arange(energies.size), -energies))
    return np.sort(order[:k_keep]).astype(np.int64)


def gather(frames: np.ndarray, flat: np.ndarray, patch_size: int) -> np.ndarray:
    """uint8 ``[k, 3, p, p]``: ``frames[t, :, r*p:(r+1)*p, c*p:(c+1)*p]``."""
    p = patch_size
    g = frames.shape[-1] // p
    out = np.empty((len(flat), frames.shape[1], p, p), dtype=np.uint8)
    for i, f in enumerate(flat):
        t, rc = divmod(int(f), g * g)
        r, c = divmod(rc, g)
        out[i] = frames[t, :, r * p : (r + 1) * p, c * p : (c + 1) * p]
    return out


def select(
    frames: np.ndarray, patch_size: int, k_keep: int, *, flat: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(patches_u8 [k, 3, p, p], flat_indices int64 [k], energies int64 [k])``.

    ``flat`` (ascending int64 indices) replaces the top-k by a choice made
    elsewhere (the random and uniform baselines); energies are still reported.
    """
    energies = patch_energies(frames, patch_size)
    if flat is None:
        flat = top_k(energies, k_keep)
    return gather(frames, flat, patch_size), flat, energies[flat]
