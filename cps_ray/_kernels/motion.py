"""Numba kernels of the global motion estimator (see :mod:`cps_ray._motion`):
a pyramid of the green channel (most of the luma, a third of the bytes), an
exhaustive translation search on its coarsest level, and Gauss-Newton
refinement of a similarity (scale, rotation, translation) on the two finer
levels, robust to local motion (Huber weights), then a test that the model
explains the frame.

Every loop runs in a fixed order in float64 without fast-math, and the small
linear algebra is written out (no LAPACK): the same frames give the same
motion on every run.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# The finest level is about this wide: a quarter of 224.
BASE_SIZE = 56
# Below this base width there is too little to estimate from: no motion.
MIN_BASE_SIZE = 32
PYRAMID_LEVELS = 3
# Translation search on the coarsest level, in its pixels (+-32 px at 224).
SEARCH_RADIUS = 2
# Per level (finest first): the Huber threshold, in grey levels.
HUBER = (8.0, 8.0)
MAX_ITERATIONS = 10
# Per level (finest first): stop when an update moves the frame's corners
# by less, in pixels of that level.
TOLERANCE = (0.05, 0.1)
# Per level: the template's pixels on a grid of this step.
STEP = (2, 1)
# A model is kept when its residual over the overlap is below this share of
# the identity's (local motion over a still background rarely gets there)...
ACCEPT_RATIO = 0.5
# ... and the median of a BLOCKS x BLOCKS grid of blocks gets no more than
# BLOCK_RATIO times worse, residuals counted above a floor of NOISE_FLOOR
# (squared grey levels per pixel): where the background is still and a small
# region moves, most blocks are made worse by any camera motion.
BLOCKS = 7
BLOCK_RATIO = 1.0
NOISE_FLOOR = 0.25
# On the coarse level (a rougher fit) a looser bound, to stop early: camera
# motion stays below 1.15 there on the photo clips, local motion mostly not.
COARSE_BLOCK_RATIO = 1.5
# The model must move some pixel by this much (pixels of S), else no motion.
MIN_DISPLACEMENT = 0.5
# Plausible motion between two neighbouring sampled frames.
MAX_SCALE_CHANGE = 0.25


@njit(cache=True, nogil=True)
def green_sums(frames, factor, out):
    # frames uint8 [T, 3, S, S] -> out int32 [T, h, w]: the green channel
    # summed over factor x factor blocks (the last S % factor rows and
    # columns are left out). Rows first (contiguous, vectorised), then
    # columns.
    num_t = frames.shape[0]
    h = out.shape[1]
    w = out.shape[2]
    size = w * factor
    columns = np.empty(size, np.int32)
    for t in range(num_t):
        for v in range(h):
            top = v * factor
            for x in range(size):
                columns[x] = np.int32(frames[t, 1, top, x])
            for y in range(top + 1, top + factor):
                for x in range(size):
                    columns[x] += np.int32(frames[t, 1, y, x])
            row = out[t, v]
            for u in range(w):
                row[u] = columns[u * factor]
            for j in range(1, factor):
                for u in range(w):
                    row[u] += columns[u * factor + j]


@njit(cache=True, nogil=True)
def _half(image):
    h = image.shape[0] // 2
    w = image.shape[1] // 2
    out = np.empty((h, w))
    for v in range(h):
        for u in range(w):
            top = image[2 * v, 2 * u] + image[2 * v, 2 * u + 1]
            out[v, u] = 0.25 * (top + image[2 * v + 1, 2 * u] + image[2 * v + 1, 2 * u + 1])
    return out


@njit(cache=True, nogil=True)
def _search(prev, cur, radius):
    # The integer shift (dx, dy) with the least sum of absolute differences
    # between cur and prev shifted, over cur's interior; the first in scan
    # order on ties.
    h, w = cur.shape
    best = np.inf
    best_x = 0
    best_y = 0
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            acc = 0.0
            for v in range(radius, h - radius):
                for u in range(radius, w - radius):
                    acc += abs(prev[v + dy, u + dx] - cur[v, u])
            if acc < best:
                best = acc
                best_x = dx
                best_y = dy
    return best_x, best_y


@njit(cache=True, nogil=True)
def _level_warp(m, factor, offset):
    # The warp m (full-size pixels, centred) in level pixels: x = f u + o.
    lx = (m[0] * offset + m[1] * offset + m[2] - offset) / factor
    ly = (m[3] * offset + m[4] * offset + m[5] - offset) / factor
    return m[0], m[1], lx, m[3], m[4], ly


@njit(cache=True, nogil=True)
def _sample(image, xs, ys):
    # Bilinear; the caller keeps (xs, ys) inside [0, w - 1) x [0, h - 1).
    x0 = int(xs)
    y0 = int(ys)
    fx = xs - x0
    fy = ys - y0
    top = image[y0, x0] + fx * (image[y0, x0 + 1] - image[y0, x0])
    bottom = image[y0 + 1, x0] + fx * (image[y0 + 1, x0 + 1] - image[y0 + 1, x0])
    return top + fy * (bottom - top)


@njit(cache=True, nogil=True)
def _solve4(h, b):
    # h (4 x 4, symmetric positive definite) x = b by Gaussian elimination;
    # None-like (all zeros, ok False) when h is singular.
    a = h.copy()
    x = b.copy()
    for i in range(4):
        if not a[i, i] > 1e-9 * (1.0 + abs(h[0, 0]) + abs(h[3, 3])):
            return x * 0.0, False
        for j in range(i + 1, 4):
            ratio = a[j, i] / a[i, i]
            for k in range(i, 4):
                a[j, k] -= ratio * a[i, k]
            x[j] -= ratio * x[i]
    for i in range(3, -1, -1):
        acc = x[i]
        for k in range(i + 1, 4):
            acc -= a[i, k] * x[k]
        x[i] = acc / a[i, i]
    return x, True


@njit(cache=True, nogil=True)
def _gauss_newton(prev, cur, factor, offset, half_size, step, tolerance, huber, m):
    # Inverse compositional Gauss-Newton for a similarity, m = (a, b, tx, c,
    # d, ty) mapping centred full-size pixels of cur to prev, refined in
    # place over cur's interior pixels on a grid of `step`; returns the
    # iterations run, or -1 where the template is flat. The Hessian is the
    # template's, computed once; Huber weights enter the gradient, so the
    # fixed point is the robust estimate.
    h, w = cur.shape
    sd = np.empty(((h - 2) * (w - 2) // step + h, 4))
    template = np.empty(sd.shape[0])
    hess = np.zeros((4, 4))
    i = 0
    for v in range(1, h - 1):
        y = factor * v + offset
        for u in range(1 + (v % step), w - 1, step):
            x = factor * u + offset
            gx = 0.5 * (cur[v, u + 1] - cur[v, u - 1]) / factor
            gy = 0.5 * (cur[v + 1, u] - cur[v - 1, u]) / factor
            s0 = gx * x + gy * y
            s1 = gy * x - gx * y
            sd[i, 0] = s0
            sd[i, 1] = s1
            sd[i, 2] = gx
            sd[i, 3] = gy
            template[i] = cur[v, u]
            hess[0, 0] += s0 * s0
            hess[1, 0] += s1 * s0
            hess[1, 1] += s1 * s1
            hess[2, 0] += gx * s0
            hess[2, 1] += gx * s1
            hess[2, 2] += gx * gx
            hess[3, 0] += gy * s0
            hess[3, 1] += gy * s1
            hess[3, 2] += gy * gx
            hess[3, 3] += gy * gy
            i += 1
    for j in range(4):
        for k in range(j + 1, 4):
            hess[j, k] = hess[k, j]
    grad = np.empty(4)
    x_limit = float(w - 1)
    y_limit = float(h - 1)
    for iteration in range(MAX_ITERATIONS):
        a, b, lx, c, d, ly = _level_warp(m, factor, offset)
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        g3 = 0.0
        i = 0
        x_step = a * step
        y_step = c * step
        for v in range(1, h - 1):
            first = 1 + (v % step)
            xs = a * first + b * v + lx
            ys = c * first + d * v + ly
            for _ in range(first, w - 1, step):
                if xs >= 0.0 and ys >= 0.0 and xs < x_limit and ys < y_limit:
                    e = _sample(prev, xs, ys) - template[i]
                    e = min(huber, max(-huber, e))
                    g0 += sd[i, 0] * e
                    g1 += sd[i, 1] * e
                    g2 += sd[i, 2] * e
                    g3 += sd[i, 3] * e
                xs += x_step
                ys += y_step
                i += 1
        grad[0] = g0
        grad[1] = g1
        grad[2] = g2
        grad[3] = g3
        delta, ok = _solve4(hess, grad)
        if not ok:
            return -1
        # m <- m o D^-1 with D = [[1 + s, -r, tx], [r, 1 + s, ty]]
        s = 1.0 + delta[0]
        r = delta[1]
        det = s * s + r * r
        i00 = s / det
        i01 = r / det
        i02 = -(s * delta[2] + r * delta[3]) / det
        i10 = -r / det
        i12 = (r * delta[2] - s * delta[3]) / det
        a0, b0, t0, c0, d0, t1 = m[0], m[1], m[2], m[3], m[4], m[5]
        m[0] = a0 * i00 + b0 * i10
        m[1] = a0 * i01 + b0 * i00
        m[2] = a0 * i02 + b0 * i12 + t0
        m[3] = c0 * i00 + d0 * i10
        m[4] = c0 * i01 + d0 * i00
        m[5] = c0 * i02 + d0 * i12 + t1
        moved = (abs(delta[0]) + abs(delta[1])) * half_size * 2.0 + abs(delta[2]) + abs(delta[3])
        if moved < tolerance:
            return iteration + 1
    return MAX_ITERATIONS


@njit(cache=True, nogil=True)
def _comparison(prev, cur, factor, offset, step, m):
    # How m explains cur from prev against no motion, over the pixels of cur
    # (on a grid of `step`) that m maps inside prev: (the ratio of the sums
    # of squared residuals, the median over a BLOCKS x BLOCKS grid of each
    # block's ratio, residuals counted above NOISE_FLOOR). Local motion over
    # a still background makes most blocks worse under any camera motion.
    h, w = cur.shape
    a, b, lx, c, d, ly = _level_warp(m, factor, offset)
    side = min(h, w) // BLOCKS
    moved = np.zeros(BLOCKS * BLOCKS)
    still = np.zeros(BLOCKS * BLOCKS)
    count = np.zeros(BLOCKS * BLOCKS)
    moved_total = 0.0
    still_total = 0.0
    for v in range(0, h, step):
        for u in range(0, w, step):
            xs = a * u + b * v + lx
            ys = c * u + d * v + ly
            if xs >= 0.0 and ys >= 0.0 and xs < w - 1 and ys < h - 1:
                e = _sample(prev, xs, ys) - cur[v, u]
                e0 = prev[v, u] - cur[v, u]
                moved_total += e * e
                still_total += e0 * e0
                if v < side * BLOCKS and u < side * BLOCKS:
                    block = (v // side) * BLOCKS + u // side
                    moved[block] += e * e
                    still[block] += e0 * e0
                    count[block] += 1.0
    ratios = np.empty(BLOCKS * BLOCKS)
    n = 0
    for i in range(BLOCKS * BLOCKS):
        if count[i] > 0:
            floor = NOISE_FLOOR * count[i]
            ratios[n] = (moved[i] + floor) / (still[i] + floor)
            n += 1
    if n == 0 or not still_total > 0.0:
        return np.inf, np.inf
    return moved_total / still_total, np.median(ratios[:n])


@njit(cache=True, nogil=True)
def _fit(prev, cur, factor, centre, first_level, m):
    # Refine m (centred similarity, see _gauss_newton) from pyramid level
    # first_level down to the base; then snap a rotation that moves no
    # corner by half a pixel to none, and test the model. True: accepted.
    for level in range(first_level, -1, -1):
        f = factor * (1 << level)
        offset = (f - 1) / 2.0 - centre
        iterations = _gauss_newton(
            prev[level], cur[level], float(f), offset, centre,
            STEP[level], TOLERANCE[level] * f, HUBER[level], m,
        )  # fmt: skip
        if iterations < 0:
            return False
        if level == 1:
            # Most blocks already worse on the coarse level: local motion,
            # not worth refining (it saves the base level on still scenes).
            _, block = _comparison(prev[1], cur[1], float(f), offset, 1, m)
            if not block < COARSE_BLOCK_RATIO:
                return False
    if abs(m[1]) * centre * np.sqrt(2.0) < MIN_DISPLACEMENT:
        m[1] = 0.0
        m[3] = 0.0
    scale = np.sqrt(m[0] * m[4] - m[1] * m[3]) if m[0] * m[4] > m[1] * m[3] else 0.0
    if abs(scale - 1.0) > MAX_SCALE_CHANGE or abs(m[2]) > centre or abs(m[5]) > centre:
        return False
    offset = (factor - 1) / 2.0 - centre
    total, block = _comparison(prev[0], cur[0], float(factor), offset, STEP[0], m)
    return total < ACCEPT_RATIO and block < BLOCK_RATIO


@njit(cache=True, nogil=True)
def estimate_clip(base, factor, size, out):
    # base float64 [T, h, w]: the base level (grey levels of green) at
    # `factor` pixels of the S x S frames per pixel -> out float64 [T, 6]:
    # per frame t >= 1 (a, b, tx, c, d, ty) mapping pixels of frame t
    # (origin at the top-left pixel's centre) to frame t - 1; the identity
    # where no motion is found. Row 0 is the identity.
    num_t = base.shape[0]
    centre = (size - 1) / 2.0
    for t in range(num_t):
        out[t, 0] = 1.0
        out[t, 1] = 0.0
        out[t, 2] = 0.0
        out[t, 3] = 0.0
        out[t, 4] = 1.0
        out[t, 5] = 0.0
    if base.shape[2] < MIN_BASE_SIZE or base.shape[1] < MIN_BASE_SIZE:
        return
    levels = []
    for t in range(num_t):
        pyramid = [base[t].copy()]
        for _ in range(PYRAMID_LEVELS - 1):
            pyramid.append(_half(pyramid[-1]))
        levels.append(pyramid)
    top = PYRAMID_LEVELS - 1
    coarse = factor * (1 << top)
    m = np.empty(6)
    prior = np.empty(6)
    have_prior = False
    for t in range(1, num_t):
        # Camera motion is smooth: start from the last frame's, on the base
        # level alone; where that fails, search from scratch.
        accepted = False
        if have_prior:
            m[:] = prior
            accepted = _fit(levels[t - 1], levels[t], factor, centre, 0, m)
        if not accepted:
            dx, dy = _search(levels[t - 1][top], levels[t][top], SEARCH_RADIUS)
            m[0] = 1.0
            m[1] = 0.0
            m[2] = float(dx * coarse)
            m[3] = 0.0
            m[4] = 1.0
            m[5] = float(dy * coarse)
            accepted = _fit(levels[t - 1], levels[t], factor, centre, top - 1, m)
        have_prior = accepted
        if not accepted:
            continue
        prior[:] = m
        # centred -> top-left origin: x' = c + A (x - c) + t
        tx = m[2] + centre - (m[0] + m[1]) * centre
        ty = m[5] + centre - (m[3] + m[4]) * centre
        largest = 0.0
        for x in (0.0, size - 1.0):
            for y in (0.0, size - 1.0):
                largest = max(largest, abs(m[0] * x + m[1] * y + tx - x))
                largest = max(largest, abs(m[3] * x + m[4] * y + ty - y))
        if largest < MIN_DISPLACEMENT:
            continue
        out[t, 0] = m[0]
        out[t, 1] = m[1]
        out[t, 2] = tx
        out[t, 3] = m[3]
        out[t, 4] = m[4]
        out[t, 5] = ty


def warmup() -> None:
    """Compile (or load from Numba's cache) the estimator's kernels now."""
    frames = np.zeros((2, 3, 2 * MIN_BASE_SIZE, 2 * MIN_BASE_SIZE), np.uint8)
    sums = np.empty((2, 2 * MIN_BASE_SIZE, 2 * MIN_BASE_SIZE), np.int32)
    green_sums(frames, 1, sums)
    frames.flags.writeable = False  # frames Ray hands over without a copy
    green_sums(frames, 1, sums)
    estimate_clip(sums.astype(np.float64), 1, frames.shape[-1], np.empty((2, 6)))
