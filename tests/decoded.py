"""The reference every CPU route is compared with: every frame of a file,
decoded in order from the start by PyAV (a packet the decoder rejects is
skipped, as the ffmpeg CLI skips it) and converted by the CPU's one
conversion (``cps_ray._decode.resize.FrameConverter``)."""

from __future__ import annotations

import av
import numpy as np

from cps_ray._decode.opening import set_threads, video_stream
from cps_ray._decode.resize import FrameConverter


def full_decode(path, input_size: int | None = None, *, num_threads: int = 1):
    """(frames uint8 [N, 3, H, W], pts float64 [N] seconds) of every frame
    of the file's video stream, in display order."""
    with av.open(str(path)) as container:
        stream = video_stream(container)
        codec = stream.codec_context
        set_threads(codec, num_threads)
        convert = FrameConverter(input_size, (codec.height, codec.width), threads=1)
        decoded = []
        for packet in container.demux(stream):
            try:
                decoded += codec.decode(packet)  # the end marker (empty) drains
            except av.error.InvalidDataError:
                pass  # a damaged packet: skipped, as the ffmpeg CLI does
        frames = [convert(frame) for frame in decoded]
        pts = [float(frame.pts * stream.time_base) for frame in decoded]
    return np.stack(frames), np.asarray(pts)
