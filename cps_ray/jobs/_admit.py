"""A streamed job's screening: which inputs still need a row.

A manifest too large to list in the driver is read by Ray Data
(:mod:`cps_ray.pipeline._manifests`). Its paths pass through
:class:`AdmitInputs`, one actor without a CPU, before the decoders: it leaves
out the inputs the output already holds (its shards, read one at a time and
kept as 16-byte digests, and its errors table, less the failures
``--retry-failed`` decodes again) and inputs listed twice, and it counts
them in a :func:`tally` actor the driver reads at the end.

A folder or a URI prefix is listed by a task whose table stays in the object
store (:mod:`cps_ray.pipeline._listing`). :func:`admit_listing` screens that
table the same way in one more task before any actor starts: the pipeline
reads what is left, the counts come back with it, and a resume with nothing
new starts no actor pool.
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

    def screen(self, batch: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        """``batch`` less what is done or seen, and its counts."""
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
        return batch.filter(pa.array(keep, pa.bool_())), counts

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        kept, counts = self.screen(batch)
        # Synchronous: every count is in before the last rows reach the driver.
        ray.get(self.tally.add.remote(counts))
        return kept


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


def _screen_listing(table: pa.Table, output: str, retry: frozenset[str]):
    """(Ray task, two returns) ``(counts, table less what output holds)``."""
    kept, counts = AdmitInputs(output, retry, tally=None).screen(table)
    return counts, kept


def admit_listing(source, output: str, retry: frozenset[str], runtime_env: dict | None = None):
    """``(source of the paths still to do, counts)`` for a listing ``source``
    (a :class:`~cps_ray.pipeline._manifests.ListingSource`), screened in a
    task: the driver gets the counts, never the paths."""
    import ray

    from ..pipeline._manifests import ListingSource

    options: dict = {"num_cpus": 0, "num_returns": 2}
    if runtime_env:
        options["runtime_env"] = runtime_env
    task = ray.remote(_screen_listing).options(**options)
    head, kept_ref = task.remote(source.table_ref, output, retry)
    counts = ray.get(head)
    todo = counts["inputs"] - counts["skipped"]
    return ListingSource(source.spec, kept_ref, todo, source.videos_per_block), counts
