"""Numba CPU kernel: energies in parallel over patches, an exact top-k with
the tie rule in O(T*N), and the gather. Same wrapper signature as
``kernels/cuda.py``.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def _energies(frames, patch_size, out):
    num_t, num_ch, size, _ = frames.shape
    p = patch_size
    g = size // p
    n_patches = g * g
    n = p * p
    for idx in prange(num_t * n_patches):
        t = idx // n_patches
        rc = idx - t * n_patches
        y0 = (rc // g) * p
        x0 = (rc - (rc // g) * g) * p
        energy = np.int64(0)
        if t == 0:
            for ch in range(num_ch):
                s = np.int64(0)
                s2 = np.int64(0)
                for y in range(y0, y0 + p):
                    for x in range(x0, x0 + p):
                        v = np.int64(frames[0, ch, y, x])
                        s += v
                        s2 += v * v
                energy += n * s2 - s * s
        else:
            acc = np.int64(0)
            for ch in range(num_ch):
                for y in range(y0, y0 + p):
                    for x in range(x0, x0 + p):
                        d = np.int64(frames[t, ch, y, x]) - np.int64(frames[t - 1, ch, y, x])
                        acc += d * d
            energy = n * acc
        out[idx] = energy


@njit(cache=True, nogil=True)
def _top_k(energies, k_keep):
    total = energies.size
    out = np.empty(k_keep, dtype=np.int64)
    if k_keep == total:
        for i in range(total):
            out[i] = i
        return out
    # The k-th largest value; everything above it is kept, and the first
    # (smallest-index) ties at it fill the remaining slots.
    threshold = np.partition(energies, total - k_keep)[total - k_keep]
    above = 0
    for i in range(total):
        if energies[i] > threshold:
            above += 1
    ties_left = k_keep - above
    j = 0
    for i in range(total):
        e = energies[i]
        if e > threshold:
            out[j] = i
            j += 1
        elif e == threshold and ties_left > 0:
            out[j] = i
            j += 1
            ties_left -= 1
    return out


@njit(parallel=True, cache=True, nogil=True)
def _gather(frames, flat, patch_size, out):
    p = patch_size
    g = frames.shape[-1] // p
    n_patches = g * g
    for i in prange(flat.size):
        f = flat[i]
        t = f // n_patches
        rc = f - t * n_patches
        y0 = (rc // g) * p
        x0 = (rc - (rc // g) * g) * p
        for ch in range(frames.shape[1]):
            for y in range(p):
                for x in range(p):
                    out[i, ch, y, x] = frames[t, ch, y0 + y, x0 + x]


# The "workqueue" threading layer (used where neither OpenMP nor TBB is
# available) aborts when two threads run parallel kernels at once.
_workqueue_lock = threading.Lock()


def _run(frames, patch_size, k_keep):
    energies = np.empty(frames.shape[0] * (frames.shape[-1] // patch_size) ** 2, np.int64)
    _energies(frames, patch_size, energies)
    flat = _top_k(energies, k_keep)
    patches = np.empty((k_keep, frames.shape[1], patch_size, patch_size), np.uint8)
    _gather(frames, flat, patch_size, patches)
    return patches, flat, energies[flat]


def select(
    frames: np.ndarray, patch_size: int, k_keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 ``[T, 3, S, S]`` (C-contiguous) -> ``(patches_u8 [k, 3, p, p],
    flat_indices int64 [k], energies int64 [k])``, on the CPU."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if _layer_is_workqueue():
        with _workqueue_lock:
            return _run(frames, int(patch_size), int(k_keep))
    return _run(frames, int(patch_size), int(k_keep))


_layer: str | None = None


def _layer_is_workqueue() -> bool:
    global _layer
    if _layer is None:
        warmup()
    return _layer == "workqueue"


def warmup() -> None:
    """Compile (or load from cache) every kernel now; call when a worker starts."""
    global _layer
    with _workqueue_lock:
        _run(np.zeros((2, 3, 4, 4), np.uint8), 2, 3)
        if _layer is None:
            _layer = numba.threading_layer()
