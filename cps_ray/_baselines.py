"""The baseline selections of ``PatchStreamConfig.selection``, for ablations:
which patches to keep without looking at the pixels.

- ``random``: ``k`` of the ``T * N`` patches drawn uniformly without
  replacement, seeded per video (:func:`video_seed`), so a video gets the
  same patches on every run, backend and machine;
- ``uniform``: a rolling grid, ``k / T`` patches per frame (the remainder
  spread over the frames) evenly spaced over the ``N`` positions, the
  pattern moved on by one position each frame so every position is
  refreshed in turn.

Both return ascending flat indices ``t * N + r * G + c``, like the top-k.
"""

from __future__ import annotations

import hashlib

import numpy as np


def video_seed(path: str, selection_seed: int) -> int:
    """A 64-bit seed from the video's path and the config's ``selection_seed``
    (a hash, stable across processes and machines, unlike ``hash()``)."""
    text = f"{selection_seed}\0{path}".encode("utf-8", "surrogateescape")  # any file name
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little")


def random_flat(total: int, k_keep: int, seed: int) -> np.ndarray:
    """int64 ``[k]``: ``k`` distinct indices of ``range(total)``, ascending."""
    chosen = np.random.Generator(np.random.PCG64(seed)).choice(total, size=k_keep, replace=False)
    return np.sort(chosen).astype(np.int64)


def uniform_flat(num_frames: int, per_frame: int, k_keep: int) -> np.ndarray:
    """int64 ``[k]``: ``k`` indices over ``num_frames`` frames of ``per_frame``
    positions, an even share per frame on a grid shifted by one each frame."""
    counts = np.diff(np.arange(num_frames + 1) * k_keep // num_frames)
    chosen = []
    for t, count in enumerate(counts):
        count = int(count)
        if count == 0:
            continue
        if count >= per_frame:
            positions = np.arange(per_frame)
        else:
            # Evenly spaced, then rolled by one position per frame. The
            # spacing is at least one position, so the positions are distinct.
            positions = np.sort((np.arange(count) * per_frame // count + t) % per_frame)
        chosen.append(t * per_frame + positions)
    return np.concatenate(chosen).astype(np.int64)
