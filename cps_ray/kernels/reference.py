"""The oracle: DESIGN.md's energy and selection rule in plain NumPy.

Slow and obviously correct; every other backend is compared with it.
"""

from __future__ import annotations

import numpy as np


def patch_energies(frames: np.ndarray, patch_size: int) -> np.ndarray:
    """int64 ``[T * G * G]`` energies of uint8 ``[T, 3, S, S]`` frames, flat
    index ``t * N + r * G + c``.

    t = 0: ``sum_ch (n * sum x^2 - (sum x)^2)``;
    t >= 1: ``n * sum_ch sum (x_t - x_{t-1})^2``, with ``n = p * p``.
    """
    t, ch, s, _ = frames.shape
    p = patch_size
    g = s // p
    n = p * p
    # [T, C, G, p, G, p] -> [T, G, G, C, p*p]
    x = frames.astype(np.int64).reshape(t, ch, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
    x = x.reshape(t, g, g, ch, n)
    energies = np.empty((t, g, g), dtype=np.int64)
    first = x[0]
    energies[0] = (n * (first**2).sum(-1) - first.sum(-1) ** 2).sum(-1)
    if t > 1:
        diff = x[1:] - x[:-1]
        energies[1:] = n * (diff**2).sum(-1).sum(-1)
    return energies.reshape(-1)


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
    frames: np.ndarray, patch_size: int, k_keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(patches_u8 [k, 3, p, p], flat_indices int64 [k], energies int64 [k])``."""
    energies = patch_energies(frames, patch_size)
    flat = top_k(energies, k_keep)
    return gather(frames, flat, patch_size), flat, energies[flat]
