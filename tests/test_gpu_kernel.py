"""The CUDA selection kernel on a real GPU (no video files needed)."""

import numpy as np
import pytest
import torch

from cps_ray import select_patches
from cps_ray._kernels import reference

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(16, 224, 14, 2048), (8, 112, 16, 100), (3, 28, 7, 48)])
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_gpu_equals_cpu_and_reference(shape, dtype):
    t, s, p, k = shape
    rng = np.random.default_rng(t + s)
    frames = rng.integers(0, 256, (t, 3, s, s), dtype=np.uint8)
    frames[:, :, : s // 2] = 128  # flat half: ties
    cpu = select_patches(frames, patch_size=p, k_keep=k, output_dtype=dtype)
    gpu = select_patches(
        torch.from_numpy(frames).cuda(), patch_size=p, k_keep=k, backend="gpu", output_dtype=dtype
    )
    for a, b in zip(cpu, gpu):
        assert b.device == torch.device("cuda:0")
        assert torch.equal(a, b.cpu())
    _, flat, _ = reference.select(frames, p, k)
    g = s // p
    got = gpu[1].cpu().long()
    assert (got[:, 0] * g * g + got[:, 1] * g + got[:, 2]).tolist() == flat.tolist()


def test_batched_launch_equals_per_clip():
    from cps_ray._kernels import cuda

    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (64, 8, 3, 56, 56), dtype=np.uint8)
    patches, flat, energies = cuda.select_batch(torch.from_numpy(frames).cuda(), 14, 30)
    for b in (0, 17, 63):
        ref = reference.select(frames[b], 14, 30)
        assert np.array_equal(patches[b].cpu().numpy(), ref[0])
        assert np.array_equal(flat[b].cpu().numpy(), ref[1])
        assert np.array_equal(energies[b].cpu().numpy(), ref[2])


def test_output_on_the_requested_device():
    last = torch.cuda.device_count() - 1
    frames = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    out = select_patches(frames, patch_size=14, k_keep=3, backend="gpu", device_id=last)
    assert all(t.device == torch.device("cuda", last) for t in out)
