"""Mutation fuzzing of the decoder, shared by ``tests/test_fuzz.py`` (a smoke
run in the suite) and ``python tests/fuzz.py`` (long runs).

Seed videos are mutated (bit flips, byte runs overwritten, truncations,
chunks dropped or repeated) with a seeded RNG, and each mutant is decoded in
an isolated child process (the product's own :class:`IsolatedWorker`), so a
native crash or a hang costs the child only. Every outcome must be frames of
the right shape or a one-line reason naming the file. A mutant that crashed
or hung its child is kept in ``tests/regressions/`` and replayed by the suite
from then on.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cps_ray import PatchStreamConfig
from cps_ray.pipeline._isolation import IsolatedWorker
from cps_ray.pipeline._worker import CORE_PRELOAD, _frames_target

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
CONFIG = PatchStreamConfig(
    sequence_length=4, input_size=28, patch_size=14, k_keep=4, decode_timeout_s=10.0
)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation of ``data``; never the identity for non-empty data."""
    buf = bytearray(data)
    kind = rng.choice(("flip", "flip", "overwrite", "truncate", "drop", "repeat"))
    n = len(buf)
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        start = rng.randrange(n)
        length = rng.randint(1, 64)
        buf[start : start + length] = bytes(rng.randrange(256) for _ in range(length))
    elif kind == "truncate":
        return bytes(buf[: rng.randrange(1, n)])
    elif kind == "drop":
        start = rng.randrange(n)
        del buf[start : start + rng.randint(1, 4096)]
    else:  # repeat a chunk in place
        start = rng.randrange(n)
        chunk = buf[start : start + rng.randint(1, 4096)]
        buf[start:start] = chunk
    if bytes(buf) == data:
        buf[rng.randrange(n)] ^= 0xFF
    return bytes(buf)


@dataclass(frozen=True)
class Outcome:
    path: Path
    ok: bool
    detail: str  # the reason, or the frames' shape
    kind: str | None = None  # the error kind

    @property
    def contained(self) -> bool:
        """The child crashed or hung, and the parent turned it into an error."""
        return not self.ok and self.kind in ("crashed", "timeout")


def decoder(timeout_s: float = 10.0) -> IsolatedWorker:
    return IsolatedWorker(
        functools.partial(_frames_target, CONFIG, 1, None, 1),
        timeout_s=timeout_s,
        max_attempts=1,
        preload=CORE_PRELOAD,
    )


def check(worker: IsolatedWorker, path: Path) -> Outcome:
    """Decode ``path`` in the worker's child; raise AssertionError on any
    outcome that is neither frames nor a clear one-line error."""
    ok, value = worker.run(str(path))
    if ok:
        t, s = CONFIG.sequence_length, CONFIG.input_size
        assert value.frames.shape == (t, 3, s, s), (path, value.frames.shape)
        assert value.frame_indices.shape == (t,) and value.timestamps.shape == (t,)
        return Outcome(path, True, str(value.frames.shape))
    reason, kind = value
    assert isinstance(reason, str) and reason and kind, (path, value)
    assert "\n" not in reason, (path, value)
    assert reason.startswith(str(path)), (path, value)
    return Outcome(path, False, reason, kind)


def keep(mutant: Path, seed_name: str, folder: Path = REGRESSIONS) -> Path:
    """Copy a mutant that crashed or hung into ``folder`` (tests/regressions/)."""
    folder.mkdir(exist_ok=True)
    digest = hashlib.sha256(mutant.read_bytes()).hexdigest()[:12]
    target = folder / f"{Path(seed_name).stem}-{digest}{mutant.suffix}"
    if not target.exists():
        shutil.copyfile(mutant, target)
    return target


def fuzz(seeds: list[Path], count: int, folder: Path, rng_seed: int = 0, log=None,
         regressions: Path = REGRESSIONS):  # fmt: skip
    """``count`` mutants of ``seeds`` decoded one by one; returns the outcomes
    and the regression files kept in ``regressions``."""
    rng = random.Random(rng_seed)
    folder.mkdir(parents=True, exist_ok=True)
    originals = {seed: seed.read_bytes() for seed in seeds}
    outcomes, kept = [], []
    worker = decoder()
    try:
        for i in range(count):
            seed = seeds[i % len(seeds)]
            mutant = folder / f"mutant-{i:05d}{seed.suffix}"
            mutant.write_bytes(mutate(originals[seed], rng))
            outcome = check(worker, mutant)
            outcomes.append(outcome)
            if outcome.contained:
                kept.append(keep(mutant, seed.name, regressions))
            if log:
                log(f"{i:5d} {seed.name:14s} {'ok ' if outcome.ok else 'err'} {outcome.detail}")
    finally:
        worker.close()
    return outcomes, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="+", type=Path, help="seed videos")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rng-seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(".cache/fuzz"))
    args = parser.parse_args(argv)
    outcomes, kept = fuzz(args.seeds, args.count, args.work, args.rng_seed, log=print)
    ok = sum(o.ok for o in outcomes)
    print(
        f"{len(outcomes)} mutants: {ok} decoded, {len(outcomes) - ok} clear errors, "
        f"{len(kept)} crashed or hung a child (kept in {REGRESSIONS})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
