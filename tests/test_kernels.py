"""Energies and selection of every CPU backend against the reference."""

import numpy as np
import pytest

from cps_ray._convert import bits_table
from cps_ray._kernels import cpu, reference


def _brute_energy(frames, t, r, c, p):
    """The formula (docs/selection.md) for one patch, written out with Python ints: the
    residual against the frame before, mid-grey (128) before the first."""
    n = p * p
    acc = 0
    for ch in range(3):
        for y in range(r * p, (r + 1) * p):
            for x in range(c * p, (c + 1) * p):
                before = 128 if t == 0 else int(frames[t - 1, ch, y, x])
                acc += (int(frames[t, ch, y, x]) - before) ** 2
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
    frames[0, :, ::2, :] = 255  # 0 and 255 against grey: 128**2 and 127**2
    frames[1] = 255 - frames[0]  # maximal residual
    e_ref = reference.patch_energies(frames, 64)
    n = 64 * 64
    assert e_ref[0] == n * 3 * (n // 2) * (128**2 + 127**2)
    assert e_ref[1] == n * 3 * n * 255**2
    assert np.array_equal(cpu.select(frames, 64, 2)[2], e_ref)


def test_first_frame_is_scored_against_mid_grey():
    frames = np.full((2, 3, 8, 8), 128, np.uint8)
    frames[0, :, :4, :4] = 0  # a flat dark patch: no variance, far from grey
    frames[1] = frames[0]  # nothing moves after it
    e = reference.patch_energies(frames, 4)
    assert e.tolist() == [16 * 3 * 16 * 128**2] + [0] * 7
    _assert_same(cpu.select(frames, 4, 1), reference.select(frames, 4, 1))
    assert cpu.select(frames, 4, 1)[1].tolist() == [0]


def test_exactly_grey_first_frame_has_no_energy():
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    frames[0] = 128
    e = reference.patch_energies(frames, 4)
    assert not e[:4].any() and e[4:].all()
    for k in (1, 4, 6, 12):
        _assert_same(cpu.select(frames, 4, k), reference.select(frames, 4, k))


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_gather_writes_the_table_bits(dtype):
    from cps_ray._convert import bits_table

    rng = np.random.default_rng(9)
    frames = rng.integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    table = bits_table(dtype)
    patches, flat, _ = cpu.select(frames, 4, 10, table=table)
    u8, ref_flat, _ = reference.select(frames, 4, 10)
    assert patches.dtype == table.dtype and np.array_equal(flat, ref_flat)
    assert np.array_equal(patches, table[u8])


def test_given_indices_replace_the_top_k():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    chosen = np.array([1, 2, 6], np.int64)
    got = cpu.select(frames, 4, 3, flat=chosen)
    _assert_same(got, reference.select(frames, 4, 3, flat=chosen))
    assert got[1].tolist() == [1, 2, 6]
    assert got[2].tolist() == reference.patch_energies(frames, 4)[[1, 2, 6]].tolist()


def _assert_same(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "shape", [(4, 28, 7), (3, 24, 8), (1, 14, 14), (5, 30, 5), (2, 224, 14), (2, 128, 64)]
)
def test_cpu_matches_reference_random(seed, shape):
    t, s, p = shape
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, 3, s, s), dtype=np.uint8)
    total = t * (s // p) ** 2
    for k in sorted({1, max(1, total // 3), total}):
        _assert_same(cpu.select(frames, p, k), reference.select(frames, p, k))


@pytest.mark.parametrize("value", [77, 128])
def test_cpu_matches_reference_flat_frames_all_ties(value):
    frames = np.full((4, 3, 16, 16), value, np.uint8)
    n = 16
    for k in (1, 5, 16, 17, 64):
        ref = reference.select(frames, 4, k)
        _assert_same(cpu.select(frames, 4, k), ref)
        # Frame 0 carries its distance from grey, later frames nothing; the
        # smallest flat indices win every tie.
        assert ref[1].tolist() == list(range(k))
        assert (ref[2][:n] == n * 3 * n * (value - 128) ** 2).all()
        assert not ref[2][n:].any()


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


def test_warmup_compiles_every_kernel_once():
    """A worker's warm-up leaves every kernel a real call runs compiled (or
    loaded), and a second warm-up adds nothing."""
    kernels = ("_energies", "_top_k", "_gather", "_pick")
    cpu.warmup()
    compiled = {name: len(getattr(cpu, name).signatures) for name in kernels}
    assert all(compiled.values()), compiled
    frames = np.random.default_rng(1).integers(0, 256, (3, 3, 28, 28), dtype=np.uint8)
    cpu.select(frames, 14, 5, table=bits_table("bf16"), warp=reference.identity_warp(3))
    cpu.warmup()
    assert {name: len(getattr(cpu, name).signatures) for name in kernels} == compiled


# -- camera motion: frame t - 1 warped by a fixed-point motion ----------------


def _warp(rows):
    """int64 [T, 6] fixed point from float (a, b, tx, c, d, ty) rows."""
    return np.rint(np.asarray(rows, np.float64) * reference.WARP_ONE).astype(np.int64)


def _brute_warped_energy(frames, warp, t, r, c, p):
    """The compensated formula (docs/selection.md) for one patch with Python ints: frame
    t - 1 sampled at A_t (x, y, 1), rounded to the nearest pixel (halves up),
    grey outside; frame 0 against grey."""
    size = frames.shape[-1]
    a, b, tx, cc, d, ty = (int(v) for v in warp[t])
    one = reference.WARP_ONE
    acc = 0
    for y in range(r * p, (r + 1) * p):
        for x in range(c * p, (c + 1) * p):
            xs = (a * x + b * y + tx + one // 2) // one
            ys = (cc * x + d * y + ty + one // 2) // one
            for ch in range(3):
                if t == 0 or not (0 <= xs < size and 0 <= ys < size):
                    before = 128
                else:
                    before = int(frames[t - 1, ch, ys, xs])
                acc += (int(frames[t, ch, y, x]) - before) ** 2
    return p * p * acc


def _random_warps(rng, num_t):
    rows = [[1, 0, 0, 0, 1, 0]]
    for _ in range(1, num_t):
        scale, angle = 1 + rng.normal() * 0.15, rng.normal() * 0.2
        shift = rng.normal(size=2) * 3
        rows.append([scale * np.cos(angle), -scale * np.sin(angle), shift[0],
                     scale * np.sin(angle), scale * np.cos(angle), shift[1]])  # fmt: skip
    return _warp(rows)


def test_reference_warped_energy_matches_formula():
    rng = np.random.default_rng(30)
    frames = rng.integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    warp = _warp([[1, 0, 0, 0, 1, 0], [1, 0, 2.5, 0, 1, -1.5], [0.9, -0.1, 1.2, 0.1, 0.9, 0.4]])
    e = reference.patch_energies(frames, 4, warp)
    for t in range(3):
        for r in range(3):
            for c in range(3):
                assert e[t * 9 + r * 3 + c] == _brute_warped_energy(frames, warp, t, r, c, 4)


def test_identity_warp_is_the_rule_without_motion_bit_for_bit():
    rng = np.random.default_rng(31)
    frames = rng.integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)
    identity = reference.identity_warp(4)
    assert np.array_equal(reference.patch_energies(frames, 7, identity),
                          reference.patch_energies(frames, 7))  # fmt: skip
    for k in (1, 20, 64):
        _assert_same(cpu.select(frames, 7, k, warp=identity), reference.select(frames, 7, k))


def test_integer_shift_compares_shifted_pixels_and_grey_where_new():
    rng = np.random.default_rng(32)
    frames = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    frames[1, :, :, :6] = frames[0, :, :, 2:]  # the camera moved 2 px right
    warp = _warp([[1, 0, 0, 0, 1, 0], [1, 0, 2, 0, 1, 0]])
    e = reference.patch_energies(frames, 2, warp)
    n = 4
    expected_new = [n * int(((frames[1, :, 2 * r : 2 * r + 2, 6:8].astype(int) - 128) ** 2).sum())
                    for r in range(4)]  # fmt: skip
    # frame 1: columns 0-2 of patches match exactly, column 3 is new (grey)
    assert e[16:].reshape(4, 4)[:, :3].sum() == 0
    assert e[16:].reshape(4, 4)[:, 3].tolist() == expected_new
    _assert_same(cpu.select(frames, 2, 20, warp=warp), reference.select(frames, 2, 20, warp=warp))


def test_rounding_is_to_the_nearest_pixel_halves_up():
    frames = np.zeros((2, 3, 4, 4), np.uint8)
    frames[0, :, :, 1] = 200  # a bright column at x = 1
    for shift, column in ((0.49, 0), (0.5, 1), (-0.5, 0), (-0.51, -1)):
        ys, xs = reference.source_positions(_warp([[1, 0, shift, 0, 1, 0]])[0], 4)
        assert xs[0, 0] == column, shift
        assert (ys == np.arange(4)[:, None]).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(4, 28, 7), (3, 24, 8), (2, 30, 5), (3, 112, 14)])
def test_cpu_matches_reference_with_motion(seed, shape):
    t, s, p = shape
    rng = np.random.default_rng(100 + seed)
    frames = rng.integers(0, 256, (t, 3, s, s), dtype=np.uint8)
    warp = _random_warps(rng, t)
    if seed % 2:  # no rotation: the CPU kernel's separable path
        warp[:, 1] = warp[:, 3] = 0
    total = t * (s // p) ** 2
    for k in sorted({1, max(1, total // 3), total}):
        got = cpu.select(frames, p, k, warp=warp)
        _assert_same(got, reference.select(frames, p, k, warp=warp))
    if k == total:
        assert got[1].tolist() == list(range(total))


@pytest.mark.parametrize("row", [[1.2, 0, -3, 0, 1.2, -3], [0.8, 0, 30, 0, 0.8, -40],
                                 [1, 0, -100, 0, 1, 0], [-1, 0, 7, 0, -1, 7],
                                 [0, 1, 0, 1, 0, 0]])  # fmt: skip
def test_cpu_matches_reference_on_extreme_warps(row):
    # out of the frame altogether, mirrored, transposed: the kernels follow
    # the formula whatever the motion
    rng = np.random.default_rng(33)
    frames = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    warp = _warp([[1, 0, 0, 0, 1, 0], row, row])
    for k in (1, 17, 48):
        _assert_same(cpu.select(frames, 2, k, warp=warp), reference.select(frames, 2, k, warp=warp))


@pytest.mark.parametrize("value", [77, 128])
def test_flat_frames_with_motion_all_ties(value):
    frames = np.full((3, 3, 16, 16), value, np.uint8)
    warp = _warp([[1, 0, 0, 0, 1, 0], [1, 0, 4, 0, 1, 0], [0.5, 0, 4, 0, 0.5, 4]])
    energies = reference.patch_energies(frames, 4, warp)
    for k in (1, 5, 16, 17, 48):
        ref = reference.select(frames, 4, k, warp=warp)
        _assert_same(cpu.select(frames, 4, k, warp=warp), ref)
        assert ref[1].tolist() == reference.top_k(energies, k).tolist()
    # frame 1 moved 4 px: its last patch column sees grey, the rest the same value
    frame1 = energies[16:32].reshape(4, 4)
    assert not frame1[:, :3].any() and (frame1[:, 3] == 16 * 3 * 16 * (value - 128) ** 2).all()


def test_warp_and_motion_round_trip_exactly():
    rng = np.random.default_rng(34)
    warp = rng.integers(-(1 << 23), 1 << 23, (5, 6)).astype(np.int64)
    motion = reference.warp_to_motion(warp)
    assert motion.dtype == np.float32 and motion.shape == (5, 2, 3)
    assert np.array_equal(reference.motion_to_warp(motion), warp)
