"""Real-GPU tests: skipped without CUDA, failing instead with CPS_RAY_REQUIRE_GPU=1.

Run on a GPU machine with ``scripts/gpu_session.sh`` (or ``pytest -m gpu``).
"""

import pytest
import torch

from cps_ray import DecodeConfig, PatchStreamConfig, decode_only, patch_stream, select_patches

pytestmark = pytest.mark.gpu

# Mean absolute difference, in uint8 levels, between NVDEC + torch resize
# and FFmpeg CPU decode + swscale resize of the same frames.
GPU_DECODE_TOLERANCE = 4.0
NVDEC_CODECS = ["h264.mp4", "hevc.mkv", "vp9.webm", "av1.mkv", "mpeg2.mpg", "h264_10bit.mp4"]


@pytest.mark.parametrize("name", NVDEC_CODECS)
def test_nvdec_decode_close_to_cpu(media, name):
    cfg = dict(video_path=str(media[name]), sequence_length=6, input_size=48)
    gpu = decode_only(DecodeConfig(**cfg, decode_backend="gpu"))
    cpu = decode_only(DecodeConfig(**cfg, decode_backend="cpu"))
    assert gpu.frames.device == torch.device("cuda:0") and gpu.decode_backend == "gpu"
    assert torch.equal(gpu.frame_indices, cpu.frame_indices)
    diff = (gpu.frames.cpu().float() - cpu.frames.float()).abs().mean()
    assert diff < GPU_DECODE_TOLERANCE


def _small(media, **backends) -> PatchStreamConfig:
    return PatchStreamConfig(
        str(media["h264.mp4"]), sequence_length=4, input_size=56, patch_size=14, k_keep=20,
        **backends,
    )  # fmt: skip


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
@pytest.mark.parametrize("process", ["cpu", "gpu"])
def test_four_combinations(media, decode, process):
    cfg = _small(media, decode_backend=decode, process_backend=process)
    with patch_stream(cfg) as s:
        want = "cpu" if process == "cpu" else "cuda:0"
        assert str(s.patches.device) == want
        assert all(str(t.device) == want for t in s.metadata_tensors)
        assert (s.decode_backend, s.process_backend) == (decode, process)


def test_gpu_selection_identical_to_cpu(media):
    frames = decode_only(
        DecodeConfig(str(media["h264.mp4"]), sequence_length=8, input_size=224)
    ).frames
    for dtype in ("bf16", "fp16", "fp32"):
        cpu = select_patches(frames, patch_size=14, k_keep=512, output_dtype=dtype)
        gpu = select_patches(
            frames.cuda(), patch_size=14, k_keep=512, backend="gpu", output_dtype=dtype
        )
        for a, b in zip(cpu, gpu):
            assert b.device.type == "cuda" and torch.equal(a, b.cpu())


def test_device_ids_are_honoured(media):
    count = torch.cuda.device_count()
    last = count - 1
    cfg = _small(media, decode_backend="gpu", process_backend="gpu", process_device_id=last)
    with patch_stream(cfg) as s:
        assert str(s.patches.device) == f"cuda:{last}"
    from cps_ray.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError, match="decode_device_id"):
        decode_only(
            DecodeConfig(str(media["h264.mp4"]), decode_backend="gpu", decode_device_id=count)
        )


def test_auto_uses_the_gpu(media):
    out = decode_only(DecodeConfig(str(media["h264.mp4"]), sequence_length=2, input_size=32))
    assert out.decode_backend == "gpu" and out.frames.is_cuda
