"""``select_patches``: run a selection kernel on frames the caller has, and
turn its integer output into the tensors of the rows (docs/architecture.md).

With ``motion="global"`` the clip's camera motion is estimated first, once,
on the CPU (:mod:`cps_ray._motion`), and every kernel gets the same
fixed-point warp.

:func:`select_on_cpu` is the same selection on the CPU in NumPy alone, as a
row keeps it: a Ray select actor that selects on the CPU never imports torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from . import _baselines as baselines
from . import _convert as convert
from . import _devices as devices
from ._config import BACKENDS, MOTIONS, OUTPUT_DTYPES, SELECTIONS, _check_choice, _check_int
from .errors import ConfigError, DeviceUnavailableError

if TYPE_CHECKING:
    import torch


def cuda_simulator_enabled() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def check_frames(frames, patch_size: int, k_keep: int) -> tuple[int, int, int]:
    """Validate uint8 ``[T, 3, S, S]`` frames against the selection arguments.

    Returns ``(T, S, G)``.
    """
    shape = tuple(frames.shape)
    dtype = frames.dtype
    if str(dtype) not in ("uint8", "torch.uint8"):
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


def fields_and_scores(
    flat: np.ndarray, energies: np.ndarray, *, grid_size: int, patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Kept flat indices and energies -> ``meta_fields`` int32 ``[k, 3]`` =
    (t, r, c) and ``meta_scores`` float32 ``E / (3 n^2)``, the mean squared
    residual. A few NumPy passes over k values: torch's per-op overhead
    would cost more than the selection kernel itself."""
    n = patch_size * patch_size
    t, rc = np.divmod(flat, grid_size * grid_size)
    r, c = np.divmod(rc, grid_size)
    fields = np.stack([t, r, c], axis=1).astype(np.int32)
    return fields, (energies / float(3 * n * n)).astype(np.float32)


def finish_on_device(
    patches: torch.Tensor,
    flat: torch.Tensor,
    energies: torch.Tensor,
    *,
    grid_size: int,
    patch_size: int,
    output_dtype: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CUDA kernel output -> ``(patches, meta_fields, meta_scores)`` on its
    device, computed as :func:`fields_and_scores` computes them.

    patches: the kernel wrote the bits of ``output_dtype`` through
    :func:`~cps_ray._convert.bits_table` (``uint8 / 255``, correctly rounded,
    the same bits on every device).
    """
    import torch

    n_patches = grid_size * grid_size
    n = patch_size * patch_size
    t = torch.div(flat, n_patches, rounding_mode="floor")
    rc = flat - t * n_patches
    r = torch.div(rc, grid_size, rounding_mode="floor")
    c = rc - r * grid_size
    meta_fields = torch.stack([t, r, c], dim=1).to(torch.int32)
    meta_scores = (energies.to(torch.float64) / float(3 * n * n)).to(torch.float32)
    return convert.from_bits(patches, output_dtype), meta_fields, meta_scores


def _as_numpy(frames) -> np.ndarray:
    if hasattr(frames, "detach"):  # a torch tensor, on any device
        return np.ascontiguousarray(frames.detach().cpu().numpy())
    return np.ascontiguousarray(frames)


def chosen_indices(
    selection: str, num_frames: int, grid_size: int, k_keep: int, seed: int
) -> np.ndarray | None:
    """The flat indices a baseline keeps, or ``None`` for ``energy`` (the top-k)."""
    if selection == "random":
        return baselines.random_flat(num_frames * grid_size**2, k_keep, seed)
    if selection == "uniform":
        return baselines.uniform_flat(num_frames, grid_size**2, k_keep)
    return None


def select_patches(
    frames,
    *,
    patch_size: int,
    k_keep: int,
    backend: str = "cpu",
    device_id: int = 0,
    output_dtype: str = "fp32",
    selection: str = "energy",
    seed: int = 0,
    motion: str = "global",
    return_motion: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Keep ``k_keep`` patches of ``frames``: the highest-energy ones, or a baseline's.

    Args:
        frames: uint8 ``[T, 3, S, S]``, NumPy array or torch tensor (any device).
        patch_size: p, dividing S.
        k_keep: patches kept, ``1 <= k_keep <= T * (S/p)**2``.
        backend: ``"cpu"`` (Numba), ``"gpu"`` (Numba CUDA; under
            ``NUMBA_ENABLE_CUDASIM=1`` its simulator on the CPU), or ``"auto"``
            (gpu where CUDA is available).
        device_id: CUDA device for ``backend="gpu"``.
        output_dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        selection: ``"energy"`` (the k largest energies), or the baselines
            ``"random"`` (seeded by ``seed``) and ``"uniform"`` (a rolling
            grid); see :mod:`cps_ray._baselines`.
        seed: the random baseline's seed (``patch_stream`` and the pipeline
            derive one per video from its path and ``selection_seed``).
        motion: ``"global"`` (residual after the clip's global camera
            motion, estimated once on the CPU) or ``"none"`` (residual
            against the same pixels of the frame before); see ``docs/selection.md``.
        return_motion: also return ``meta_motion``.

    Returns:
        ``(patches [k, 3, p, p] output_dtype in [0, 1], meta_fields int32 [k, 3]
        (t, row, col), meta_scores float32 [k])``, rows in ascending flat
        index ``t * G**2 + row * G + col``; on the CPU for ``cpu``, on
        ``cuda:{device_id}`` for ``gpu``. ``meta_scores`` are the kept
        patches' energies whatever chose them. With ``return_motion=True`` a
        fourth tensor, ``meta_motion`` float32 ``[T, 2, 3]`` on the same
        device: ``A_t`` maps pixel ``(x, y, 1)`` of frame t to frame t - 1
        (identity rows for frame 0, where no motion was found, and for
        ``motion="none"``).
    """
    t, g = _check_arguments(frames, patch_size, k_keep, backend, device_id, output_dtype,
                            selection, seed, motion)  # fmt: skip
    if not isinstance(return_motion, bool):
        raise ConfigError("return_motion", return_motion, "It must be True or False.")
    if backend == "auto":
        backend = "gpu" if devices.cuda_available() else "cpu"
    if backend == "cpu":
        import torch

        bits, fields, scores, meta_motion = _select_on_cpu(
            frames, patch_size, k_keep, output_dtype, selection, seed, motion, t, g
        )
        patches = convert.from_bits(torch.from_numpy(bits), output_dtype)
        out = (patches, torch.from_numpy(fields), torch.from_numpy(scores))
        return (*out, torch.from_numpy(meta_motion)) if return_motion else out
    if not cuda_simulator_enabled():
        count = devices.cuda_device_count()
        if count == 0 or device_id >= count:
            field = "backend" if count == 0 else "device_id"
            value = "gpu" if count == 0 else device_id
            raise DeviceUnavailableError(field, value, devices.describe_node())
    from ._kernels import cuda as cuda_kernel
    from ._motion import motion_warp

    # Estimated on the host from block sums made on the frames' device.
    warp, meta_motion = motion_warp(frames, motion)
    patches, flat, energies = cuda_kernel.select(
        frames,
        patch_size,
        k_keep,
        device_id=device_id,
        flat=chosen_indices(selection, t, g, k_keep, seed),
        table=convert.bits_table(output_dtype),
        warp=warp,
    )
    out = finish_on_device(
        patches, flat, energies, grid_size=g, patch_size=patch_size, output_dtype=output_dtype
    )
    if not return_motion:
        return out
    import torch

    return (*out, torch.from_numpy(meta_motion).to(out[0].device))


def _check_arguments(
    frames, patch_size, k_keep, backend, device_id, output_dtype, selection, seed, motion
) -> tuple[int, int]:
    """Validate :func:`select_patches`' arguments; ``(T, G)``."""
    _check_choice("backend", backend, BACKENDS)
    _check_choice("output_dtype", output_dtype, OUTPUT_DTYPES)
    _check_choice("selection", selection, SELECTIONS)
    _check_choice("motion", motion, MOTIONS)
    _check_int("device_id", device_id, 0)
    _check_int("seed", seed, 0)
    t, _, g = check_frames(frames, patch_size, k_keep)
    return t, g


def _select_on_cpu(frames, patch_size, k_keep, output_dtype, selection, seed, motion, t, g):
    from ._kernels import cpu as cpu_kernel
    from ._motion import motion_warp

    frames = _as_numpy(frames)
    warp, meta_motion = motion_warp(frames, motion)
    bits, flat, energies = cpu_kernel.select(
        frames,
        patch_size,
        k_keep,
        flat=chosen_indices(selection, t, g, k_keep, seed),
        table=convert.bits_table(output_dtype),
        warp=warp,
    )
    fields, scores = fields_and_scores(flat, energies, grid_size=g, patch_size=patch_size)
    return bits, fields, scores, meta_motion


def select_on_cpu(
    frames,
    *,
    patch_size: int,
    k_keep: int,
    output_dtype: str = "fp32",
    selection: str = "energy",
    seed: int = 0,
    motion: str = "global",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``select_patches(..., backend="cpu", return_motion=True)`` in NumPy,
    without torch: the same bits, with ``patches`` as a row keeps them (bf16
    as uint16 bits, see :data:`cps_ray._convert.ROW_DTYPES`). Returns
    ``(patches, meta_fields, meta_scores, meta_motion float32 [T, 2, 3])``."""
    t, g = _check_arguments(frames, patch_size, k_keep, "cpu", 0, output_dtype, selection, seed,
                            motion)  # fmt: skip
    bits, fields, scores, meta_motion = _select_on_cpu(frames, patch_size, k_keep, output_dtype,
                                                       selection, seed, motion, t, g)  # fmt: skip
    return convert.row_array(bits, output_dtype), fields, scores, meta_motion


def select_video(frames, config, path: str, backend: str):
    """``select_patches(..., return_motion=True)`` of one video's frames as
    ``config`` (a :class:`~cps_ray._config.PatchStreamConfig`) asks, with
    the random baseline seeded from ``path`` and ``config.selection_seed``:
    ``(patches, meta_fields, meta_scores, meta_motion)`` torch tensors."""
    return select_patches(
        frames,
        patch_size=config.patch_size,
        k_keep=config.k_keep,
        backend=backend,
        device_id=config.process_device_id,
        output_dtype=config.output_dtype,
        selection=config.selection,
        seed=baselines.video_seed(path, config.selection_seed),
        motion=config.motion,
        return_motion=True,
    )


def select_video_on_cpu(
    frames, config, path: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`select_video` on the CPU in NumPy (see :func:`select_on_cpu`):
    ``(patches, meta_fields, meta_scores, meta_motion)`` NumPy arrays."""
    return select_on_cpu(
        frames,
        patch_size=config.patch_size,
        k_keep=config.k_keep,
        output_dtype=config.output_dtype,
        selection=config.selection,
        seed=baselines.video_seed(path, config.selection_seed),
        motion=config.motion,
    )
