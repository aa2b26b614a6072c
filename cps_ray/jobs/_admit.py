"""A streamed job's first stage: which inputs of a manifest still need a row.

A manifest too large to list in the driver is read by Ray Data
(:mod:`cps_ray.pipeline._manifests`). Its paths pass through
:class:`AdmitInputs`, one actor without a CPU, before the decoders: it leaves
out the inputs the output already holds (its shards, read one at a time and
kept as 16-byte digests, and its errors table, less the failures
``--retry-failed`` decodes again) and inputs listed twice, and it counts
them in a :func:`tally` actor the driver reads at the end.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from ..pipeline._inputs import local_path, row_path
from ..pipeline._output import done_set, read_output
from ..pipeline._pathset import PathSet


class AdmitInputs:
    """``map_batches`` class: a block of input paths -> those still to do.

    Counts (in ``tally``): ``inputs`` (distinct inputs), ``skipped`` (already
    in the output), ``retried`` (failures decoded again).
    """

    def __init__(self, output: str, retry: frozenset[str], tally):
        self.done = done_set(output, read_output(output), exclude=retry)
        self.retry = PathSet(retry)
        self.seen = PathSet()
        self.tally = tally

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        shown = [row_path(local_path(p)) for p in batch.column("path").to_pylist()]
        new = self.seen.add_new(shown)
        done = self.done.contains(shown)
        retried = self.retry.contains(shown)
        keep = [n and not d for n, d in zip(new, done)]
        counts = {
            "inputs": sum(new),
            "skipped": sum(n and d for n, d in zip(new, done)),
            "retried": sum(k and r for k, r in zip(keep, retried)),
        }
        # Synchronous: every count is in before the last rows reach the driver.
        ray.get(self.tally.add.remote(counts))
        return batch.filter(pa.array(keep, pa.bool_()))


class _Tally:
    def __init__(self):
        self.counts: Counter = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def totals(self) -> dict[str, int]:
        return dict(self.counts)


def tally():
    """A small actor (no CPU) that sums the counts :class:`AdmitInputs` sends."""
    import ray

    return ray.remote(num_cpus=0)(_Tally).remote()
