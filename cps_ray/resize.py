"""The resize policy as a torch function, for frames decoded on the GPU
(torchcodec's decoder-side transforms run on CPU only).

Same policy as the decoder side: short side to ``S`` (bilinear, antialiased),
long side ``round(long * S / short)``, center ``S x S`` crop. Pixels differ
from FFmpeg's swscale by rounding only (see ``tests/test_resize.py`` for the
measured tolerance).
"""

from __future__ import annotations

import torch

from .decode import resized_dims


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` on any device -> uint8 ``[T, 3, size, size]`` there."""
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(
            f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}"
        )
    h, w = int(frames.shape[-2]), int(frames.shape[-1])
    out_h, out_w = resized_dims(h, w, size)
    x = frames.to(torch.float32)
    if (out_h, out_w) != (h, w):
        x = torch.nn.functional.interpolate(
            x, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False
        )
    top = (out_h - size) // 2
    left = (out_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8).contiguous()
