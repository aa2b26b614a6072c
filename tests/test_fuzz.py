"""Fuzz smoke test: mutated videos never hang or crash the caller, and each
failure is a clear one-line error. Longer runs: ``python tests/fuzz.py``."""

from __future__ import annotations

import pytest
from fuzz import REGRESSIONS, check, decoder, fuzz

SEEDS = ["h264.mp4", "vp9.webm", "hevc.mkv", "mpeg2.mpg", "nonzero_start.ts", "mpeg4.avi"]
MUTANTS = 60


def test_fuzz_smoke(media, tmp_path):
    seeds = [media[n] for n in SEEDS]
    outcomes, kept = fuzz(seeds, MUTANTS, tmp_path / "mutants", rng_seed=7)
    assert len(outcomes) == MUTANTS  # every mutant answered; none hung the test
    # Mutations hit headers and data alike: both outcomes happen.
    assert any(o.ok for o in outcomes) and any(not o.ok for o in outcomes)
    for path in kept:  # crashers were contained, and are kept for the replay below
        assert path.exists()


REGRESSION_FILES = sorted(REGRESSIONS.glob("*")) if REGRESSIONS.is_dir() else []


@pytest.mark.skipif(not REGRESSION_FILES, reason="no crashing input found so far")
def test_fuzz_regressions_are_contained():
    worker = decoder()
    try:
        for path in REGRESSION_FILES:
            check(worker, path)
    finally:
        worker.close()
