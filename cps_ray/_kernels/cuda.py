"""Numba CUDA kernels: energies over all ``B * T * N`` patches, an exact
per-clip top-k (radix select, then an ordered compaction; one block per
clip) and the gather. Same wrapper signature as ``kernels/cpu.py``;
``select_batch`` does many clips with one launch per kernel.

On a real GPU torch CUDA tensors go in and come out without copies (through
``__cuda_array_interface__``). Under ``NUMBA_ENABLE_CUDASIM=1`` the same
kernels run in Numba's simulator on NumPy arrays and return CPU tensors.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import ConfigError, MissingDependencyError
from .reference import GREY, WARP_BITS, WARP_HALF, WARP_ONE, identity_warp

try:
    from numba import cuda, int32, int64
except ImportError as exc:  # numba-cuda (or its CUDA bindings) is missing
    raise MissingDependencyError("numba-cuda", "The gpu process backend", "cuda") from exc

import torch  # after the check: a missing numba-cuda is named without importing torch

# Shared scan buffers need a compile-time size: the hardware's block limit.
MAX_THREADS_PER_BLOCK = 1024


def _threads_per_block_from_env() -> int:
    text = os.environ.get("CPS_RAY_CUDA_THREADS_PER_BLOCK", "256")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            "CPS_RAY_CUDA_THREADS_PER_BLOCK", text, "It must be an int between 1 and 1024."
        ) from None


# Threads per block (CPS_RAY_CUDA_THREADS_PER_BLOCK, 256 by default). Read at
# each launch, so tests can lower it and make tiny inputs span blocks; in
# Numba's simulator every thread is a Python thread, and 16 start far faster.
THREADS_PER_BLOCK = _threads_per_block_from_env()
# 4-bit digits: a 16-bin histogram that one thread scans in a blink.
_RADIX_BITS = 4
_RADIX_BINS = 1 << _RADIX_BITS
# The frame before the first is mid-grey (docs/selection.md), as in kernels/reference.py.
_GREY = int64(GREY)
_ONE = int64(WARP_ONE)
_HALF = int64(WARP_HALF)
_BITS = int64(WARP_BITS)


@cuda.jit
def _energies_kernel(frames, patch_size, warp, out):
    # frames uint8 [B, T, C, S, S], warp int64 [B, T, 6] (kernels/reference.py)
    # -> out int64 [B, T * N]
    num_b, num_t, num_ch, size, _ = frames.shape
    p = patch_size
    g = size // p
    n_patches = g * g
    per_clip = num_t * n_patches
    n = int64(p * p)
    for idx in range(cuda.grid(1), num_b * per_clip, cuda.gridsize(1)):
        b = idx // per_clip
        f = idx - b * per_clip
        t = f // n_patches
        rc = f - t * n_patches
        r = rc // g
        y0 = r * p
        x0 = (rc - r * g) * p
        acc = int64(0)
        m = warp[b, t]
        moved = m[0] != _ONE or m[1] != 0 or m[2] != 0 or m[3] != 0 or m[4] != _ONE or m[5] != 0
        if t == 0 or not moved:
            for ch in range(num_ch):
                for y in range(y0, y0 + p):
                    for x in range(x0, x0 + p):
                        if t == 0:
                            d = int64(frames[b, 0, ch, y, x]) - _GREY
                        else:
                            d = int64(frames[b, t, ch, y, x]) - int64(frames[b, t - 1, ch, y, x])
                        acc += d * d
        else:
            # frame t - 1 sampled at the warp, rounded to the nearest pixel
            for y in range(y0, y0 + p):
                for x in range(x0, x0 + p):
                    xs = (m[0] * x + m[1] * y + m[2] + _HALF) >> _BITS
                    ys = (m[3] * x + m[4] * y + m[5] + _HALF) >> _BITS
                    inside = xs >= 0 and xs < size and ys >= 0 and ys < size
                    for ch in range(num_ch):
                        prior = _GREY
                        if inside:
                            prior = int64(frames[b, t - 1, ch, ys, xs])
                        d = int64(frames[b, t, ch, y, x]) - prior
                        acc += d * d
        out[b, f] = n * acc


@cuda.jit
def _top_k_kernel(energies, k_keep, out_flat, out_energies):
    # One block per clip. energies int64 [B, M] (all >= 0: sums of squares)
    # -> out_* [B, k_keep].
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    bdim = cuda.blockDim.x
    total = energies.shape[1]
    hist = cuda.shared.array(_RADIX_BINS, int32)
    # threshold bits found so far, rank wanted among the patches matching
    # them, the largest energy
    state = cuda.shared.array(3, int64)
    scan = cuda.shared.array(MAX_THREADS_PER_BLOCK, int64)
    carry = cuda.shared.array(1, int64)
    if tid == 0:
        state[0] = 0
        state[1] = k_keep
        state[2] = 0
        carry[0] = 0
    cuda.syncthreads()
    largest = int64(0)
    for i in range(tid, total, bdim):
        largest = max(largest, energies[b, i])
    cuda.atomic.max(state, 2, largest)
    cuda.syncthreads()
    # Radix select, most significant digit first, from the top digit of the
    # largest energy (realistic energies need 9 passes of 4 bits, not 16):
    # find the k-th largest energy (the threshold) and how many of the ties
    # at it are kept.
    shift = 0
    while (state[2] >> shift) >= _RADIX_BINS:
        shift += _RADIX_BITS
    mask = int64(0)  # threshold bits already fixed, the same in every thread
    while shift >= 0:
        for d in range(tid, _RADIX_BINS, bdim):
            hist[d] = 0
        cuda.syncthreads()
        prefix = state[0]
        for i in range(tid, total, bdim):
            e = energies[b, i]
            if (e & mask) == prefix:
                cuda.atomic.add(hist, (e >> shift) & (_RADIX_BINS - 1), 1)
        cuda.syncthreads()
        if tid == 0:
            wanted = state[1]
            seen = int64(0)
            for d in range(_RADIX_BINS - 1, -1, -1):
                count = hist[d]
                if seen + count >= wanted:
                    state[0] = prefix | (int64(d) << shift)
                    state[1] = wanted - seen
                    break
                seen += count
        mask |= int64(_RADIX_BINS - 1) << shift
        shift -= _RADIX_BITS
        cuda.syncthreads()
    threshold = state[0]
    ties_kept = state[1]
    # Ordered compaction, a block-wide chunk at a time. One inclusive scan of
    # packed flags (above << 32 | tie) gives, for each patch, how many patches
    # above the threshold and how many ties come before it, hence its output
    # row: above_before + min(ties_before, ties_kept).
    for start in range(0, total, bdim):
        i = start + tid
        e = int64(-1)
        flag = int64(0)
        if i < total:
            e = energies[b, i]
            if e > threshold:
                flag = int64(1) << 32
            elif e == threshold:
                flag = int64(1)
        scan[tid] = flag
        cuda.syncthreads()
        offset = 1
        while offset < bdim:
            v = scan[tid]
            if tid >= offset:
                v += scan[tid - offset]
            cuda.syncthreads()
            scan[tid] = v
            cuda.syncthreads()
            offset *= 2
        before = carry[0] + scan[tid] - flag
        ties_before = before & 0xFFFFFFFF
        if e > threshold or (flag != 0 and ties_before < ties_kept):
            row = (before >> 32) + min(ties_before, ties_kept)
            out_flat[b, row] = i
            out_energies[b, row] = e
        cuda.syncthreads()
        if tid == bdim - 1:
            carry[0] += scan[tid]
        cuda.syncthreads()


@cuda.jit
def _gather_kernel(frames, flat, table, out):
    # frames uint8 [B, T, C, S, S], flat int64 [B, k] -> out [B, k, C, p, p]
    # = table[pixel] (the output dtype's bits, or the identity for uint8)
    num_b, k, num_ch, p, _ = out.shape
    g = frames.shape[4] // p
    n_patches = g * g
    for idx in range(cuda.grid(1), num_b * k * num_ch * p * p, cuda.gridsize(1)):
        x = idx % p
        rest = idx // p
        y = rest % p
        rest = rest // p
        ch = rest % num_ch
        rest = rest // num_ch
        i = rest % k
        b = rest // k
        f = flat[b, i]
        t = f // n_patches
        rc = f - t * n_patches
        r = rc // g
        out[b, i, ch, y, x] = table[frames[b, t, ch, r * p + y, (rc - r * g) * p + x]]


@cuda.jit
def _pick_kernel(energies, flat, kept):
    # kept[b, i] = energies[b, flat[b, i]], for indices chosen outside (baselines)
    num_b, k = flat.shape
    for idx in range(cuda.grid(1), num_b * k, cuda.gridsize(1)):
        b = idx // k
        kept[b, idx - b * k] = energies[b, flat[b, idx - b * k]]


# The simulator runs one kernel at a time per process and asserts otherwise;
# worker threads (local_stream) take turns.
_simulator_lock = threading.Lock()
_IDENTITY = np.arange(256, dtype=np.uint8)


def _simulating() -> bool:
    # The same rule as cps_ray._select.cuda_simulator_enabled.
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _launch(frames, warp, energies, flat, kept, table, patches, patch_size, k_keep, chosen, stream):
    tpb = THREADS_PER_BLOCK
    if not 1 <= tpb <= MAX_THREADS_PER_BLOCK:
        raise ConfigError(
            "THREADS_PER_BLOCK (CPS_RAY_CUDA_THREADS_PER_BLOCK)",
            tpb,
            f"It must be between 1 and {MAX_THREADS_PER_BLOCK}.",
        )
    num_b = frames.shape[0]
    _energies_kernel[-(-energies.size // tpb), tpb, stream](frames, patch_size, warp, energies)
    if chosen:
        _pick_kernel[-(-kept.size // tpb), tpb, stream](energies, flat, kept)
    else:
        _top_k_kernel[num_b, tpb, stream](energies, k_keep, flat, kept)
    _gather_kernel[-(-patches.size // tpb), tpb, stream](frames, flat, table, patches)


def _check_shapes(shape, patch_size, k_keep, flat, warp) -> int:
    if len(shape) != 5 or shape[3] != shape[4] or min(shape) < 1:
        raise ConfigError("frames", f"shape {shape}", "Frames must be uint8 [B, T, 3, S, S].")
    if patch_size < 1 or shape[4] % patch_size:
        raise ConfigError("patch_size", patch_size, f"It must divide the frame size S={shape[4]}.")
    per_clip = shape[1] * (shape[4] // patch_size) ** 2
    if not 1 <= k_keep <= per_clip:
        raise ConfigError(
            "k_keep", k_keep, f"It must be between 1 and T * (S / p)**2 = {per_clip}."
        )
    if flat is not None and tuple(flat.shape) != (shape[0], k_keep):
        raise ConfigError(
            "flat", f"shape {tuple(flat.shape)}", f"It must be [B, k] = {(shape[0], k_keep)}."
        )
    if warp is not None and tuple(warp.shape) != (shape[0], shape[1], 6):
        raise ConfigError(
            "warp", f"shape {tuple(warp.shape)}", f"It must be [B, T, 6] = {(*shape[:2], 6)}."
        )
    return per_clip


_device_tables: dict[tuple[int, str, bytes], torch.Tensor] = {}


def _on_device(table: np.ndarray, device: torch.device) -> torch.Tensor:
    key = (device.index, table.dtype.str, table.tobytes())
    if key not in _device_tables:
        _device_tables[key] = torch.from_numpy(table.copy()).to(device)
    return _device_tables[key]


def select_batch(
    frames,
    patch_size: int,
    k_keep: int,
    device_id: int = 0,
    *,
    flat=None,
    table: np.ndarray | None = None,
    warp: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Select every clip of uint8 ``[B, T, 3, S, S]`` frames (NumPy or torch,
    any device) with one launch per kernel.

    ``flat``: int64 ``[B, k]`` ascending indices to keep instead of the top-k
    (the baselines). ``table``: a 256-entry NumPy array; patches are
    ``table[pixel]`` in its dtype (see :mod:`cps_ray._convert`), else uint8.
    ``warp``: int64 ``[B, T, 6]`` NumPy camera motion in fixed point (see
    :mod:`cps_ray._kernels.reference`); ``None`` is no motion.

    Returns ``(patches [B, k, 3, p, p], flat_indices int64 [B, k], energies
    int64 [B, k])``, rows in ascending flat index; torch tensors on
    ``cuda:{device_id}``, or on the CPU under the simulator.
    """
    shape = tuple(frames.shape)
    patch_size, k_keep = int(patch_size), int(k_keep)
    if warp is not None:
        warp = np.asarray(warp, np.int64)
    per_clip = _check_shapes(shape, patch_size, k_keep, flat, warp)
    num_b, num_t, num_ch, _, _ = shape
    if warp is None:
        warp = np.broadcast_to(identity_warp(num_t), (num_b, num_t, 6))
    warp = np.ascontiguousarray(warp)
    chosen = flat is not None
    table = _IDENTITY if table is None else np.ascontiguousarray(table)
    patch_shape = (num_b, k_keep, num_ch, patch_size, patch_size)
    if _simulating():
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        host = np.ascontiguousarray(frames, dtype=np.uint8)
        if not host.flags.writeable:  # the simulator's device arrays must be writable
            host = host.copy()
        energies = np.empty((num_b, per_clip), np.int64)
        kept = np.empty((num_b, k_keep), np.int64)
        flat = np.empty_like(kept) if flat is None else np.array(flat, dtype=np.int64)
        patches = np.empty(patch_shape, table.dtype)
        with _simulator_lock:
            _launch(host, warp.copy(), energies, flat, kept, table.copy(), patches, patch_size,
                    k_keep, chosen, 0)  # fmt: skip
        return torch.from_numpy(patches), torch.from_numpy(flat), torch.from_numpy(kept)
    device = torch.device("cuda", device_id)
    with torch.cuda.device(device):
        # A no-op for contiguous uint8 frames already on this device.
        if isinstance(frames, np.ndarray) and not frames.flags.writeable:
            frames = frames.copy()  # e.g. zero-copy blocks from Ray's object store
        frames = torch.as_tensor(frames).to(device=device, dtype=torch.uint8).contiguous()
        energies = torch.empty((num_b, per_clip), dtype=torch.int64, device=device)
        kept = torch.empty((num_b, k_keep), dtype=torch.int64, device=device)
        if flat is None:
            flat = torch.empty_like(kept)
        else:
            flat = torch.as_tensor(np.asarray(flat, np.int64)).to(device).contiguous()
        device_table = _on_device(table, device)
        device_warp = torch.from_numpy(warp).to(device)
        patches = torch.empty(patch_shape, dtype=device_table.dtype, device=device)
        # Launch on torch's current stream, so torch consumers see the results in order.
        stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
        arrays = (
            cuda.as_cuda_array(a, sync=False)
            for a in (frames, device_warp, energies, flat, kept, device_table, patches)
        )
        _launch(*arrays, patch_size, k_keep, chosen, stream)
    return patches, flat, kept


def select(
    frames,
    patch_size: int,
    k_keep: int,
    device_id: int = 0,
    *,
    flat=None,
    table: np.ndarray | None = None,
    warp: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 ``[T, 3, S, S]`` (NumPy or torch, any device) -> ``(patches
    [k, 3, p, p], flat_indices int64 [k], energies int64 [k])`` as torch
    tensors on ``cuda:{device_id}`` (CPU under the simulator); ``flat``,
    ``table`` and ``warp`` as in :func:`select_batch` (``[k]`` and ``[T, 6]`` here)."""
    batch_flat = None if flat is None else np.asarray(flat, np.int64)[None]
    batch_warp = None if warp is None else np.asarray(warp, np.int64)[None]
    patches, flat, kept = select_batch(
        frames[None], patch_size, k_keep, device_id=device_id, flat=batch_flat, table=table,
        warp=batch_warp,
    )  # fmt: skip
    return patches[0], flat[0], kept[0]


# -- warm-up and on-disk caching, as kernels/cpu.py warms its kernels --------


def _enable_caching() -> None:
    """Keep compiled kernels in Numba's on-disk cache (``__pycache__`` beside
    this file, or ``NUMBA_CACHE_DIR``), as ``cuda.jit(cache=True)`` would: a
    new process (an isolated child, a restarted actor) loads them instead
    of compiling again."""
    for kernel in (_energies_kernel, _top_k_kernel, _gather_kernel):
        enable = getattr(kernel, "enable_caching", None)  # the simulator has none
        if enable is not None:
            enable()


_enable_caching()

_warm_lock = threading.Lock()
# Devices whose kernels this process has compiled or loaded.
warm_devices: set[int] = set()


def warmup(device_id: int = 0) -> None:
    """Compile (or load from the cache) every kernel for ``cuda:{device_id}``
    now; call when a worker starts, so that the first video does not pay for
    it inside its decode timeout. Idempotent per device."""
    with _warm_lock:
        if device_id in warm_devices:
            return
        from .._convert import bits_table
        from . import motion

        motion.warmup()  # the motion estimator runs on the host

        # The argument types of every real call (a warp's values choose a
        # branch, not a specialisation): uint8 [B, T, 3, S, S], int64
        # indices, the int16 (bf16, fp16) and int32 (fp32) bit tables, the
        # uint8 identity, and indices chosen outside (the baselines).
        frames = np.zeros((1, 2, 3, 4, 4), np.uint8)
        select_batch(frames, 2, 3, device_id=device_id)
        for dtype in ("bf16", "fp32"):
            select_batch(frames, 2, 3, device_id=device_id, table=bits_table(dtype))
        chosen = np.arange(3, dtype=np.int64)[None]
        select_batch(frames, 2, 3, device_id=device_id, flat=chosen, table=bits_table("bf16"))
        if not _simulating():
            torch.cuda.synchronize(device_id)
        warm_devices.add(device_id)
