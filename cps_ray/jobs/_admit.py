"""A streamed job's screening: which inputs still need a row.

A manifest too large to list in the driver is read by Ray Data
(:mod:`cps_ray.pipeline._manifests`). Its paths pass through one
:func:`admission` actor without a CPU before the decoders: it leaves out the
inputs the output already holds (its shards, read one at a time and kept as
16-byte digests, and its errors table, less the failures ``--retry-failed``
decodes again) and inputs listed twice, and it counts them. The driver
starts it and reads its counts at the end; the manifest's read tasks hand it
their blocks (:func:`admit_block`), so a job starts no actor for it beyond
this one.

A folder or a URI prefix is listed by a task whose table stays in the object
store (:mod:`cps_ray.pipeline._listing`). :func:`admit_listing` screens that
table the same way in one more task before any actor starts: the pipeline
reads what is left, the counts come back with it, and a resume with nothing
new starts no actor pool.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict

import pyarrow as pa

from ..pipeline._inputs import local_path, row_path
from ..pipeline._output import done_set, read_output
from ..pipeline._pathset import PathSet


class AdmitInputs:
    """Screens blocks of input paths: leaves out what ``output`` holds (less
    ``retry``) and what an earlier block listed."""

    def __init__(self, output: str, retry: frozenset[str]):
        self.done = done_set(output, read_output(output), exclude=retry)
        self.retry = PathSet(retry)
        self.seen = PathSet()

    def screen(self, batch: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        """``batch`` less what is done or seen, and its counts: ``inputs``
        (distinct inputs), ``skipped`` (already in the output), ``retried``
        (failures decoded again)."""
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


class _Admission(AdmitInputs):
    """The actor: screens every block of a run and sums the counts.

    A block asked again (the task that carried it failed after its answer
    and Ray ran it again) gets the same answer and is counted once: screened
    a second time, its paths would be "listed before" and never decoded.
    (A block that only repeats an earlier one's lines is let through again;
    the driver's writer still writes each path once.)
    """

    REMEMBERED = 64  # the answers kept for blocks asked again

    def __init__(self, output: str, retry: frozenset[str]):
        super().__init__(output, retry)
        self.counts: Counter = Counter()
        self.answers: OrderedDict[bytes, pa.Table] = OrderedDict()

    def admit(self, batch: pa.Table) -> pa.Table:
        key = hashlib.blake2b(
            "\n".join(map(str, batch.column("path").to_pylist())).encode(
                "utf-8", "surrogateescape"
            ),
            digest_size=16,
        ).digest()
        if key in self.answers:
            return self.answers[key]
        kept, counts = self.screen(batch)
        self.counts.update(counts)
        self.answers[key] = kept
        if len(self.answers) > self.REMEMBERED:
            self.answers.popitem(last=False)
        return kept

    def totals(self) -> dict[str, int]:
        return dict(self.counts)


def admission(output: str, retry: frozenset[str], runtime_env: dict | None = None):
    """The run's admission actor (no CPU; ``runtime_env`` reaches the output's
    store); ``ray.get(actor.totals.remote())`` gives its counts."""
    import ray

    options: dict = {"num_cpus": 0}
    if runtime_env:
        options["runtime_env"] = runtime_env
    return ray.remote(_Admission).options(**options).remote(output, retry)


def admit_block(batch: pa.Table, admission) -> pa.Table:
    """``map_batches`` function: ``batch`` less what ``admission`` leaves out.
    It waits for the answer, so every count is in before the rows it let
    through reach the driver."""
    import ray

    return ray.get(admission.admit.remote(batch))


def _screen_listing(table: pa.Table, output: str, retry: frozenset[str]):
    """(Ray task, two returns) ``(counts, table less what output holds)``."""
    kept, counts = AdmitInputs(output, retry).screen(table)
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
