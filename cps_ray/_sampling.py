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


def walk_guess(strategy: str, begin_seconds: float, end_seconds: float, num_frames: int,
               sequence_length: int):  # fmt: skip
    """A frame-by-frame walk's first guess at ``strategy``'s frames from the
    header's span and frame count: keep(pos, pts, next_pts) (``next_pts``
    the next frame's pts, None for the last). For ``time``, a frame some
    target falls in, and the first frame when a target comes before it."""
    if strategy != "time":
        guess = set(index_positions(max(num_frames, 1), sequence_length).tolist())
        return lambda pos, pts, next_pts: pos in guess
    targets = time_targets(begin_seconds, end_seconds, sequence_length)

    def keep(pos: int, pts: float, next_pts: float | None) -> bool:
        if pos == 0 and targets[0] < pts:
            return True
        lo = np.searchsorted(targets, pts, side="left")
        if lo >= len(targets):
            return False
        return next_pts is None or targets[lo] < next_pts

    return keep


def walked_positions(all_pts: np.ndarray, last_duration: float, strategy: str,
                     sequence_length: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(ranks, decode positions)`` of ``strategy``'s frames among frames
    walked in decode order with pts ``all_pts``: ranks in display order,
    positions in the walk's order (B-frames or broken timestamps leave the
    pts unsorted)."""
    order = np.argsort(all_pts, kind="stable")
    sorted_pts = all_pts[order]
    if strategy == "time":
        end = sorted_pts[-1] + max(last_duration, 0.0)
        targets = time_targets(sorted_pts[0], end, sequence_length)
        ranks = assign_by_time(np.minimum(targets, sorted_pts[-1]), sorted_pts)
    else:
        ranks = index_positions(len(all_pts), sequence_length)
    return ranks, order[ranks]
