"""Decode ``T`` frames of one video: on the CPU with PyAV (FFmpeg in its
wheel) and NumPy, on a CUDA device with torchcodec on NVDEC.

Where to look:

- :mod:`.packets`: the packet index (PyAV, no decoding) and the plan of which
  packets the frames need;
- :mod:`.planned`: the ``packets`` route, first for every strategy: only the
  planned packets are decoded (``keyframe`` is its route name under
  ``uniform_strategy="keyframe"``);
- :mod:`.cpu`: the CPU's decode: one open, the plan, then the
  ``sequential`` route (:mod:`.routes`) for files the plan cannot serve;
- :mod:`.resize`: the resize policy (:data:`RESIZE_POLICY`): one swscale
  call per frame on the CPU, on every route; torch on the GPU;
- :mod:`.opening`: opening a file with PyAV, the stream choice, decoding packets;
- :mod:`.nvdec`, :mod:`.nvdec_routes`: the GPU's decode (torchcodec), with
  its ``header``, ``scan`` and ``sequential`` routes.

A process that decodes on the CPU imports neither torch nor torchcodec.

Frames are in display orientation: the display matrix's rotation is
applied, and the resize is planned on the rotated frame. Pixel aspect ratio
is not applied.

Bad and hostile inputs (see :mod:`cps_ray._guards`): the path is checked
before FFmpeg opens it, a frame larger than ``max_pixels`` fails before any
frame is decoded (and every decoded frame is checked), and ``timeout_s`` is
a deadline checked between opens, packets and frames. Every failure is a
one-line :class:`DecodeError`.
"""

from __future__ import annotations

import os

from .. import _faults as faults
from .._guards import Limits, check_file, declared_size
from .._remote import is_remote, local_copy, redact
from ..errors import DecodeError
from .cpu import decode_cpu
from .frames import VideoFrames
from .opening import Request
from .resize import RESIZE_POLICY, resized_dims

__all__ = [
    "RESIZE_POLICY",
    "VideoFrames",
    "decode_frames",
    "resized_dims",
]


def decode_frames(
    path: str,
    *,
    sequence_length: int,
    uniform_strategy: str = "auto",
    input_size: int | None = None,
    device: str = "cpu",
    num_threads: int = 1,
    nvdec_fallback: bool = False,
    max_pixels: int | None = None,
    timeout_s: float | None = None,
) -> VideoFrames:
    """Decode ``sequence_length`` frames of ``path`` chosen by ``uniform_strategy``.

    Returns :class:`VideoFrames` with uint8 ``[T, 3, S, S]`` frames (native
    ``[T, 3, H, W]`` when ``input_size`` is None): NumPy arrays on the CPU;
    torch tensors on a CUDA ``device``, which decodes on NVDEC. A file NVDEC
    cannot decode raises, or with ``nvdec_fallback`` (``auto``) decodes on
    the CPU (NumPy) and says why in ``device_fallback``.

    ``path`` may be a URI (``s3://``, ``gs://``, ``https://``, ...): the
    object is copied to a local spill file first (see :mod:`cps_ray._remote`).

    ``max_pixels``: a video whose frames (width x height) are larger fails
    before any frame is decoded; None removes the cap. ``timeout_s``: seconds
    the call may take, checked between opens, packets and frames (a decoder
    stuck inside FFmpeg is not interrupted); None waits forever.

    Raises :class:`DecodeError` with a one-line reason naming the file.
    """
    path = os.fspath(path)
    faults.inject(path)
    options = dict(sequence_length=sequence_length, uniform_strategy=uniform_strategy,
                   input_size=input_size, device=device, num_threads=num_threads,
                   nvdec_fallback=nvdec_fallback)  # fmt: skip
    if not is_remote(path):
        return _decode_file(path, Limits(path, max_pixels, timeout_s), **options)
    shown = redact(path)
    limits = Limits(shown, max_pixels, timeout_s)  # the deadline covers the copy
    with local_copy(path, limits.check_time) as local:
        try:
            return _decode_file(local, limits, **options)
        except DecodeError as err:
            raise DecodeError(shown, err.reason, err.kind) from None


def _decode_file(
    path: str, limits: Limits, *, sequence_length: int, uniform_strategy: str,
    input_size: int | None, device: str, num_threads: int, nvdec_fallback: bool,
) -> VideoFrames:  # fmt: skip
    declared = declared_size(check_file(path))
    if declared is not None:
        limits.check_size(*declared)
    request = Request(path, sequence_length, uniform_strategy, input_size, device, num_threads,
                      limits)  # fmt: skip
    if device.startswith("cuda"):
        from .nvdec import decode_cuda

        return decode_cuda(request, nvdec_fallback)
    return decode_cpu(request)
