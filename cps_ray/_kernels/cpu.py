"""Numba CPU kernel: energies in one sweep over the frames, an exact top-k
with the tie rule by radix select, and a gather that writes the output
dtype's bits through a lookup table. Same wrapper signature as
``kernels/cuda.py``.

Per clip the work is: read each pixel of frames ``t`` and ``t - 1`` once per
row sweep (contiguous, vectorisable int32 arithmetic), a histogram pass or
two over the ``T * N`` energies, and ``k * 3 * p * p`` table lookups.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from .reference import GREY, WARP_BITS, WARP_HALF, WARP_ONE, identity_warp

# 11-bit digits: energies are below 2**33 (n * 3 * p * p * 255**2 for p <= 64
# stays under 2**45), so three passes at most, usually one or two.
_RADIX_BITS = 11
_RADIX_BINS = 1 << _RADIX_BITS


@njit(cache=True, nogil=True, inline="always")
def _is_identity(row):
    return (
        row[0] == WARP_ONE and row[1] == 0 and row[2] == 0
        and row[3] == 0 and row[4] == WARP_ONE and row[5] == 0
    )  # fmt: skip


@njit(parallel=True, cache=True, nogil=True)
def _energies(frames, patch_size, warp, out):
    # frames uint8 [T, C, S, S], warp int64 [T, 6] (kernels/reference.py)
    # -> out int64 [T * G * G]. One job per (frame, patch row): squared
    # residuals summed down the patch's rows per column (a contiguous loop
    # over S), then across each patch's columns.
    num_t, num_ch, size, _ = frames.shape
    p = patch_size
    g = size // p
    n = np.int64(p * p)
    planes = frames.reshape(num_t, num_ch, size * size)
    for job in prange(num_t * g):
        t = job // g
        r = job - t * g
        # int32 is enough: at most 3 * p * 255**2 per column for p <= 64.
        columns = np.zeros(size, np.int32)
        grey = np.int32(GREY)
        if t == 0 or _is_identity(warp[t]):
            for ch in range(num_ch):
                for y in range(r * p, r * p + p):
                    row = frames[t, ch, y]
                    if t == 0:
                        for x in range(size):
                            d = np.int32(row[x]) - grey
                            columns[x] += d * d
                    else:
                        before = frames[t - 1, ch, y]
                        for x in range(size):
                            d = np.int32(row[x]) - np.int32(before[x])
                            columns[x] += d * d
        else:
            _warped_columns(frames, planes, t, r * p, r * p + p, warp[t], columns)
        base = t * g * g + r * g
        for c in range(g):
            acc = np.int64(0)
            for x in range(c * p, c * p + p):
                acc += columns[x]
            out[base + c] = n * acc


@njit(cache=True, nogil=True)
def _warped_columns(frames, planes, t, y_start, y_stop, motion, columns):
    # Adds to columns[x] the squared residuals of rows [y_start, y_stop) of
    # frame t against frame t - 1 sampled at motion (x, y, 1), grey outside.
    a, b, tx, c, d, ty = motion[0], motion[1], motion[2], motion[3], motion[4], motion[5]
    if b == 0 and c == 0:
        _separable_columns(frames, t, y_start, y_stop, a, tx, d, ty, columns)
        return
    num_ch, size = frames.shape[1], frames.shape[3]
    source = np.empty(size, np.int64)  # index into a plane of frame t - 1, or -1
    grey = np.int32(GREY)
    for y in range(y_start, y_stop):
        for x in range(size):
            xs = (a * x + b * y + tx + WARP_HALF) >> WARP_BITS
            ys = (c * x + d * y + ty + WARP_HALF) >> WARP_BITS
            inside = xs >= 0 and xs < size and ys >= 0 and ys < size
            source[x] = ys * size + xs if inside else -1
        for ch in range(num_ch):
            row = frames[t, ch, y]
            before = planes[t - 1, ch]
            for x in range(size):
                k = source[x]
                prior = np.int32(before[k]) if k >= 0 else grey
                e = np.int32(row[x]) - prior
                columns[x] += e * e


@njit(cache=True, nogil=True)
def _separable_columns(frames, t, y_start, y_stop, a, tx, d, ty, columns):
    # No rotation: a source column per column, a source row per row. The
    # columns fall into runs of one shift (a zoom of a few percent moves the
    # shift every few dozen pixels), each a contiguous, vectorisable loop.
    num_ch, size = frames.shape[1], frames.shape[3]
    starts = np.empty(size + 1, np.int64)
    shifts = np.empty(size, np.int64)  # source column - column; size: outside
    runs = 0
    for x in range(size):
        xs = (a * x + tx + WARP_HALF) >> WARP_BITS
        shift = xs - x if xs >= 0 and xs < size else size
        if runs == 0 or shift != shifts[runs - 1]:
            starts[runs] = x
            shifts[runs] = shift
            runs += 1
    starts[runs] = size
    grey = np.int32(GREY)
    for y in range(y_start, y_stop):
        ys = (d * y + ty + WARP_HALF) >> WARP_BITS
        for ch in range(num_ch):
            row = frames[t, ch, y]
            if ys < 0 or ys >= size:
                for x in range(size):
                    e = np.int32(row[x]) - grey
                    columns[x] += e * e
                continue
            before = frames[t - 1, ch, ys]
            for i in range(runs):
                # Slices indexed from 0: no negative-index checks, so the
                # loops vectorise.
                start, stop, shift = starts[i], starts[i + 1], shifts[i]
                out = columns[start:stop]
                here = row[start:stop]
                if shift == size:
                    for j in range(stop - start):
                        e = np.int32(here[j]) - grey
                        out[j] += e * e
                else:
                    there = before[start + shift : stop + shift]
                    for j in range(stop - start):
                        e = np.int32(here[j]) - np.int32(there[j])
                        out[j] += e * e


@njit(cache=True, nogil=True)
def _top_k(energies, k_keep):
    # Ascending flat indices of the k largest energies, smaller index first on ties.
    total = energies.size
    out = np.empty(k_keep, dtype=np.int64)
    if k_keep == total:
        for i in range(total):
            out[i] = i
        return out
    largest = np.int64(0)
    for i in range(total):
        if energies[i] > largest:
            largest = energies[i]
    # Radix select, most significant digit first: fix the threshold (the
    # k-th largest energy) digit by digit, counting only the energies that
    # share the digits fixed so far.
    shift = 0
    while (largest >> shift) >= _RADIX_BINS:
        shift += _RADIX_BITS
    hist = np.empty(_RADIX_BINS, np.int64)
    prefix = np.int64(0)
    mask = np.int64(0)
    wanted = np.int64(k_keep)
    while True:
        hist[:] = 0
        for i in range(total):
            e = energies[i]
            if (e & mask) == prefix:
                hist[(e >> shift) & (_RADIX_BINS - 1)] += 1
        seen = np.int64(0)
        digit = _RADIX_BINS - 1
        while seen + hist[digit] < wanted:
            seen += hist[digit]
            digit -= 1
        prefix |= np.int64(digit) << shift
        mask |= np.int64(_RADIX_BINS - 1) << shift
        wanted -= seen
        if shift == 0:
            break
        shift -= _RADIX_BITS
    threshold = prefix
    # Everything above the threshold is kept; the remaining slots go to the
    # ties at it, the smallest indices first.
    wanted = np.int64(k_keep)
    for i in range(total):
        if energies[i] > threshold:
            wanted -= 1
    j = 0
    for i in range(total):
        e = energies[i]
        if e > threshold:
            out[j] = i
            j += 1
        elif e == threshold and wanted > 0:
            out[j] = i
            j += 1
            wanted -= 1
    return out


@njit(parallel=True, cache=True, nogil=True)
def _gather(frames, flat, patch_size, table, out):
    # out[i, ch, y, x] = table[frames[t, ch, r*p + y, c*p + x]] for flat[i] = (t, r, c).
    # Row slices on both sides keep the inner loop a plain p-long lookup.
    p = patch_size
    num_ch = frames.shape[1]
    g = frames.shape[-1] // p
    n_patches = g * g
    rows = out.reshape(flat.size, num_ch * p, p)
    for i in prange(flat.size):
        f = flat[i]
        t = f // n_patches
        rc = f - t * n_patches
        y0 = (rc // g) * p
        x0 = (rc - (rc // g) * g) * p
        for ch in range(num_ch):
            for y in range(p):
                src = frames[t, ch, y0 + y, x0 : x0 + p]
                dst = rows[i, ch * p + y]
                for x in range(p):
                    dst[x] = table[src[x]]


@njit(cache=True, nogil=True)
def _pick(energies, flat):
    out = np.empty(flat.size, np.int64)
    for i in range(flat.size):
        out[i] = energies[flat[i]]
    return out


_IDENTITY = np.arange(256, dtype=np.uint8)

# The "workqueue" threading layer (used where neither OpenMP nor TBB is
# available) aborts when two threads run parallel kernels at once.
_workqueue_lock = threading.Lock()


def _run(frames, patch_size, k_keep, flat, table, warp):
    num_t, num_ch, size, _ = frames.shape
    energies = np.empty(num_t * (size // patch_size) ** 2, np.int64)
    _energies(frames, patch_size, warp, energies)
    if flat is None:
        flat = _top_k(energies, k_keep)
    patches = np.empty((flat.size, num_ch, patch_size, patch_size), table.dtype)
    _gather(frames, flat, patch_size, table, patches)
    return patches, flat, _pick(energies, flat)


def select(
    frames: np.ndarray,
    patch_size: int,
    k_keep: int,
    *,
    flat: np.ndarray | None = None,
    table: np.ndarray | None = None,
    warp: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 ``[T, 3, S, S]`` -> ``(patches [k, 3, p, p], flat_indices int64
    [k], energies int64 [k])`` on the CPU.

    ``flat``: ascending int64 indices to keep instead of the top-k (the
    baselines). ``table``: a 256-entry array; patches are ``table[pixel]`` in
    its dtype (see :mod:`cps_ray._convert`); without it they are the uint8 pixels.
    ``warp``: int64 ``[T, 6]`` camera motion in fixed point (see
    :mod:`cps_ray._kernels.reference`); ``None`` is no motion.
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    table = _IDENTITY if table is None else np.ascontiguousarray(table)
    if flat is not None:
        flat = np.ascontiguousarray(flat, dtype=np.int64)
    if warp is None:
        warp = identity_warp(frames.shape[0])
    warp = np.ascontiguousarray(warp, dtype=np.int64)
    if warp.shape != (frames.shape[0], 6):
        raise ValueError(f"warp must be int64 [T, 6] = {(frames.shape[0], 6)}, got {warp.shape}")
    args = (frames, int(patch_size), int(k_keep), flat, table, warp)
    if _layer_is_workqueue():
        with _workqueue_lock:
            return _run(*args)
    return _run(*args)


_layer: str | None = None


def _layer_is_workqueue() -> bool:
    global _layer
    if _layer is None:
        warmup()
    return _layer == "workqueue"


def warmup() -> None:
    """Compile (or load from cache) every kernel now, the motion estimator's
    too; call when a worker starts."""
    global _layer
    from .._convert import bits_table
    from . import motion

    motion.warmup()
    with _workqueue_lock:
        frames = np.zeros((2, 3, 4, 4), np.uint8)
        warp = identity_warp(2)  # its values choose a branch, not a specialisation
        _run(frames, 2, 3, None, _IDENTITY, warp)
        for dtype in ("bf16", "fp32"):  # int16 and int32 bit tables
            _run(frames, 2, 3, np.arange(3, dtype=np.int64), bits_table(dtype), warp)
        if _layer is None:
            _layer = numba.threading_layer()
