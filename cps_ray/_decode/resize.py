"""The resize policy: which pixels a decoded frame becomes.

On the CPU (every route: the packet plan and the fallbacks), one
:class:`FrameConverter` per video turns each decoded frame into uint8
``[3, S, S]`` RGB:

1. the output size is planned on the *display-oriented* frame (the stream's
   display matrix, rounded to a multiple of 90 degrees): its short side is
   scaled to ``S`` and its long side to ``round(long * S / short)``
   (:func:`resized_dims`);
2. one swscale call (FFmpeg, PyAV's ``VideoReformatter``, reused for the
   whole video) converts the decoded picture to ``rgb24`` and scales it, in
   its stored orientation, to that size turned back: ``SWS_BILINEAR``, which
   widens its filter when it shrinks (antialiased), the frame's own colour
   matrix and range (BT.601 where the file states none);
3. the rotation is applied to the RGB picture, losslessly (``numpy.rot90``),
   and the center ``S x S`` is cropped (offsets ``(out - S) // 2``).

``input_size=None`` keeps the native size: the same single swscale call,
colour conversion only, to the size the stream's header states (a frame of
another size, after a mid-stream change, is scaled to it), then the rotation.
Pixel aspect ratio is not applied; mirroring in a display matrix is ignored.

The same frame gives the same bits on every CPU route, with any number of
threads (swscale's slices do not change its output). The policy is named
by :data:`RESIZE_POLICY`, which output manifests record: a change to any of
the above (flags, library, order) must change the name
(``docs/decoding.md``: the pixels it gives).

On the GPU (NVDEC), torch does the resize (:func:`resize_center_crop`):
bilinear and antialiased like swscale, it differs from the CPU pixels by
rounding and filter support (``tests/test_resize.py`` bounds it). The
float32 work runs at most :data:`RESIZE_CHUNK_BYTES` at a time; each frame
is resized on its own, so any chunk size gives the same bits.
"""

from __future__ import annotations

import numpy as np

# What the CPU routes do to a decoded frame (see the module docstring).
RESIZE_POLICY = "swscale-bilinear-v1"

# gbrp's planes are G, B, R: the output channel each one fills.
_GBRP_TO_RGB = (1, 2, 0)

# float32 bytes (native frames plus resized frames) one chunk may hold.
RESIZE_CHUNK_BYTES = 256 * 2**20


def resized_dims(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the short side of ``height x width`` to ``size``."""
    if height <= width:
        return size, max(size, (width * size + height // 2) // height)
    return max(size, (height * size + width // 2) // width), size


def quarter_turns(rotation: float | None) -> int:
    """Counterclockwise quarter turns (0-3) of a display-matrix angle in degrees."""
    return int(round((rotation or 0) / 90.0)) % 4


class FrameConverter:
    """Decoded PyAV frames -> uint8 ``[3, S, S]`` (``[3, H, W]`` native) NumPy
    arrays by the policy above. One per video: it keeps one swscale context.

    ``native_size``: (height, width) of the stream as stored (its header),
    the output size when ``input_size`` is None. ``threads``: swscale's.
    """

    def __init__(self, input_size: int | None, native_size: tuple[int, int], *, threads: int):
        from av.video.reformatter import Interpolation, VideoReformatter

        self.input_size = input_size
        self.native_size = native_size
        self.threads = threads
        self._reformatter = VideoReformatter()
        self._interpolation = Interpolation.BILINEAR

    def output_shape(self, rotation: float | None) -> tuple[int, int, int]:
        """``(3, H, W)`` of a converted frame whose display matrix says ``rotation``."""
        if self.input_size is not None:
            return 3, self.input_size, self.input_size
        h, w = self.native_size
        return (3, w, h) if quarter_turns(rotation) % 2 else (3, h, w)

    def __call__(self, frame, out: np.ndarray | None = None) -> np.ndarray:
        """``frame`` (an ``av.VideoFrame``) converted, written into ``out``
        (uint8 ``[3, H, W]``) when given."""
        height, width = frame.height, frame.width
        turns = quarter_turns(frame.rotation)
        if self.input_size is None:
            target_h, target_w = self.native_size
        else:
            shown = (width, height) if turns % 2 else (height, width)
            out_h, out_w = resized_dims(shown[0], shown[1], self.input_size)
            target_h, target_w = (out_w, out_h) if turns % 2 else (out_h, out_w)
        planar = self._reformatter.reformat(
            frame, width=target_w, height=target_h, format="gbrp",
            interpolation=self._interpolation, threads=self.threads,
        )  # fmt: skip
        if out is None:
            out = np.empty(self.output_shape(frame.rotation), dtype=np.uint8)
        for channel, plane in zip(_GBRP_TO_RGB, planar.planes, strict=True):
            rows = np.frombuffer(plane, np.uint8).reshape(target_h, plane.line_size)
            picture = rows[:, :target_w]
            if turns:
                picture = np.rot90(picture, turns)
            if self.input_size is not None:
                size = self.input_size
                top = (picture.shape[0] - size) // 2
                left = (picture.shape[1] - size) // 2
                picture = picture[top : top + size, left : left + size]
            out[channel] = picture
        return out


def chunk_frames_for(height: int, width: int, size: int) -> int:
    """Frames per chunk for ``height x width`` frames resized to ``size``."""
    out_h, out_w = resized_dims(height, width, size)
    per_frame = 3 * 4 * (height * width + out_h * out_w)
    return max(1, RESIZE_CHUNK_BYTES // per_frame)


def resize_center_crop(frames, size: int, *, chunk_frames: int | None = None):
    """torch uint8 ``[T, 3, H, W]`` on any device -> uint8 ``[T, 3, size, size]``
    there (the GPU route's resize).

    ``chunk_frames``: frames converted to float32 at once (default: as many
    as fit :data:`RESIZE_CHUNK_BYTES`); the result does not depend on it.
    """
    import torch

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
