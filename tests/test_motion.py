"""motion="global": the estimator recovers known camera motion and finds none
where there is none, ``select_patches``/``PatchStreamConfig`` expose it, and
``rebuild_clip`` pastes and warps as docs/selection.md says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cps_ray import ConfigError, PatchStreamConfig, rebuild_clip, select_patches
from cps_ray._kernels import reference
from cps_ray._motion import block_sums, estimate_motion, global_warp

SIZE = 224


def _scene(seed: int, side: int = 640) -> np.ndarray:
    """float64 [3, side, side]: a photograph-like texture (smooth noise with
    edges at several scales), values in [0, 255]."""
    rng = np.random.default_rng(seed)
    out = np.empty((3, side, side))
    freq = np.fft.fftfreq(side)
    radius = np.hypot(freq[:, None], freq[None, :])
    for ch in range(3):
        spectrum = np.fft.fft2(rng.normal(size=(side, side))) / (radius + 0.004) ** 1.2
        out[ch] = np.fft.ifft2(spectrum).real
    out += (rng.random((1, 16, 16)) > 0.5).repeat(side // 16, 1).repeat(side // 16, 2) * 2.0
    out -= out.min()
    return out * (255 / out.max())


def _render(scene: np.ndarray, scale: float, centre: tuple[float, float]) -> np.ndarray:
    """uint8 [3, S, S]: the view of ``scene`` whose pixel (x, y) shows scene
    point ``centre + scale * ((x, y) - (S - 1) / 2)`` (bilinear)."""
    half = (SIZE - 1) / 2
    grid = (np.arange(SIZE) - half) * scale
    xs, ys = np.meshgrid(grid + centre[0], grid + centre[1])
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    top = scene[:, y0, x0] * (1 - fx) + scene[:, y0, x0 + 1] * fx
    bottom = scene[:, y0 + 1, x0] * (1 - fx) + scene[:, y0 + 1, x0 + 1] * fx
    return np.rint(top * (1 - fy) + bottom * fy).clip(0, 255).astype(np.uint8)


def _camera(scene, scales, centres):
    """uint8 [T, 3, S, S] views, and the true A_t (frame t -> t - 1) as [T, 2, 3]."""
    frames = np.stack([_render(scene, s, c) for s, c in zip(scales, centres)])
    half = (SIZE - 1) / 2
    truth = [np.array([[1.0, 0, 0], [0, 1, 0]])]
    for t in range(1, len(scales)):
        ratio = scales[t] / scales[t - 1]
        shift = (np.asarray(centres[t]) - np.asarray(centres[t - 1])) / scales[t - 1]
        offset = half * (1 - ratio) + shift
        truth.append(np.array([[ratio, 0, offset[0]], [0, ratio, offset[1]]]))
    return frames, np.stack(truth)


def _largest_error(estimate, truth) -> float:
    """Pixels: the largest distance between where the two motions send the
    frame's corners."""
    corners = np.array([[0, 0, 1], [SIZE - 1, 0, 1], [0, SIZE - 1, 1], [SIZE - 1, SIZE - 1, 1]])
    return float(np.abs(corners @ estimate.T - corners @ truth.T).max())


@pytest.fixture(scope="module")
def scene():
    return _scene(1)


@pytest.mark.parametrize(
    "scales, centres",
    [
        ([1.0] * 4, [(320, 320), (330.5, 318), (341, 316.25), (352.5, 314)]),  # pan
        ([1.0, 0.97, 0.94, 0.91], [(320, 320)] * 4),  # zoom in
        ([0.9, 0.95, 1.0, 1.04], [(300, 330), (306, 330), (312, 330), (318, 330)]),  # zoom + pan
        ([1.0] * 3, [(320, 320), (296, 344), (272, 368)]),  # 24 px diagonal steps
    ],
    ids=["pan", "zoom-in", "zoom-out-pan", "large-steps"],
)
def test_estimator_recovers_known_shifts_and_zooms(scene, scales, centres):
    frames, truth = _camera(scene, scales, centres)
    estimate = estimate_motion(frames)
    assert np.array_equal(estimate[0], truth[0])
    for t in range(1, len(frames)):
        assert _largest_error(estimate[t], truth[t]) < 0.35, (t, estimate[t], truth[t])


def test_no_motion_on_a_still_scene_with_a_moving_object(scene):
    # local motion over a still background: no camera motion, so the energies
    # are those of motion="none", bit for bit
    background = _render(scene, 1.0, (320, 320))
    frames = np.repeat(background[None], 5, axis=0)
    for t in range(5):
        frames[t, :, 60 + 8 * t : 130 + 8 * t, 40 + 12 * t : 110 + 12 * t] = _render(
            scene, 0.5, (100, 500)
        )[:, :70, :70]
    assert (global_warp(frames) == reference.identity_warp(5)).all()
    kept = [select_patches(frames, patch_size=14, k_keep=300, motion=m, return_motion=True)
            for m in ("global", "none")]  # fmt: skip
    for x, y in zip(*kept, strict=True):
        assert torch.equal(x, y)


def test_no_motion_when_a_textured_object_crosses_a_smooth_background(scene):
    # the object holds all the texture, so a global fit follows it; the
    # still background (a gentle ramp) tells that the camera did not move
    ramp = np.linspace(70, 150, SIZE)
    background = np.broadcast_to((ramp[None, :] + ramp[:, None] / 3)[None], (3, SIZE, SIZE))
    frames = np.repeat(np.rint(background).astype(np.uint8)[None], 6, axis=0)
    texture = _render(scene, 1.0, (320, 320))[:, :90, :90]
    for t in range(6):
        frames[t, :, 20 + 16 * t : 110 + 16 * t, 30 + 12 * t : 120 + 12 * t] = texture
    assert (global_warp(frames) == reference.identity_warp(6)).all()


@pytest.mark.parametrize(
    "frames",
    [
        np.full((3, 3, SIZE, SIZE), 90, np.uint8),  # flat
        np.random.default_rng(2).integers(0, 256, (3, 3, SIZE, SIZE), dtype=np.uint8),  # noise
        np.random.default_rng(3).integers(0, 256, (3, 3, 28, 28), dtype=np.uint8),  # too small
    ],
    ids=["flat", "noise", "tiny"],
)
def test_no_motion_where_none_can_be_found(frames):
    assert (global_warp(frames) == reference.identity_warp(3)).all()


def test_repeated_frames_have_no_motion(scene):
    frames, _ = _camera(scene, [1.0, 1.0, 1.0], [(320, 320), (320, 320), (330, 320)])
    warp = global_warp(frames)
    assert tuple(warp[1]) == reference.IDENTITY_WARP and tuple(warp[2]) != reference.IDENTITY_WARP


def test_estimate_is_deterministic_and_the_same_from_torch(scene):
    frames, _ = _camera(scene, [1.0, 0.97, 0.95], [(320, 320), (325, 321), (331, 322)])
    assert np.array_equal(global_warp(frames), global_warp(frames.copy()))
    # a torch clip (on any device) is summed where it lives, in integers
    assert np.array_equal(block_sums(torch.from_numpy(frames)), block_sums(frames))
    assert np.array_equal(global_warp(torch.from_numpy(frames)), global_warp(frames))


def test_select_patches_returns_the_motion_it_compensated(scene):
    frames, truth = _camera(scene, [1.0, 0.97, 0.94], [(320, 320), (326, 320), (332, 320)])
    patches, fields, scores, motion = select_patches(
        frames, patch_size=14, k_keep=200, return_motion=True
    )
    assert motion.dtype == torch.float32 and motion.shape == (3, 2, 3)
    assert motion.device.type == "cpu"
    warp = reference.motion_to_warp(motion.numpy())
    assert np.array_equal(reference.warp_to_motion(global_warp(frames)), motion.numpy())
    assert _largest_error(motion[2].double().numpy(), truth[2]) < 0.35
    u8, flat, energies = reference.select(frames, 14, 200, warp=warp)
    g = SIZE // 14
    got_flat = (fields[:, 0] * g * g + fields[:, 1] * g + fields[:, 2]).long().numpy()
    assert np.array_equal(got_flat, flat)
    assert np.array_equal(scores.numpy(), (energies / (3.0 * 14**4)).astype(np.float32))
    # the 3-tuple of existing callers is unchanged
    three = select_patches(frames, patch_size=14, k_keep=200)
    assert len(three) == 3 and all(torch.equal(a, b) for a, b in zip(three, (patches, fields,
                                                                             scores)))  # fmt: skip
    # and compensation pays: the same patches would cost more without it
    assert (
        reference.patch_energies(frames, 14, warp).sum()
        < reference.patch_energies(frames, 14).sum()
    )


def test_motion_none_gives_identity_rows_and_todays_energies():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)
    *kept, motion = select_patches(frames, patch_size=7, k_keep=9, motion="none",
                                   return_motion=True)  # fmt: skip
    assert np.array_equal(motion.numpy(), reference.warp_to_motion(reference.identity_warp(4)))
    _, flat, _ = reference.select(frames, 7, 9)
    assert kept[1][:, 0].tolist() == (flat // 16).tolist()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"motion": "local"}, "motion"),
        ({"motion": None}, "motion"),
        ({"return_motion": 1}, "return_motion"),
    ],  # fmt: skip
)
def test_bad_motion_arguments(kwargs, field):
    with pytest.raises(ConfigError) as info:
        select_patches(np.zeros((2, 3, 8, 8), np.uint8), patch_size=4, k_keep=2, **kwargs)
    assert info.value.field == field


def test_config_motion_is_validated_and_defaults_to_global():
    assert PatchStreamConfig().motion == "global"
    assert PatchStreamConfig(motion="none").motion == "none"
    with pytest.raises(ConfigError, match="motion.*'global', 'none'"):
        PatchStreamConfig(motion="camera")


# -- rebuild_clip -------------------------------------------------------------


def _kept(frames, flat, p):
    g = frames.shape[-1] // p
    fields = np.stack([flat // (g * g), flat % (g * g) // g, flat % g], axis=1)
    return reference.gather(frames, flat, p), fields


def test_rebuild_pastes_kept_patches_over_grey_and_repeats_dropped_ones():
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
    patches, fields = _kept(frames, np.array([0, 3, 5, 10]), 2)
    clip = rebuild_clip(patches, fields, reference.warp_to_motion(reference.identity_warp(3)),
                        input_size=4)  # fmt: skip
    assert clip.dtype == np.uint8 and clip.shape == (3, 3, 4, 4)
    expected = np.full((3, 4, 4), 128, np.uint8)
    for t, kept in enumerate([(0, 3), (5,), (10,)]):
        for f in kept:
            r, c = (f % 4) // 2 * 2, f % 2 * 2
            expected[:, r : r + 2, c : c + 2] = frames[t, :, r : r + 2, c : c + 2]
        assert np.array_equal(clip[t], expected), t


def test_rebuild_warps_the_previous_rebuilt_frame_grey_outside():
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (2, 3, 6, 6), dtype=np.uint8)
    motion = np.array([[[1, 0, 0], [0, 1, 0]], [[1, 0, 2], [0, 1, -1]]], np.float32)
    patches, fields = _kept(frames, np.arange(9), 2)  # all of frame 0, nothing of frame 1
    clip = rebuild_clip(patches, fields, motion, input_size=6)
    assert np.array_equal(clip[0], frames[0])
    # frame 1 pixel (x, y) shows frame 0 at (x + 2, y - 1), grey outside
    expected = np.full((3, 6, 6), 128, np.uint8)
    expected[:, 1:, :4] = frames[0, :, :5, 2:]
    assert np.array_equal(clip[1], expected)
    assert np.array_equal(clip[1], reference.warp_frame(frames[0], reference.motion_to_warp(
        motion)[1]))  # fmt: skip


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_rebuild_reads_every_output_dtype_and_the_row_bits(scene, dtype):
    from cps_ray._select import select_on_cpu

    frames, _ = _camera(scene, [1.0, 0.97, 0.95], [(320, 320), (325, 321), (331, 322)])
    patches, fields, _, motion = select_patches(frames, patch_size=14, k_keep=300,
                                                output_dtype=dtype, return_motion=True)  # fmt: skip
    want = rebuild_clip(*_kept(frames, _flat(fields.numpy()), 14), motion.numpy(), input_size=SIZE)
    assert np.array_equal(rebuild_clip(patches, fields, motion, input_size=SIZE), want)
    row = select_on_cpu(frames, patch_size=14, k_keep=300, output_dtype=dtype)
    assert np.array_equal(rebuild_clip(row[0], row[1], row[3], input_size=SIZE), want)


def _flat(fields, g=SIZE // 14):
    return fields[:, 0].astype(np.int64) * g * g + fields[:, 1] * g + fields[:, 2]


def test_rebuild_with_every_patch_kept_is_the_clip(scene):
    frames, _ = _camera(scene, [1.0, 0.98], [(320, 320), (324, 320)])
    total = 2 * (SIZE // 14) ** 2
    patches, fields, _, motion = select_patches(frames, patch_size=14, k_keep=total,
                                                return_motion=True)  # fmt: skip
    assert np.array_equal(rebuild_clip(patches, fields, motion, input_size=SIZE), frames)


@pytest.mark.parametrize(
    "args, field",
    [
        ((np.zeros((2, 3, 2, 2), np.uint8), np.zeros((3, 3)), np.zeros((2, 2, 3))), "meta_fields"),
        ((np.zeros((1, 3, 2, 2), np.uint8), np.array([[2, 0, 0]]), np.zeros((2, 2, 3))),
         "meta_fields"),
        ((np.zeros((1, 3, 2, 2), np.int32), np.zeros((1, 3)), np.zeros((2, 2, 3))), "patches"),
        ((np.zeros((1, 3, 2, 2), np.uint8), np.zeros((1, 3)), np.zeros((2, 3))), "meta_motion"),
    ],
)  # fmt: skip
def test_rebuild_checks_its_arguments(args, field):
    with pytest.raises(ConfigError) as info:
        rebuild_clip(*args, input_size=4)
    assert info.value.field == field
