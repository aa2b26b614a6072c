"""The resize policy: the output size, and a torch function for frames
decoded on the GPU (torchcodec's decoder-side transforms run on CPU only).

The policy, one everywhere: the short side is scaled to ``S`` (bilinear,
antialiased), the long side to ``round(long * S / short)``, then the center
``S x S`` is cropped. On the CPU the decoder does it (FFmpeg's swscale);
here, on the GPU, torch does. Pixels differ from FFmpeg's swscale by
rounding only (see ``tests/test_resize.py`` for the measured tolerance).

The float32 work runs a few frames at a time: a whole 16-frame clip at 4K
is 1.6 GB of float32 (6.4 GB at 8K) per decode actor, a chunk at most
:data:`RESIZE_CHUNK_BYTES`. Each frame is resized on its own, so any chunk
size gives the same bits.
"""

from __future__ import annotations

import torch

# float32 bytes (native frames plus resized frames) one chunk may hold.
RESIZE_CHUNK_BYTES = 256 * 2**20


def resized_dims(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the short side of ``height x width`` to ``size``."""
    if height <= width:
        return size, max(size, (width * size + height // 2) // height)
    return max(size, (height * size + width // 2) // width), size


def chunk_frames_for(height: int, width: int, size: int) -> int:
    """Frames per chunk for ``height x width`` frames resized to ``size``."""
    out_h, out_w = resized_dims(height, width, size)
    per_frame = 3 * 4 * (height * width + out_h * out_w)
    return max(1, RESIZE_CHUNK_BYTES // per_frame)


def resize_center_crop(
    frames: torch.Tensor, size: int, *, chunk_frames: int | None = None
) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` on any device -> uint8 ``[T, 3, size, size]`` there.

    ``chunk_frames``: frames converted to float32 at once (default: as many
    as fit :data:`RESIZE_CHUNK_BYTES`); the result does not depend on it.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(
            f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}"
        )
    h, w = int(frames.shape[-2]), int(frames.shape[-1])
    if chunk_frames is None:
        chunk_frames = chunk_frames_for(h, w, size)
    elif isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")
    out_h, out_w = resized_dims(h, w, size)
    if (out_h, out_w) == (h, w) == (size, size):
        return frames.contiguous()
    top = (out_h - size) // 2
    left = (out_w - size) // 2
    out = torch.empty((frames.shape[0], frames.shape[1], size, size), dtype=torch.uint8,
                      device=frames.device)  # fmt: skip
    for start in range(0, frames.shape[0], chunk_frames):
        x = frames[start : start + chunk_frames].to(torch.float32)
        if (out_h, out_w) != (h, w):
            x = torch.nn.functional.interpolate(
                x, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False
            )
        x = x[:, :, top : top + size, left : left + size]
        out[start : start + chunk_frames] = x.round_().clamp_(0, 255)
    return out
