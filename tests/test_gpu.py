"""Real-GPU tests: skipped without CUDA, failing instead with CPS_RAY_REQUIRE_GPU=1.

Run on a GPU machine with ``scripts/gpu_session.sh`` (or ``pytest -m gpu``).
The media are ``gpu_media`` (320x256, inside every NVDEC's size limits); which
codecs this GPU's NVDEC decodes follows :func:`media.nvdec_decodes`.
"""

import pytest
import torch
from media import GPU_MEDIA, nvdec_decodes

from cps_ray import (
    DecodeConfig,
    DecodeError,
    PatchStreamConfig,
    decode_only,
    patch_stream,
    select_patches,
)
from cps_ray._decode.resize import resize_center_crop
from cps_ray._devices import nvdec_problem

pytestmark = pytest.mark.gpu

# Mean absolute difference, in uint8 levels, between NVDEC + torch resize
# and the CPU's decode + one swscale call of the same frames. torchcodec's
# CPU decode + the torch resize is 3.0-3.4 from the CPU's on these files
# (320x256 testsrc2 at 128; 1.8 with torchcodec's two-step swscale before
# swscale-bilinear-v1); NVDEC's colour conversion adds its own rounding.
GPU_DECODE_TOLERANCE = 5.0


def test_torchcodec_decodes_on_this_gpu():
    assert nvdec_problem(0) is None


@pytest.mark.parametrize("name", sorted(GPU_MEDIA))
def test_nvdec_decodes_what_this_gpu_supports(gpu_media, name):
    """A codec this GPU's NVDEC decodes is decoded there, close to the CPU;
    any other falls back to the CPU under auto (saying why) and is a
    DecodeError under gpu."""
    cfg = dict(video_path=str(gpu_media[name]), sequence_length=6, input_size=128)
    cpu = decode_only(DecodeConfig(**cfg, decode_backend="cpu"))
    if nvdec_decodes(name, torch.cuda.get_device_capability(0)):
        gpu = decode_only(DecodeConfig(**cfg, decode_backend="gpu"))
        assert gpu.frames.device == torch.device("cuda:0") and gpu.decode_backend == "gpu"
        assert gpu.device_fallback is None
        assert torch.equal(gpu.frame_indices, cpu.frame_indices)
        diff = (gpu.frames.cpu().float() - cpu.frames.float()).abs().mean()
        assert diff < GPU_DECODE_TOLERANCE
        return
    auto = decode_only(DecodeConfig(**cfg))
    assert auto.decode_backend == "cpu" and auto.device_fallback
    assert torch.equal(auto.frames, cpu.frames)
    with pytest.raises(DecodeError, match="NVDEC cannot decode it"):
        decode_only(DecodeConfig(**cfg, decode_backend="gpu"))


def _small(gpu_media, **backends) -> PatchStreamConfig:
    return PatchStreamConfig(
        str(gpu_media["h264.mp4"]), sequence_length=4, input_size=56, patch_size=14, k_keep=20,
        **backends,
    )  # fmt: skip


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
@pytest.mark.parametrize("process", ["cpu", "gpu"])
def test_four_combinations(gpu_media, decode, process):
    cfg = _small(gpu_media, decode_backend=decode, process_backend=process)
    with patch_stream(cfg) as s:
        want = "cpu" if process == "cpu" else "cuda:0"
        assert str(s.patches.device) == want
        assert all(str(t.device) == want for t in s.metadata_tensors)
        assert (s.decode_backend, s.process_backend) == (decode, process)


def test_gpu_selection_identical_to_cpu(gpu_media):
    frames = decode_only(
        DecodeConfig(str(gpu_media["h264.mp4"]), sequence_length=8, input_size=224)
    ).frames
    for dtype in ("bf16", "fp16", "fp32"):
        cpu = select_patches(frames, patch_size=14, k_keep=512, output_dtype=dtype)
        gpu = select_patches(
            frames.cuda(), patch_size=14, k_keep=512, backend="gpu", output_dtype=dtype
        )
        for a, b in zip(cpu, gpu):
            assert b.device.type == "cuda" and torch.equal(a, b.cpu())


def test_device_ids_are_honoured(gpu_media):
    count = torch.cuda.device_count()
    last = count - 1
    cfg = _small(gpu_media, decode_backend="gpu", process_backend="gpu", process_device_id=last)
    with patch_stream(cfg) as s:
        assert str(s.patches.device) == f"cuda:{last}"
    from cps_ray.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError, match="decode_device_id"):
        decode_only(
            DecodeConfig(str(gpu_media["h264.mp4"]), decode_backend="gpu", decode_device_id=count)
        )


def test_auto_uses_the_gpu(gpu_media):
    out = decode_only(DecodeConfig(str(gpu_media["h264.mp4"]), sequence_length=2, input_size=32))
    assert out.decode_backend == "gpu" and out.frames.is_cuda and out.device_fallback is None


def test_chunked_resize_on_the_gpu_equals_one_pass():
    gen = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (7, 3, 270, 480), dtype=torch.uint8, generator=gen).cuda()
    whole = resize_center_crop(frames, 112, chunk_frames=7)
    for chunk in (1, 3):
        assert torch.equal(resize_center_crop(frames, 112, chunk_frames=chunk), whole)


def test_cuda_kernels_load_from_the_disk_cache_in_a_new_process(tmp_path):
    """The first process compiles and caches the kernels; the next one (an
    isolated child, a restarted actor) loads them: cache hits, no misses."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json; from cps_ray._kernels import cuda; cuda.warmup(0); "
        "ks = (cuda._energies_kernel, cuda._top_k_kernel, cuda._gather_kernel); "
        "print(json.dumps([[sum(k.stats.cache_hits.values()), "
        "sum(k.stats.cache_misses.values())] for k in ks]))"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run():
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert all(hits == 0 and misses >= 1 for hits, misses in first)
    assert all(hits >= 1 and misses == 0 for hits, misses in second)
