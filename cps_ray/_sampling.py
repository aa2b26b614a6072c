"""Which frames represent a video: the ``uniform_strategy`` values.

``"index"``
    Frame indices ``round(linspace(0, num_frames - 1, T))`` over the true
    frame count: the packets of the video stream, listed without decoding
    (:mod:`cps_ray._decode.packets`), or, where the packets cannot be
    listed, the frames counted by decoding them all (on the CPU) or by
    torchcodec's scan (on a GPU).
``"time"``
    The frames displayed at ``T`` evenly spaced instants from the stream's
    first timestamp to its end (the last instant shows the last frame).
    Use it for variable-frame-rate video, where equal index steps are not
    equal time steps. ``frame_indices`` are the frames' display ranks
    (estimated from the average rate only on the GPU's fallback routes).
``"auto"``
    The ``index`` frames. Where the packets cannot be listed: on the CPU,
    decoding frame by frame, keeping the frames the header's count points
    at (a second pass where the count was wrong); on a GPU, the header's
    frame count while seeking proves it right, then the scan, then
    decoding frame by frame.
``"keyframe"``
    Per ``index`` target, the cheapest frame to decode within half a
    sampling interval (:func:`cps_ray._decode.packets.choose_keyframes`).

A video with fewer than ``T`` frames repeats frames; that is not an error.
"""

from __future__ import annotations

import numpy as np


def index_positions(num_frames: int, sequence_length: int) -> np.ndarray:
    """int64 ``[T]``: ``round(linspace(0, num_frames - 1, T))``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.round(np.linspace(0, num_frames - 1, sequence_length)).astype(np.int64)


def time_targets(begin_seconds: float, end_seconds: float, sequence_length: int) -> np.ndarray:
    """float64 ``[T]``: evenly spaced instants in ``[begin, end]``."""
    end_seconds = max(end_seconds, begin_seconds)
    return np.linspace(begin_seconds, end_seconds, sequence_length, dtype=np.float64)


def assign_by_time(targets: np.ndarray, frame_pts: np.ndarray) -> np.ndarray:
    """Position of the frame displayed at each target: the last frame whose
    pts is <= the target (the first frame for targets before it).

    ``frame_pts`` must be ascending (display order).
    """
    positions = np.searchsorted(frame_pts, targets, side="right") - 1
    return np.clip(positions, 0, len(frame_pts) - 1).astype(np.int64)
