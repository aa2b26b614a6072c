"""``select_patches``: run a selection kernel on frames the caller has, and
turn its integer output into the tensors of DESIGN.md.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from . import devices
from .config import BACKENDS, OUTPUT_DTYPES, _check_choice, _check_int
from .errors import ConfigError, DeviceUnavailableError

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cuda_simulator_enabled() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def check_frames(frames, patch_size: int, k_keep: int) -> tuple[int, int, int]:
    """Validate uint8 ``[T, 3, S, S]`` frames against the selection arguments.

    Returns ``(T, S, G)``.
    """
    shape = tuple(frames.shape)
    dtype = frames.dtype
    if dtype not in (np.uint8, torch.uint8):
        raise ConfigError("frames", f"dtype {dtype}", "Frames must be uint8 [T, 3, S, S].")
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[0] < 1:
        raise ConfigError("frames", f"shape {shape}", "Frames must be uint8 [T, 3, S, S].")
    _check_int("patch_size", patch_size, 1)
    t, _, s, _ = shape
    if s % patch_size != 0:
        raise ConfigError("patch_size", patch_size, f"It must divide the frame size S={s}.")
    g = s // patch_size
    _check_int("k_keep", k_keep, 1)
    if k_keep > t * g * g:
        raise ConfigError(
            "k_keep", k_keep, f"It must be between 1 and T * (S / p)**2 = {t * g * g}."
        )
    return t, s, g


def finish(
    patches_u8: torch.Tensor,
    flat: torch.Tensor,
    energies: torch.Tensor,
    *,
    grid_size: int,
    patch_size: int,
    output_dtype: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel output -> ``(patches, meta_fields, meta_scores)`` on the kernel's device.

    patches: ``output_dtype [k, 3, p, p]`` = uint8 / 255, computed in float32
    (exact IEEE division, so every device gives the same bits);
    meta_fields: int32 ``[k, 3]`` = (t, r, c); meta_scores: float32 ``E / (3 n^2)``.
    """
    n_patches = grid_size * grid_size
    n = patch_size * patch_size
    t = torch.div(flat, n_patches, rounding_mode="floor")
    rc = flat - t * n_patches
    r = torch.div(rc, grid_size, rounding_mode="floor")
    c = rc - r * grid_size
    meta_fields = torch.stack([t, r, c], dim=1).to(torch.int32)
    meta_scores = (energies.to(torch.float64) / float(3 * n * n)).to(torch.float32)
    patches = (patches_u8.to(torch.float32) / 255.0).to(TORCH_DTYPES[output_dtype])
    return patches, meta_fields, meta_scores


def _as_numpy(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        return np.ascontiguousarray(frames.detach().cpu().numpy())
    return np.ascontiguousarray(frames)


def select_patches(
    frames,
    *,
    patch_size: int,
    k_keep: int,
    backend: str = "cpu",
    device_id: int = 0,
    output_dtype: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``k_keep`` highest-energy patches of ``frames``.

    Args:
        frames: uint8 ``[T, 3, S, S]``, NumPy array or torch tensor (any device).
        patch_size: p, dividing S.
        k_keep: patches kept, ``1 <= k_keep <= T * (S/p)**2``.
        backend: ``"cpu"`` (Numba), ``"gpu"`` (Numba CUDA; under
            ``NUMBA_ENABLE_CUDASIM=1`` its simulator on the CPU), or ``"auto"``
            (gpu where CUDA is available).
        device_id: CUDA device for ``backend="gpu"``.
        output_dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    Returns:
        ``(patches [k, 3, p, p] output_dtype in [0, 1], meta_fields int32 [k, 3]
        (t, row, col), meta_scores float32 [k])``, rows in ascending flat
        index ``t * G**2 + row * G + col``; on the CPU for ``cpu``, on
        ``cuda:{device_id}`` for ``gpu``.
    """
    _check_choice("backend", backend, BACKENDS)
    _check_choice("output_dtype", output_dtype, OUTPUT_DTYPES)
    _check_int("device_id", device_id, 0)
    _, _, g = check_frames(frames, patch_size, k_keep)
    if backend == "auto":
        backend = "gpu" if devices.cuda_available() else "cpu"
    if backend == "gpu":
        if not cuda_simulator_enabled():
            count = devices.cuda_device_count()
            if count == 0 or device_id >= count:
                field = "backend" if count == 0 else "device_id"
                value = "gpu" if count == 0 else device_id
                raise DeviceUnavailableError(field, value, devices.describe_node())
        from .kernels import cuda as cuda_kernel

        patches_u8, flat, energies = cuda_kernel.select(
            frames, patch_size, k_keep, device_id=device_id
        )
    else:
        from .kernels import cpu as cpu_kernel

        out = cpu_kernel.select(_as_numpy(frames), patch_size, k_keep)
        patches_u8, flat, energies = (torch.from_numpy(a) for a in out)
    return finish(
        patches_u8,
        flat,
        energies,
        grid_size=g,
        patch_size=patch_size,
        output_dtype=output_dtype,
    )
