"""The CUDA energy kernel with camera motion, in Numba's simulator: the same
int64 energies, kept patches and bits as the reference and the CPU kernel.

Inputs are tiny and ``THREADS_PER_BLOCK`` is lowered so that they span many
blocks (see test_cuda_kernel.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cps_ray import select_patches
from cps_ray._kernels import cpu, reference


@pytest.fixture
def kernel(monkeypatch):
    from cps_ray._kernels import cuda

    monkeypatch.setattr(cuda, "THREADS_PER_BLOCK", 8)
    return cuda


def _warp(rows):
    return np.rint(np.asarray(rows, np.float64) * reference.WARP_ONE).astype(np.int64)


def _random_warps(seed, num_t, rotation=True):
    rng = np.random.default_rng(seed)
    rows = [[1, 0, 0, 0, 1, 0]]
    for _ in range(1, num_t):
        scale, angle = 1 + rng.normal() * 0.15, rng.normal() * 0.2 if rotation else 0.0
        shift = rng.normal(size=2) * 2
        rows.append([scale * np.cos(angle), -scale * np.sin(angle), shift[0],
                     scale * np.sin(angle), scale * np.cos(angle), shift[1]])  # fmt: skip
    return _warp(rows)


def _check(kernel, frames, patch_size, k_keep, warp):
    got = kernel.select(frames, patch_size, k_keep, warp=warp)
    ref = reference.select(frames, patch_size, k_keep, warp=warp)
    for x, y, z in zip(got, ref, cpu.select(frames, patch_size, k_keep, warp=warp), strict=True):
        x = x.numpy()
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y) and np.array_equal(z, y)
    return ref


def _random(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("rotation", [True, False])
@pytest.mark.parametrize(
    "shape, patch_size, k_keep",
    [((3, 3, 8, 8), 2, 5), ((3, 3, 8, 8), 4, 7), ((2, 3, 6, 6), 3, 3), ((3, 3, 8, 8), 2, 48)],
)
def test_matches_reference_and_cpu_with_motion(kernel, rotation, shape, patch_size, k_keep):
    seed = sum(shape) + k_keep + rotation
    _check(
        kernel, _random(seed, shape), patch_size, k_keep, _random_warps(seed, shape[0], rotation)
    )


@pytest.mark.parametrize(
    "row", [[1, 0, 3, 0, 1, -2], [0.5, 0, 2, 0, 0.5, 2], [1, 0, -50, 0, 1, 0], [0, -1, 7, 1, 0, 0]]
)
@pytest.mark.parametrize("value", [0, 128])
def test_flat_frames_with_motion_all_ties(kernel, row, value):
    frames = np.full((3, 3, 8, 8), value, np.uint8)
    warp = _warp([[1, 0, 0, 0, 1, 0], row, row])
    for k_keep in (11, 16, 17, 48):
        ref = _check(kernel, frames, 2, k_keep, warp)
        assert (
            ref[1].tolist()
            == reference.top_k(reference.patch_energies(frames, 2, warp), k_keep).tolist()
        )


@pytest.mark.parametrize("threads_per_block", [1, 3, 256])
def test_block_size_does_not_change_the_result(kernel, monkeypatch, threads_per_block):
    monkeypatch.setattr(kernel, "THREADS_PER_BLOCK", threads_per_block)
    _check(kernel, _random(9, (3, 3, 8, 8)), 2, 10, _random_warps(9, 3))


def test_identity_warp_is_the_rule_without_motion(kernel):
    frames = _random(10, (3, 3, 8, 8))
    moved = kernel.select(frames, 2, 12, warp=reference.identity_warp(3))
    for x, y in zip(moved, kernel.select(frames, 2, 12), strict=True):
        assert torch.equal(x, y)


def test_batch_with_a_warp_per_clip(kernel):
    clips = _random(11, (3, 2, 3, 8, 8))
    clips[1] = 40
    warps = np.stack([_random_warps(seed, 2) for seed in (1, 2, 3)])
    patches, flat, energies = kernel.select_batch(clips, 2, 9, warp=warps)
    for b in range(3):
        ref = reference.select(clips[b], 2, 9, warp=warps[b])
        for x, y in zip((patches[b], flat[b], energies[b]), ref, strict=True):
            assert np.array_equal(x.numpy(), y)


def test_a_warp_of_the_wrong_shape_is_an_error(kernel):
    with pytest.raises(ValueError, match="warp"):
        kernel.select(_random(12, (2, 3, 4, 4)), 2, 1, warp=np.zeros((3, 6), np.int64))


def _bits(tensor):
    return tensor.view({4: torch.int32, 2: torch.int16}[tensor.element_size()])


@pytest.mark.parametrize("output_dtype", ["fp32", "bf16"])
def test_select_patches_gpu_equals_cpu_with_estimated_motion(kernel, output_dtype):
    # 64 x 64 frames of a smooth texture, the camera panning 3 px a frame:
    # the motion is found (on the host, from block sums made in torch) and
    # every output, meta_motion included, has the CPU's bits
    rng = np.random.default_rng(13)
    texture = np.cumsum(np.cumsum(rng.normal(size=(3, 80, 80)), axis=1), axis=2)
    texture = ((texture - texture.min()) * (255 / np.ptp(texture))).astype(np.uint8)
    frames = np.stack([texture[:, 4:68, 3 * t : 3 * t + 64] for t in range(2)])
    options = dict(patch_size=8, k_keep=6, output_dtype=output_dtype, return_motion=True)
    gpu = select_patches(torch.from_numpy(frames), backend="gpu", **options)
    ref = select_patches(frames, backend="cpu", **options)
    assert ref[3][1].tolist() != [[1, 0, 0], [0, 1, 0]]  # motion was found
    for x, y in zip(gpu, ref, strict=True):
        assert x.device.type == "cpu" and x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(_bits(x), _bits(y))
