import pytest
import torch

from cps_ray import (
    CpsRayError,
    DecodeConfig,
    PatchStreamConfig,
    SessionClosedError,
    decode_only,
    patch_stream,
    select_patches,
)
from cps_ray._devices import override_cuda_device_count
from cps_ray.errors import DeviceUnavailableError


def _cfg(path, **kw):
    base = dict(
        video_path=str(path),
        sequence_length=6,
        input_size=56,
        patch_size=14,
        k_keep=40,
        output_dtype="fp32",
    )
    base.update(kw)
    return PatchStreamConfig(**base)


@pytest.mark.parametrize("name", ["h264.mp4", "rot90.mp4", "vfr.mp4", "mpeg2.mpg"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_patch_stream_equals_select_over_decode_only(media, name, dtype):
    cfg = _cfg(media[name], output_dtype=dtype)
    decoded = decode_only(DecodeConfig(**cfg.decode_fields()))
    assert decoded.frames.shape == (6, 3, 56, 56)
    want = select_patches(decoded.frames, patch_size=14, k_keep=40, output_dtype=dtype)
    with patch_stream(cfg) as session:
        assert torch.equal(session.patches, want[0])
        fields, scores = session.metadata_tensors
        assert torch.equal(fields, want[1]) and torch.equal(scores, want[2])
        assert torch.equal(session.frame_indices, decoded.frame_indices)
        assert torch.equal(session.timestamps, decoded.timestamps)


def test_session_shapes_dtypes_devices_and_backends(media):
    with override_cuda_device_count(0):
        session = patch_stream(_cfg(media["h264.mp4"], output_dtype="bf16"))
    with session:
        assert session.patches.shape == (40, 3, 14, 14)
        assert session.patches.dtype == torch.bfloat16
        assert session.patches.device.type == "cpu"
        fields, scores = session.metadata_tensors
        assert fields.dtype == torch.int32 and scores.dtype == torch.float32
        assert (session.decode_backend, session.process_backend) == ("cpu", "cpu")
        assert session.frame_indices.shape == (6,)
        assert int(fields[:, 0].max()) <= 5
        assert session.decode_seconds > 0 and session.select_seconds > 0
    assert session.closed


def test_closed_session_raises_a_clear_error(media):
    session = patch_stream(_cfg(media["h264.mp4"]))
    session.close()
    session.close()  # idempotent
    with pytest.raises(SessionClosedError, match="closed"):
        _ = session.patches
    with pytest.raises(CpsRayError):
        _ = session.metadata_tensors


def test_explicit_gpu_without_cuda(media):
    with override_cuda_device_count(0):
        with pytest.raises(DeviceUnavailableError, match="decode_backend='gpu'"):
            patch_stream(_cfg(media["h264.mp4"], decode_backend="gpu"))
        with pytest.raises(DeviceUnavailableError, match="process_backend='gpu'"):
            patch_stream(_cfg(media["h264.mp4"], process_backend="gpu"))
        with pytest.raises(DeviceUnavailableError, match="decode_backend='gpu'"):
            decode_only(DecodeConfig(str(media["h264.mp4"]), decode_backend="gpu"))


def test_patch_stream_needs_the_right_config(media):
    with pytest.raises(TypeError, match="PatchStreamConfig"):
        patch_stream(DecodeConfig(str(media["h264.mp4"])))
    with pytest.raises(ValueError, match="video_path"):
        patch_stream(PatchStreamConfig())


def test_patch_stream_decode_error(media):
    from cps_ray import DecodeError

    with pytest.raises(DecodeError, match="empty file"):
        patch_stream(_cfg(media["broken/empty.mp4"]))


def test_default_config_runs(media):
    """DESIGN defaults: T=16, S=224, p=14, k=2048, bf16."""
    with patch_stream(PatchStreamConfig(str(media["h264.mp4"]))) as s:
        assert s.patches.shape == (2048, 3, 14, 14) and s.patches.dtype == torch.bfloat16


@pytest.mark.parametrize("motion", ["global", "none"])
def test_session_meta_motion_is_what_select_patches_compensated(media, motion):
    cfg = _cfg(media["h264.mp4"], input_size=112, motion=motion)
    decoded = decode_only(DecodeConfig(**cfg.decode_fields()))
    want = select_patches(decoded.frames, patch_size=14, k_keep=40, output_dtype="fp32",
                          motion=motion, return_motion=True)  # fmt: skip
    with patch_stream(cfg) as session:
        assert session.meta_motion.dtype == torch.float32
        assert session.meta_motion.shape == (6, 2, 3) and session.meta_motion.device.type == "cpu"
        assert torch.equal(session.meta_motion, want[3])
        assert torch.equal(session.metadata_tensors[0], want[1])
    with pytest.raises(SessionClosedError):
        _ = session.meta_motion
