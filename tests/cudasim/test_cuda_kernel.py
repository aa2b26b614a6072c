"""The Numba CUDA kernel in the simulator, against the reference and the CPU
kernel: every output identical, not close.

The simulator runs each CUDA thread as a Python thread, so inputs are tiny
and ``THREADS_PER_BLOCK`` is lowered, which also makes them span blocks.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cps_ray import select_patches
from cps_ray._kernels import cpu, reference


@pytest.fixture
def kernel(monkeypatch):
    """``cps_ray._kernels.cuda`` with 8 threads per block (imported here, not at
    collection, so the folder skips cleanly without the simulator)."""
    from cps_ray._kernels import cuda

    monkeypatch.setattr(cuda, "THREADS_PER_BLOCK", 8)
    return cuda


def _assert_identical(got, expected):
    for x, y in zip(got, expected, strict=True):
        x = x.numpy() if isinstance(x, torch.Tensor) else x
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


def _check_all_backends(kernel, frames, patch_size, k_keep):
    got = kernel.select(frames, patch_size, k_keep)
    assert all(t.device.type == "cpu" for t in got)  # the simulator returns CPU tensors
    ref = reference.select(frames, patch_size, k_keep)
    _assert_identical(got, ref)
    _assert_identical(got, cpu.select(frames, patch_size, k_keep))
    return ref


def _random(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize(
    "shape, patch_size, k_keep",
    [((3, 3, 8, 8), 2, 5), ((3, 3, 8, 8), 4, 7), ((1, 3, 8, 8), 2, 6), ((2, 3, 6, 6), 3, 3)],
)
def test_matches_reference_and_cpu_random(kernel, shape, patch_size, k_keep):
    _check_all_backends(kernel, _random(sum(shape) + k_keep, shape), patch_size, k_keep)


@pytest.mark.parametrize("k_keep", [1, 48])
def test_k_extremes(kernel, k_keep):
    ref = _check_all_backends(kernel, _random(5, (3, 3, 8, 8)), 2, k_keep)
    if k_keep == 48:
        assert ref[1].tolist() == list(range(48))


@pytest.mark.parametrize("value", [0, 77, 128])
@pytest.mark.parametrize("k_keep", [11, 16, 17])
def test_flat_frames_all_ties(kernel, value, k_keep):
    frames = np.full((3, 3, 8, 8), value, np.uint8)
    ref = _check_all_backends(kernel, frames, 2, k_keep)
    # frame 0 (16 patches) carries its distance from grey, later frames nothing
    assert ref[1].tolist() == list(range(k_keep))
    assert (ref[2][: min(k_keep, 16)] == 4 * 3 * 4 * (value - 128) ** 2).all()
    assert not ref[2][16:].any()


def test_exactly_grey_first_frame(kernel):
    frames = _random(21, (3, 3, 8, 8))
    frames[0] = 128
    for k_keep in (1, 16, 20, 48):
        _check_all_backends(kernel, frames, 2, k_keep)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_table_gather_matches_cpu(kernel, dtype):
    from cps_ray._convert import bits_table

    frames = _random(22, (2, 3, 8, 8))
    table = bits_table(dtype)
    got = kernel.select(frames, 2, 9, table=table)
    _assert_identical(got, cpu.select(frames, 2, 9, table=table))
    assert got[0].numpy().dtype == table.dtype


@pytest.mark.parametrize("selection", ["random", "uniform"])
def test_baselines_match_cpu(kernel, selection):
    options = dict(patch_size=2, k_keep=10, output_dtype="bf16", selection=selection, seed=7)
    frames = _random(23, (3, 3, 8, 8))
    gpu = select_patches(torch.from_numpy(frames), backend="gpu", **options)
    ref = select_patches(frames, backend="cpu", **options)
    for x, y in zip(gpu, ref, strict=True):
        assert torch.equal(_bits(x), _bits(y))


def test_many_ties_split_at_the_threshold(kernel):
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 2, (3, 3, 4, 4), dtype=np.uint8) * 200
    frames = np.kron(blocks, np.ones((1, 1, 2, 2), np.uint8)).astype(np.uint8)
    frames[:, :, ::2, ::2] += 1
    energies = reference.patch_energies(frames, 2)
    for k_keep in (9, 20):
        ref = _check_all_backends(kernel, frames, 2, k_keep)
        # The k-th energy is tied with patches left out: the tie rule decides.
        threshold = ref[2].min()
        assert (energies == threshold).sum() > (ref[2] == threshold).sum()


def test_top_k_kernel_on_crafted_energies(kernel):
    # Energies that agree on every radix digit but the last, that differ only
    # in the top one, up to 2**62, and ties at the threshold: two clips in one
    # launch, against the reference top-k.
    high = np.int64(0x3FED_CBA9_8765_4320)
    clips = np.array(
        [
            [high + 1, 5, high, high + 1, 0, 2**62, high + 15, 5, high, 2**62, 0, high + 1],
            [7, 7, 0, 7, 2**40, 7, 0, 2**40 + 1, 7, 7, 3, 7],
        ],
        np.int64,
    )
    for k_keep in (1, 5, 9, 12):
        flat = np.empty((2, k_keep), np.int64)
        kept = np.empty((2, k_keep), np.int64)
        kernel._top_k_kernel[2, 4, 0](clips, k_keep, flat, kept)
        for b in range(2):
            expected = reference.top_k(clips[b], k_keep)
            assert flat[b].tolist() == expected.tolist()
            assert kept[b].tolist() == clips[b][expected].tolist()


@pytest.mark.parametrize("threads_per_block", [1, 3, 256])
def test_block_size_does_not_change_the_result(kernel, monkeypatch, threads_per_block):
    # 1 and 3: many blocks and a scan that is not a power of two; 256: the
    # default, one block holding the whole clip.
    monkeypatch.setattr(kernel, "THREADS_PER_BLOCK", threads_per_block)
    _check_all_backends(kernel, _random(9, (3, 3, 8, 8)), 2, 10)


def test_batch_equals_each_clip(kernel):
    clips = _random(3, (3, 2, 3, 8, 8))
    clips[1] = 40  # a flat clip between two random ones
    patches, flat, energies = kernel.select_batch(clips, 2, 9)
    assert patches.shape == (3, 9, 3, 2, 2) and flat.shape == energies.shape == (3, 9)
    for b in range(3):
        _assert_identical((patches[b], flat[b], energies[b]), reference.select(clips[b], 2, 9))


def test_torch_input_and_non_contiguous_view(kernel):
    frames = _random(4, (2, 3, 8, 16))[..., ::2]
    assert not frames.flags.c_contiguous
    ref = reference.select(np.ascontiguousarray(frames), 2, 6)
    _assert_identical(kernel.select(frames, 2, 6), ref)
    _assert_identical(kernel.select(torch.from_numpy(np.ascontiguousarray(frames)), 2, 6), ref)


def test_concurrent_calls_take_turns_in_the_simulator(kernel):
    # The simulator allows one kernel at a time; local_stream calls from threads.
    clips = _random(6, (4, 2, 3, 8, 8))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda clip: kernel.select(clip, 4, 3), clips))
    for clip, got in zip(clips, results, strict=True):
        _assert_identical(got, reference.select(clip, 4, 3))


@pytest.mark.parametrize("threads_per_block", [0, 1025])
def test_threads_per_block_out_of_range_is_an_error(kernel, monkeypatch, threads_per_block):
    monkeypatch.setattr(kernel, "THREADS_PER_BLOCK", threads_per_block)
    with pytest.raises(ValueError, match="THREADS_PER_BLOCK"):
        kernel.select(np.zeros((1, 3, 4, 4), np.uint8), 2, 1)


def test_threads_per_block_come_from_the_environment(kernel, monkeypatch):
    monkeypatch.setenv("CPS_RAY_CUDA_THREADS_PER_BLOCK", "16")
    assert kernel._threads_per_block_from_env() == 16
    monkeypatch.delenv("CPS_RAY_CUDA_THREADS_PER_BLOCK")
    assert kernel._threads_per_block_from_env() == 256
    monkeypatch.setenv("CPS_RAY_CUDA_THREADS_PER_BLOCK", "many")
    with pytest.raises(ValueError, match="CPS_RAY_CUDA_THREADS_PER_BLOCK.*'many'"):
        kernel._threads_per_block_from_env()


def _bits(tensor):
    return tensor.view({4: torch.int32, 2: torch.int16}[tensor.element_size()])


@pytest.mark.parametrize("output_dtype", ["fp32", "fp16", "bf16"])
def test_select_patches_gpu_equals_cpu_bit_for_bit(kernel, output_dtype):
    frames = _random(12, (3, 3, 8, 8))
    options = dict(patch_size=2, k_keep=12, output_dtype=output_dtype)
    gpu = select_patches(torch.from_numpy(frames), backend="gpu", **options)
    ref = select_patches(frames, backend="cpu", **options)
    for x, y in zip(gpu, ref, strict=True):
        assert x.device.type == "cpu" and x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(_bits(x), _bits(y))


def test_missing_numba_cuda_names_the_package_and_extra():
    code = (
        "import sys; sys.modules['numba.cuda'] = None\n"
        "from cps_ray.errors import MissingDependencyError\n"
        "try:\n    import cps_ray._kernels.cuda\n"
        "except MissingDependencyError as e:\n    print('MISSING:', e)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "MISSING:" in out.stdout
    assert "torch imported: False" in out.stdout  # named before anything heavy is loaded
    assert "numba-cuda" in out.stdout and "cps_ray[cuda]" in out.stdout
