"""Opening a video with torchcodec, and the shims over torchcodec's API.

Private torchcodec hooks used here, each pinned by the ``torchcodec<0.15``
bound in ``pyproject.toml`` and exercised by ``tests/test_decode.py``:

- ``torchcodec._core.get_next_frame`` (decode the next frame without a seek,
  for the frame-by-frame route);
- ``VideoDecoder._decoder`` (the core decoder object that op takes);
- ``DecoderTransform._make_transform_spec`` / ``_get_output_dims`` (a resize
  whose size depends on the frame size, known only once the file is open).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .._guards import Limits, ffmpeg_path, open_by_handle
from .resize import resized_dims

# torchcodec's errors for a file it cannot open, seek or decode.
TORCHCODEC_ERRORS = (RuntimeError, ValueError, IndexError)


class CannotServe(Exception):
    """This route cannot decode this file (the file, not a bug): the next
    route tries. The message says why, for the error row if none can."""


class UnknownFrameSize(Exception):
    """The header has no frame size, so the resize cannot be planned yet."""


@dataclass(frozen=True)
class Request:
    """One ``decode_frames`` call, as the routes need it."""

    path: str
    sequence_length: int
    uniform_strategy: str
    input_size: int | None
    device: str
    num_threads: int
    limits: Limits
    # The file's video stream (see packets.video_stream); None: torchcodec's pick.
    stream_index: int | None = None

    def open(self, seek_mode: str, transforms=None, source=None):
        """A torchcodec ``VideoDecoder`` of the file's video stream (or of
        ``source``, a file-like object holding one stream), checked against
        the limits before any frame is decoded."""
        options = dict(
            stream_index=self.stream_index if source is None else None,
            seek_mode=seek_mode,
            num_ffmpeg_threads=self.num_threads,
            device=self.device,
            transforms=transforms,
            dimension_order="NCHW",
        )
        from torchcodec.decoders import VideoDecoder

        if source is None:
            source = ffmpeg_path(self.path)
            if open_by_handle(source):
                source = open(source, "rb")  # the decoder keeps the file open
        decoder = VideoDecoder(source, **options)
        self.limits.check_time()
        md = decoder.metadata
        self.limits.check_size(md.height, md.width)
        return decoder


def resize_transforms(input_size: int | None, limits: Limits, frame_size=None) -> list | None:
    """Decoder-side transforms of the resize policy.

    ``frame_size`` (h, w) is for files whose header lacks it; otherwise the
    size is read from the (rotation-corrected) metadata when the file opens,
    and checked against ``max_pixels`` before the codec is set up.
    """
    if input_size is None:
        return None
    from torchcodec.transforms import CenterCrop, Resize

    first = (
        _short_side_resize(input_size, limits)
        if frame_size is None
        else Resize(resized_dims(frame_size[0], frame_size[1], input_size))
    )
    return [first, CenterCrop((input_size, input_size))]


_SHORT_SIDE_RESIZE = None


def _short_side_resize(size: int, limits: Limits):
    global _SHORT_SIDE_RESIZE
    if _SHORT_SIDE_RESIZE is None:
        from torchcodec.transforms import DecoderTransform

        class ShortSideResize(DecoderTransform):
            """Decoder-side resize whose output size depends on the input's
            (rotated) size, which torchcodec only knows once the file is open."""

            def __init__(self, size: int, limits: Limits):
                self.size = size
                self.limits = limits
                self._out: tuple[int, int] | None = None

            def _make_transform_spec(self, input_dims):
                height, width = input_dims
                if not height or not width:
                    raise UnknownFrameSize()
                self.limits.check_size(height, width)
                self._out = resized_dims(int(height), int(width), self.size)
                return f"resize, {self._out[0]}, {self._out[1]}"

            def _get_output_dims(self):
                return self._out

        _SHORT_SIDE_RESIZE = ShortSideResize
    return _SHORT_SIDE_RESIZE(size, limits)


def iter_frames(decoder, limits: Limits) -> Iterator[tuple[torch.Tensor, float, float]]:
    """Frames in decode order from the start, without seeking.

    torchcodec's public indexing always seeks, which is exactly what fails
    on files the frame-by-frame route exists for; its core op
    ``get_next_frame`` does not. A decoding error mid-file ends the walk:
    what came before is kept. The deadline is checked before every frame.
    """
    from torchcodec import _core

    while True:
        limits.check_time()
        try:
            frame, pts, duration = _core.get_next_frame(decoder._decoder)
        except (IndexError, RuntimeError):
            return
        limits.check_size(frame.shape[-2], frame.shape[-1])
        yield frame, float(pts), float(duration)


# Frames fetched per seek call, so that the deadline is checked between seeks.
SEEK_CHUNK = 8


def seek_frames(get, targets: list, limits: Limits):
    """(data, pts, duration) of ``get(targets)``, a few targets per call.
    torchcodec's errors become :class:`CannotServe`."""
    parts = []
    for start in range(0, len(targets), SEEK_CHUNK):
        limits.check_time()
        try:
            parts.append(get(targets[start : start + SEEK_CHUNK]))
        except TORCHCODEC_ERRORS as err:
            raise CannotServe(f"seeking failed: {err}") from None
    limits.check_size(*parts[0].data.shape[-2:])
    if len(parts) == 1:
        return parts[0].data, parts[0].pts_seconds, parts[0].duration_seconds
    return (
        torch.cat([b.data for b in parts]),
        torch.cat([b.pts_seconds for b in parts]),
        torch.cat([b.duration_seconds for b in parts]),
    )
