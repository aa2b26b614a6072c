import numpy as np
import pytest
import torch

from cps_ray import ConfigError, CpsRayError, select_patches
from cps_ray.devices import override_cuda_device_count
from cps_ray.errors import DeviceUnavailableError
from cps_ray.kernels import reference


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize(
    "dtype, torch_dtype",
    [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)],
)
def test_outputs_follow_design(frames, dtype, torch_dtype):
    patches, fields, scores = select_patches(frames, patch_size=7, k_keep=20, output_dtype=dtype)
    assert patches.shape == (20, 3, 7, 7) and patches.dtype == torch_dtype
    assert patches.device.type == "cpu"
    assert fields.shape == (20, 3) and fields.dtype == torch.int32
    assert scores.shape == (20,) and scores.dtype == torch.float32
    assert float(patches.min()) >= 0.0 and float(patches.max()) <= 1.0

    ref_u8, ref_flat, ref_e = reference.select(frames, 7, 20)
    g = 4
    flat = fields[:, 0].long() * g * g + fields[:, 1].long() * g + fields[:, 2].long()
    assert flat.tolist() == ref_flat.tolist()
    assert flat.tolist() == sorted(flat.tolist())  # ascending flat index
    expected_scores = (ref_e.astype(np.float64) / (3 * 49 * 49)).astype(np.float32)
    assert np.array_equal(scores.numpy(), expected_scores)
    expected = (torch.from_numpy(ref_u8).float() / 255).to(torch_dtype)
    assert torch.equal(patches, expected)
    # patches[i] is frames[t, :, r*p:(r+1)*p, c*p:(c+1)*p] / 255
    t, r, c = fields[3].tolist()
    window = torch.from_numpy(frames[t, :, r * 7 : (r + 1) * 7, c * 7 : (c + 1) * 7]).float() / 255
    assert torch.equal(patches[3], window.to(torch_dtype))


def test_numpy_and_torch_inputs_agree(frames):
    a = select_patches(frames, patch_size=7, k_keep=30)
    b = select_patches(torch.from_numpy(frames), patch_size=7, k_keep=30)
    # the same values through a non-contiguous view
    view = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 1, 3, 2))).transpose(2, 3)
    assert not view.is_contiguous()
    c = select_patches(view, patch_size=7, k_keep=30)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)


def test_scores_are_mean_variance_on_first_frame():
    frames = np.zeros((1, 3, 4, 4), np.uint8)
    frames[0, :, :2, :2] = np.array([[0, 10], [20, 30]], np.uint8)
    _, fields, scores = select_patches(frames, patch_size=2, k_keep=1)
    assert fields.tolist() == [[0, 0, 0]]
    # population variance of (0, 10, 20, 30) is 125, same on every channel
    assert scores.tolist() == [125.0]


def test_scores_are_mean_squared_residual_after():
    frames = np.zeros((2, 3, 4, 4), np.uint8)
    frames[1, 0, 2:, 2:] = 6  # one channel of patch (1, 1, 1) moves by 6
    _, fields, scores = select_patches(frames, patch_size=2, k_keep=1)
    assert fields.tolist() == [[1, 1, 1]]
    # E = n * 4 * 36, score = E / (3 n^2) = 4 * 36 / (3 * 4) = 12
    assert scores.tolist() == [12.0]


@pytest.mark.parametrize(
    "bad, field",
    [
        (np.zeros((2, 3, 8, 8), np.float32), "frames"),
        (np.zeros((2, 1, 8, 8), np.uint8), "frames"),
        (np.zeros((2, 3, 8, 6), np.uint8), "frames"),
        (np.zeros((3, 8, 8), np.uint8), "frames"),
    ],
)
def test_bad_frames(bad, field):
    with pytest.raises(ConfigError) as info:
        select_patches(bad, patch_size=4, k_keep=1)
    assert info.value.field == field and "uint8 [T, 3, S, S]" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"patch_size": 3}, "patch_size"),
        ({"k_keep": 0}, "k_keep"),
        ({"k_keep": 9}, "k_keep"),
        ({"output_dtype": "int8"}, "output_dtype"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_arguments(kwargs, field):
    args = {"patch_size": 4, "k_keep": 2, **kwargs}
    with pytest.raises(ConfigError) as info:
        select_patches(np.zeros((2, 3, 8, 8), np.uint8), **args)
    assert info.value.field == field


def test_gpu_backend_without_cuda_is_an_error(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    with override_cuda_device_count(0):
        with pytest.raises(DeviceUnavailableError, match="backend='gpu'") as info:
            select_patches(np.zeros((2, 3, 8, 8), np.uint8), patch_size=4, k_keep=2, backend="gpu")
    assert isinstance(info.value, CpsRayError)
