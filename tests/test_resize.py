"""The torch resize policy (used after NVDEC decode) against the CPU's swscale."""

import pytest
import torch

from cps_ray import DecodeConfig, decode_only
from cps_ray._decode.resize import RESIZE_CHUNK_BYTES, chunk_frames_for, resize_center_crop

# Mean absolute difference, in uint8 levels, allowed between the GPU path's
# torch resize (of native RGB frames) and the CPU's one swscale call (YUV to
# RGB and the scale at once): both bilinear and antialiased, they differ in
# filter support and rounding, and swscale scales the 4:2:0 chroma planes
# from their own half size. On testsrc2's one-pixel coloured lines that is
# 2.3-5.8 levels here (4.1 for h264.mp4, 5.8 for the 0.75 scale of
# portrait_64x112.mp4); on photographs at 224, under 1.
RESIZE_TOLERANCE = 6.5


@pytest.mark.parametrize("name", ["h264.mp4", "portrait_64x112.mp4", "rot90.mp4", "odd_97x71.webm"])
def test_torch_resize_matches_decoder_resize(media, name):
    native = decode_only(DecodeConfig(str(media[name]), sequence_length=3))
    decoder_side = decode_only(DecodeConfig(str(media[name]), sequence_length=3, input_size=48))
    ours = resize_center_crop(native.frames, 48)
    assert ours.shape == decoder_side.frames.shape == (3, 3, 48, 48)
    assert ours.dtype == torch.uint8
    diff = (ours.float() - decoder_side.frames.float()).abs().mean()
    assert diff < RESIZE_TOLERANCE


def test_no_resize_when_already_square_at_size():
    frames = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(resize_center_crop(frames, 32), frames)


def test_center_crop_of_wide_frames():
    frames = torch.zeros((1, 3, 10, 30), dtype=torch.uint8)
    frames[..., 10:20] = 200  # the middle third
    out = resize_center_crop(frames, 10)
    assert out.shape == (1, 3, 10, 10) and int(out.min()) == 200


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        resize_center_crop(torch.zeros((1, 3, 4, 4)), 2)


@pytest.mark.parametrize("shape", [(7, 3, 90, 160), (5, 3, 120, 64), (4, 3, 48, 48)])
def test_chunks_give_the_same_bits_as_one_pass(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    whole = resize_center_crop(frames, 32, chunk_frames=shape[0])
    for chunk in (1, 2, 3, shape[0] + 5):
        assert torch.equal(resize_center_crop(frames, 32, chunk_frames=chunk), whole)
    assert torch.equal(resize_center_crop(frames, 32), whole)  # the default chunk


def test_default_chunk_bounds_the_float32_work():
    # 4K: 3 * 4 bytes * (3840 * 2160 + 398 * 224) = 100 MB per frame.
    assert chunk_frames_for(2160, 3840, 224) * 12 * (2160 * 3840 + 398 * 224) <= RESIZE_CHUNK_BYTES
    assert chunk_frames_for(2160, 3840, 224) == 2
    assert chunk_frames_for(4320, 8192, 224) == 1  # 8K: one frame at a time
    assert chunk_frames_for(64, 96, 32) > 1000  # small frames: the whole clip


def test_bad_chunk_frames():
    frames = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="chunk_frames"):
        resize_center_crop(frames, 4, chunk_frames=0)
