"""A set of paths held as 16-byte digests (BLAKE2b): what an output already
holds, checked without its paths in memory.

A million paths take 16 MB, in one sorted NumPy array, plus a Python set of
the latest additions that is merged into the array when it grows past an
eighth of it (so adding n paths costs O(n log n) in all). Two different
paths share a digest with a probability of about n² / 2¹²⁹: never, in
practice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

DIGEST_BYTES = 16
_MIN_MERGE = 4096


def path_digest(path: str) -> bytes:
    return hashlib.blake2b(
        path.encode("utf-8", "surrogateescape"), digest_size=DIGEST_BYTES
    ).digest()


class PathSet:
    """Membership of paths by digest; ``add_new`` and ``contains`` take
    batches (a block of rows), in order."""

    def __init__(self, paths: Iterable[str] = ()):
        self._sorted = np.empty(0, dtype=f"S{DIGEST_BYTES}")
        self._recent: set[bytes] = set()
        self.update(paths)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def update(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._recent.add(path_digest(path))
            if len(self._recent) > max(_MIN_MERGE, len(self._sorted) // 8):
                self._merge()

    def _merge(self) -> None:
        recent = np.array(sorted(self._recent), dtype=self._sorted.dtype)
        self._sorted = np.union1d(self._sorted, recent)
        self._recent = set()

    def _in_sorted(self, digests: list[bytes]) -> np.ndarray:
        if not len(self._sorted) or not digests:
            return np.zeros(len(digests), dtype=bool)
        wanted = np.array(digests, dtype=self._sorted.dtype)
        at = np.searchsorted(self._sorted, wanted)
        at[at == len(self._sorted)] = 0
        return self._sorted[at] == wanted

    def contains(self, paths: list[str]) -> list[bool]:
        """Which of ``paths`` are in the set."""
        digests = [path_digest(p) for p in paths]
        in_sorted = self._in_sorted(digests)
        return [bool(s) or d in self._recent for d, s in zip(digests, in_sorted)]

    def __contains__(self, path: str) -> bool:
        return self.contains([path])[0]

    def add_new(self, paths: list[str]) -> list[bool]:
        """Add ``paths`` in order; True for each one that was not in the set
        yet (a path twice in ``paths`` is new only the first time)."""
        digests = [path_digest(p) for p in paths]
        in_sorted = self._in_sorted(digests)
        new = []
        for digest, seen in zip(digests, in_sorted):
            fresh = not seen and digest not in self._recent
            if fresh:
                self._recent.add(digest)
            new.append(fresh)
        if len(self._recent) > max(_MIN_MERGE, len(self._sorted) // 8):
            self._merge()
        return new
