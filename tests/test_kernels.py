"""Energies and selection of every CPU backend against the reference."""

import numpy as np
import pytest

from cps_ray.kernels import cpu, reference


def _brute_energy(frames, t, r, c, p):
    """DESIGN.md's formula for one patch, written out with Python ints."""
    n = p * p
    if t == 0:
        total = 0
        for ch in range(3):
            x = [int(v) for v in frames[0, ch, r * p : (r + 1) * p, c * p : (c + 1) * p].ravel()]
            total += n * sum(v * v for v in x) - sum(x) ** 2
        return total
    acc = 0
    for ch in range(3):
        a = frames[t, ch, r * p : (r + 1) * p, c * p : (c + 1) * p].astype(int).ravel()
        b = frames[t - 1, ch, r * p : (r + 1) * p, c * p : (c + 1) * p].astype(int).ravel()
        acc += sum(int(d) * int(d) for d in (a - b))
    return n * acc


def test_reference_energy_matches_formula():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    e = reference.patch_energies(frames, 4)
    assert e.dtype == np.int64 and e.shape == (3 * 9,)
    for t in range(3):
        for r in range(3):
            for c in range(3):
                assert e[t * 9 + r * 3 + c] == _brute_energy(frames, t, r, c, 4)


def test_reference_top_k_tie_rule_and_order():
    energies = np.array([5, 9, 5, 9, 1, 5], dtype=np.int64)
    # Two 9s, then the 5s by smallest index.
    assert reference.top_k(energies, 3).tolist() == [0, 1, 3]
    assert reference.top_k(energies, 4).tolist() == [0, 1, 2, 3]
    assert reference.top_k(energies, 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_extreme_values_do_not_overflow():
    frames = np.zeros((2, 3, 64, 64), np.uint8)
    frames[0, :, ::2, :] = 255  # maximal intra variance
    frames[1] = 255 - frames[0]  # maximal residual
    e_ref = reference.patch_energies(frames, 64)
    n = 64 * 64
    assert e_ref[0] == 3 * (n * (n // 2) * 255**2 - ((n // 2) * 255) ** 2)
    assert e_ref[1] == n * 3 * n * 255**2
    assert np.array_equal(cpu.select(frames, 64, 2)[2], e_ref)


def _assert_same(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(4, 28, 7), (3, 24, 8), (1, 14, 14), (5, 30, 5)])
def test_cpu_matches_reference_random(seed, shape):
    t, s, p = shape
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, 3, s, s), dtype=np.uint8)
    total = t * (s // p) ** 2
    for k in sorted({1, max(1, total // 3), total}):
        _assert_same(cpu.select(frames, p, k), reference.select(frames, p, k))


def test_cpu_matches_reference_flat_frames_all_ties():
    frames = np.full((4, 3, 16, 16), 77, np.uint8)
    for k in (1, 5, 16, 64):
        ref = reference.select(frames, 4, k)
        _assert_same(cpu.select(frames, 4, k), ref)
        # Every energy is 0: the first k flat indices win.
        assert ref[1].tolist() == list(range(k))
        assert not ref[2].any()


def test_cpu_matches_reference_many_ties():
    rng = np.random.default_rng(7)
    # Two grey levels per patch -> few distinct energies, many ties.
    blocks = rng.integers(0, 2, (3, 3, 4, 4), dtype=np.uint8) * 200
    frames = np.kron(blocks, np.ones((1, 1, 4, 4), np.uint8)).astype(np.uint8)
    frames[:, :, ::4, ::4] += 1
    energies = reference.patch_energies(frames, 4)
    assert len(np.unique(energies)) < energies.size  # the case really has ties
    for k in range(1, energies.size + 1, 3):
        _assert_same(cpu.select(frames, 4, k), reference.select(frames, 4, k))


def test_k_equals_all_patches_keeps_everything_in_order():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    patches, flat, energies = cpu.select(frames, 4, 8)
    assert flat.tolist() == list(range(8))
    _assert_same((patches, flat, energies), reference.select(frames, 4, 8))


def test_gather_is_the_patch():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    patches, flat, _ = cpu.select(frames, 4, 8)
    # flat 5 = t 1, r 0, c 1
    assert np.array_equal(patches[5], frames[1, :, 0:4, 4:8])


def test_non_contiguous_input_is_accepted():
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (2, 3, 16, 32), dtype=np.uint8)
    view = big[:, :, :, ::2]
    assert not view.flags.c_contiguous
    _assert_same(cpu.select(view, 4, 10), reference.select(np.ascontiguousarray(view), 4, 10))


def test_warmup_is_callable_twice():
    cpu.warmup()
    cpu.warmup()
