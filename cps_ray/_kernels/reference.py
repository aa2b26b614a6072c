"""The oracle: the energy and selection rule (docs/selection.md) in plain NumPy.

Slow and obviously correct; every other backend is compared with it.

Camera motion enters as a *warp*: int64 ``[T, 6]``, per frame ``t`` the
global motion ``A_t`` in fixed point, ``(a, b, tx, c, d, ty) * 2**WARP_BITS``,
mapping pixel ``(x, y)`` of frame ``t`` (x right, y down, origin at the
centre of the top-left pixel) to ``(a x + b y + tx, c x + d y + ty)`` in frame
``t - 1``, rounded to the nearest pixel (halves up). Row 0 is unused: frame 0
is compared with grey. ``warp=None`` is the identity for every frame.
"""

from __future__ import annotations

import numpy as np

# The frame before the first: every value mid-grey, as a codec that starts
# from nothing codes its first frame in full.
GREY = 128
# The names of the rules, recorded in every manifest. Outputs written before
# 2026-11 scored frame 0 by its variance; their manifests have no rule.
ENERGY_RULE = "residual-grey128"
LEGACY_ENERGY_RULE = "variance-first-frame"
# motion="global": the residual after global motion compensation, with the
# motion of cps_ray._motion's estimator (v1: a new estimator is a new rule).
GLOBAL_MOTION_ENERGY_RULE = "residual-grey128-global-motion-v1"
ENERGY_RULES = {"none": ENERGY_RULE, "global": GLOBAL_MOTION_ENERGY_RULE}

# Fixed point of the warp: 14 fractional bits keep the rounded positions
# exact to 1/16000 of a pixel per pixel of distance, and every value below
# 1024 in magnitude exactly representable in float32 (meta_motion).
WARP_BITS = 14
WARP_ONE = 1 << WARP_BITS
WARP_HALF = 1 << (WARP_BITS - 1)
IDENTITY_WARP = (WARP_ONE, 0, 0, 0, WARP_ONE, 0)
# The largest |value| a warp may hold: float32 meta_motion holds it exactly.
WARP_LIMIT = 1 << 24


def identity_warp(num_frames: int) -> np.ndarray:
    """int64 ``[T, 6]``: no motion on any frame."""
    return np.tile(np.array(IDENTITY_WARP, np.int64), (num_frames, 1))


def warp_to_motion(warp: np.ndarray) -> np.ndarray:
    """int64 ``[T, 6]`` fixed point -> float32 ``[T, 2, 3]`` (exact)."""
    warp = np.asarray(warp, np.int64)
    return (warp.astype(np.float64) / WARP_ONE).astype(np.float32).reshape(-1, 2, 3)


def motion_to_warp(motion) -> np.ndarray:
    """float ``[T, 2, 3]`` (``meta_motion``) -> int64 ``[T, 6]``, rounded to
    the fixed point; the inverse of :func:`warp_to_motion`."""
    values = np.asarray(motion, np.float64).reshape(-1, 6)
    if not np.all(np.abs(values) < WARP_LIMIT / WARP_ONE):
        from ..errors import ConfigError

        raise ConfigError("meta_motion", "values out of range", "They must lie in (-1024, 1024).")
    return np.rint(values * WARP_ONE).astype(np.int64)


def source_positions(warp_row, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ys, xs)`` int64 ``[S, S]``: where pixel ``(y, x)`` of frame ``t``
    samples frame ``t - 1`` under one warp row; may fall outside ``[0, S)``."""
    a, b, tx, c, d, ty = (int(v) for v in warp_row)
    y, x = np.mgrid[0:size, 0:size].astype(np.int64)
    xs = (a * x + b * y + tx + WARP_HALF) >> WARP_BITS
    ys = (c * x + d * y + ty + WARP_HALF) >> WARP_BITS
    return ys, xs


def warp_frame(frame: np.ndarray, warp_row) -> np.ndarray:
    """uint8 ``[C, S, S]``: ``frame`` (frame ``t - 1``) sampled where frame
    ``t``'s pixels come from, mid-grey where that is outside it."""
    size = frame.shape[-1]
    ys, xs = source_positions(warp_row, size)
    inside = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
    out = np.full(frame.shape, GREY, np.uint8)
    out[:, inside] = frame[:, ys[inside], xs[inside]]
    return out


def patch_energies(frames: np.ndarray, patch_size: int, warp=None) -> np.ndarray:
    """int64 ``[T * G * G]`` energies of uint8 ``[T, 3, S, S]`` frames, flat
    index ``t * N + r * G + c``: ``n * sum_ch sum (x_t - x_{t-1})^2`` with
    ``n = p * p``, ``x_{-1} = 128`` and ``x_{t-1}`` frame ``t - 1`` warped
    by ``warp[t]`` (int64 ``[T, 6]``; ``None``: no motion)."""
    t, ch, s, _ = frames.shape
    p = patch_size
    g = s // p
    n = p * p
    x = frames.astype(np.int64)
    if warp is None:
        before = np.concatenate([np.full_like(x[:1], GREY), x[:-1]])
    else:
        warped = [warp_frame(frames[i - 1], warp[i]) for i in range(1, t)]
        before = np.stack([np.full_like(frames[0], GREY), *warped]).astype(np.int64)
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
    frames: np.ndarray,
    patch_size: int,
    k_keep: int,
    *,
    flat: np.ndarray | None = None,
    warp: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(patches_u8 [k, 3, p, p], flat_indices int64 [k], energies int64 [k])``.

    ``flat`` (ascending int64 indices) replaces the top-k by a choice made
    elsewhere (the random and uniform baselines); energies are still reported.
    ``warp``: int64 ``[T, 6]`` camera motion (see the module), or ``None``.
    """
    energies = patch_energies(frames, patch_size, warp)
    if flat is None:
        flat = top_k(energies, k_keep)
    return gather(frames, flat, patch_size), flat, energies[flat]
