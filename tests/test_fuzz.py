"""Fuzz smoke test: mutated videos never hang or crash the caller, and each
failure is a clear one-line error. Longer runs: ``python tests/fuzz.py``;
the inputs that crashed or hung a decoder are kept in ``tests/regressions/``
and replayed here."""

from __future__ import annotations

from fuzz import REGRESSIONS, check, decoder, fuzz

from cps_ray._faults import CRASH_ENV

SEEDS = ["h264.mp4", "vp9.webm", "hevc.mkv", "mpeg2.mpg", "nonzero_start.ts", "mpeg4.avi"]
MUTANTS = 60


def test_fuzz_smoke(media, tmp_path, monkeypatch):
    seeds = [media[n] for n in SEEDS]
    # One mutant's decoder crashes for real (a SIGSEGV): it must be contained
    # and kept, as a crash FFmpeg found by itself would be.
    monkeypatch.setenv(CRASH_ENV, "mutant-00003.mpg")
    kept_in = tmp_path / "regressions"
    outcomes, kept = fuzz(seeds, MUTANTS, tmp_path / "mutants", rng_seed=7,
                          regressions=kept_in)  # fmt: skip
    assert len(outcomes) == MUTANTS  # every mutant answered; none hung the test
    # Mutations hit headers and data alike: both outcomes happen.
    assert any(o.ok for o in outcomes) and any(not o.ok for o in outcomes)
    crashed = outcomes[3]
    assert crashed.contained and crashed.kind == "crashed" and "SIGSEGV" in crashed.detail
    assert kept and all(path.parent == kept_in and path.exists() for path in kept)
    # The kept inputs, and any ever kept in tests/regressions/, replay contained.
    worker = decoder()
    try:
        replays = [check(worker, path) for path in [*kept, *sorted(REGRESSIONS.glob("*"))]]
    finally:
        worker.close()
    assert all(o.ok or o.kind for o in replays)
