"""Writing an output (``docs/jobs.md``): the workers write the shards
through a Ray Data ``Datasink`` and return small records, a :class:`Ledger`
actor tells each write which rows are new, and the driver commits the
errors table and the manifest. What an output holds is what its folder
holds (:mod:`cps_ray._store`), so a run killed at any point and resumed
holds the rows of a run never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import tempfile
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._rows import NULLABLE_STRING_COLUMNS, ROW_COLUMNS, local_path, row_path
from .._store import (
    ERRORS_FILE,
    ERRORS_SCHEMA,
    MANIFEST_FILE,
    SHARDS_DIR,
    OutputRoot,
    PathSet,
    check_resumable,
    done_set,
    energy_rule,
    iter_error_tables,
    output_lock,
    read_manifest,
    read_output,
    resize_policy,
)
from ..errors import OutputNotEmptyError, OutputPathError

DEFAULT_ROWS_PER_SHARD = 64
# A run's failures held in memory before they go to a local spill file.
FAILURES_IN_MEMORY = 10_000
# Rows per row group of the errors table: what a reader holds at a time.
ERRORS_ROW_GROUP = 2**16

# --- the run's ledger: which inputs to decode, which rows to write -------------------------


def _block_key(paths: list[str]) -> bytes:
    text = "\n".join(paths).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(text, digest_size=16).digest()


class Ledger:
    """One run's bookkeeping, as a Ray actor without a CPU (or in-process):
    :meth:`admit` screens blocks of inputs before decoding (what the output
    holds, less ``retry``; what an earlier block listed), :meth:`claim` tells
    a write task which of its rows to write (one path, one row). A block or
    a claim asked again (its task retried by Ray) gets the same answer,
    counted once."""

    REMEMBERED = 256

    def __init__(self, output: str | None, retry: frozenset[str] = frozenset(),
                 screen: bool = True):  # fmt: skip
        self.done = done_set(output, exclude=retry) if output and screen else PathSet()
        self.retry = PathSet(retry)
        self.seen = PathSet()
        self.claimed = PathSet()
        self.counts: Counter = Counter()
        self.retried: list[str] = []
        self.answers: OrderedDict[tuple, Any] = OrderedDict()

    def _remember(self, key: tuple, answer):
        self.answers[key] = answer
        if len(self.answers) > self.REMEMBERED:
            self.answers.popitem(last=False)
        return answer

    def screen(self, paths: list[str]) -> list[bool]:
        """Which of ``paths`` (as rows show them) to decode; counted."""
        new = self.seen.add_new(paths)
        done = self.done.contains(paths)
        keep = [n and not d for n, d in zip(new, done)]
        self.counts.update(
            inputs=sum(new),
            skipped=sum(n and d for n, d in zip(new, done)),
            retried=sum(k and r for k, r in zip(keep, self.retry.contains(paths))),
        )
        return keep

    def admit(self, batch: pa.Table) -> pa.Table:
        """``batch`` (a block of transported input paths) less what is done or seen."""
        paths = batch.column("path").to_pylist()
        key = ("admit", _block_key(paths))
        if key in self.answers:
            return self.answers[key]
        keep = self.screen([row_path(local_path(p)) for p in paths])
        return self._remember(key, batch.filter(pa.array(keep, pa.bool_())))

    def claim(self, paths: list[str]) -> list[bool]:
        """Which rows of a write (their paths) to write: not in the output,
        not written by this run yet."""
        key = ("claim", _block_key(paths))
        if key in self.answers:
            return self.answers[key]
        done = self.done.contains(paths)
        fresh = self.claimed.add_new([p for p, d in zip(paths, done) if not d])
        it = iter(fresh)
        keep = [False if d else next(it) for d in done]
        self.counts.update(already=sum(done), duplicates=len(paths) - sum(done) - sum(keep))
        self.retried += [p for p, k, r in zip(paths, keep, self.retry.contains(paths)) if k and r]
        return self._remember(key, keep)

    def totals(self) -> dict[str, Any]:
        return {**self.counts, "retried_paths": list(self.retried)}


def start_ledger(output: str | None, retry: frozenset[str] = frozenset(), *, screen: bool = True,
                 runtime_env: dict | None = None):  # fmt: skip
    """The run's :class:`Ledger` actor (no CPU; ``runtime_env`` reaches the
    output's store)."""
    import ray

    options: dict = {"num_cpus": 0}
    if runtime_env:
        options["runtime_env"] = runtime_env
    return ray.remote(Ledger).options(**options).remote(output, retry, screen)


def admit_block(batch: pa.Table, ledger) -> pa.Table:
    """``map_batches`` function: ``batch`` less what ``ledger`` leaves out."""
    import ray

    return ray.get(ledger.admit.remote(batch))


def _screen_listing(table: pa.Table, output: str, retry: frozenset[str]):
    """(Ray task, two returns) ``(counts, table less what output holds)``."""
    ledger = Ledger(output, retry)
    keep = ledger.screen([row_path(local_path(p)) for p in table.column("path").to_pylist()])
    return ledger.totals(), table.filter(pa.array(keep, pa.bool_()))


def screen_listing(listing, output: str, retry: frozenset[str], runtime_env: dict | None = None):
    """``(listing of the paths still to do, counts)`` for a
    :class:`~cps_ray.pipeline._inputs.Listing`, screened in a task: the driver
    gets the counts, never the paths."""
    import ray

    options: dict = {"num_cpus": 0, "num_returns": 2}
    if runtime_env:
        options["runtime_env"] = runtime_env
    head, kept = ray.remote(_screen_listing).options(**options).remote(listing.ref, output, retry)
    counts = ray.get(head)
    todo = dataclasses.replace(listing, ref=kept, count=counts["inputs"] - counts["skipped"])
    return todo, counts


# --- writing: the workers write shards, the driver commits -------------------------------


def _shard_table(table: pa.Table) -> pa.Table:
    for column in NULLABLE_STRING_COLUMNS:
        if column in table.schema.names and table.schema.field(column).type != pa.string():
            # A batch without failures types its all-null column as null; every
            # shard has one schema, whatever batches its rows came in.
            index = table.schema.get_field_index(column)
            table = table.set_column(index, column, table.column(column).cast(pa.string()))
    return table


def write_rows(output: OutputRoot, table: pa.Table, ledger, rows_per_shard: int) -> dict[str, Any]:
    """One write task's work: claim its rows from ``ledger`` (an actor or a
    :class:`Ledger`), write the good ones as shards of at most
    ``rows_per_shard`` rows named from their paths, and return the record
    the driver commits: ``shards`` (file, rows, bytes) and ``failures``."""
    paths = table.column("path").to_pylist()
    if hasattr(ledger, "claim") and hasattr(ledger.claim, "remote"):
        import ray

        keep = ray.get(ledger.claim.remote(paths))
    else:
        keep = ledger.claim(paths)
    errors = table.column("error").to_pylist()
    kinds = table.column("error_kind").to_pylist() if "error_kind" in table.schema.names else (
        [None] * len(paths))  # fmt: skip
    failures = [(p, e, k or "internal") for p, e, k, w in zip(paths, errors, kinds, keep)
                if w and e]  # fmt: skip
    good = [bool(w and not e) for w, e in zip(keep, errors)]
    rows = _shard_table(table.filter(pa.array(good, pa.bool_())))
    shards = []
    if rows.num_rows:
        output.fs.create_dir(output.path(SHARDS_DIR), recursive=True)
    for start in range(0, rows.num_rows, rows_per_shard):
        part = rows.slice(start, rows_per_shard)
        names = part.column("path").to_pylist()
        digest = hashlib.blake2b("\n".join(names).encode("utf-8", "surrogateescape"),
                                 digest_size=8).hexdigest()  # fmt: skip
        name = f"{SHARDS_DIR}/shard-{digest}.parquet"
        output.write_table(name, part)
        shards.append({"file": name, "rows": part.num_rows, "bytes": part.nbytes})
    return {"shards": shards, "failures": failures, "writer": _writer()}


def _writer() -> str:
    """Where a write ran: the Ray node and the process."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()
    except Exception:  # no Ray here (a test calling write_rows directly)
        node = "local"
    return f"{node[:12]} pid {os.getpid()}"


@functools.cache
def _sink_class():
    """The Ray Data ``Datasink`` of a run (defined on first use: readers of
    an output need no Ray)."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource import Datasink

    class ShardSink(Datasink):
        def __init__(self, output: OutputRoot, ledger, rows_per_shard: int):
            self.output, self.ledger, self.rows = output, ledger, rows_per_shard
            self.records: list[dict[str, Any]] = []

        def get_name(self) -> str:
            return "WriteShards"

        @property
        def min_rows_per_write(self) -> int:
            return self.rows

        def write(self, blocks, ctx) -> list[dict[str, Any]]:
            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return []
            table = pa.concat_tables(tables, promote_options="default")
            return [write_rows(self.output, table, self.ledger, self.rows)]

        def on_write_complete(self, write_result) -> None:
            for records in write_result.write_returns:
                self.records.extend(records)

    return ShardSink


class FailureLog:
    """This run's failures in arrival order, at most :data:`FAILURES_IN_MEMORY`
    in memory: the rest wait in a Parquet file of the driver's temporary folder."""

    def __init__(self):
        self.count = 0
        self._rows: list[tuple[str, str, str]] = []
        self._spill: str | None = None
        self._writer = None

    def add(self, failures: Iterable[tuple[str, str, str]]) -> None:
        for failure in failures:
            self._rows.append(failure)
            self.count += 1
        if len(self._rows) >= FAILURES_IN_MEMORY:
            self._write_spill()

    def _table(self) -> pa.Table:
        columns = list(zip(*self._rows)) if self._rows else [[], [], []]
        return pa.table(dict(zip(ERRORS_SCHEMA.names, map(list, columns))), schema=ERRORS_SCHEMA)

    def _write_spill(self) -> None:
        if self._writer is None:
            fd, self._spill = tempfile.mkstemp(prefix="cps_ray-failures-", suffix=".parquet")
            os.close(fd)
            # Deleted however the run ends (close(), an exception, the driver's exit).
            self._finalizer = weakref.finalize(self, _remove_quietly, self._spill)
            self._writer = pq.ParquetWriter(self._spill, ERRORS_SCHEMA)
        self._writer.write_table(self._table())
        self._rows = []

    def tables(self) -> Iterator[pa.Table]:
        """The failures, as tables in arrival order."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spill is not None:
            spilled = pq.ParquetFile(self._spill)
            for group in range(spilled.num_row_groups):
                yield spilled.read_row_group(group)
        if self._rows:
            yield self._table()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spill is not None:
            self._finalizer()
            self._spill = None


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("cps_ray", "torch", "torchcodec", "av", "ray", "numba", "numpy", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


class Run:
    """One run writing into an output (see :func:`write_shards`)."""

    def __init__(self, output: OutputRoot, *, config=None, rows_per_shard: int,
                 resume: bool, skipped=0, retry=frozenset()):  # fmt: skip
        self.previous = read_output(output)
        if not resume and not self.previous.is_empty:
            raise OutputNotEmptyError(
                f"output {output.given!r} already holds a run ({len(self.previous.shards)} "
                "shards); pass resume=True to add to it, or write to an empty output"
            )
        rule = energy_rule(config)
        check_resumable(self.previous.manifest, output.given, rule)
        for name in self.previous.temporaries:  # half-written files of a killed run
            output.delete(name)
        self.output, self.config, self.rule = output, config, rule
        self.rows_per_shard, self.skipped, self.retry = rows_per_shard, skipped, retry
        self.start = time.time()
        self.records: list[dict[str, Any]] = []
        self.failures = FailureLog()
        self.counts: dict[str, Any] = {}

    def manifest(self, complete: bool) -> dict[str, Any]:
        previous, counts = self.previous, self.counts
        new = [{"file": s["file"], "rows": s["rows"]} for r in self.records for s in r["shards"]]
        ok = sum(s["rows"] for s in new)
        replaced = len(self._replaced())
        skipped = self.skipped() if callable(self.skipped) else self.skipped
        skipped += counts.get("already", 0)
        return {
            "inputs": skipped + ok + self.failures.count,
            "skipped": skipped,
            "ok": previous.ok_rows + ok,
            "failed": previous.error_rows - replaced + self.failures.count,
            "shards": list(previous.shards) + new,
            "errors": ERRORS_FILE,
            "run": {
                "ok": ok,
                "failed": self.failures.count,
                "new_shards": [s["file"] for s in new],
                "writers": dict(Counter(r["writer"] for r in self.records if r["shards"])),
            },  # fmt: skip
            "duplicate_rows": counts.get("duplicates", 0),
            "complete": complete,
            "seconds": round(time.time() - self.start, 3),
            "config": dataclasses.asdict(self.config) if self.config is not None else None,
            "energy_rule": self.rule,
            "resize_policy": resize_policy(),
            "columns": list(ROW_COLUMNS),
            "versions": _versions(),
        }

    def _replaced(self) -> set[str]:
        """Old failures decoded again this run: their new row or failure replaces them."""
        return set(self.counts.get("retried_paths", ()))

    def begin(self) -> None:
        """The provisional manifest: a run killed before its end is resumed
        with the settings it was started with."""
        self.output.fs.create_dir(self.output.path(SHARDS_DIR), recursive=True)
        self.output.write_bytes(MANIFEST_FILE, json.dumps(self.manifest(False), indent=2).encode())

    def commit(self, records: list[dict[str, Any]], counts: dict[str, Any]) -> dict[str, Any]:
        """The errors table and the final manifest, from the write records."""
        self.records, self.counts = records, counts
        for record in records:
            self.failures.add(record["failures"])
        previous = self.previous
        if not records and not self.retry and (previous.is_empty or previous.is_settled):
            return self.manifest(True)  # nothing new: the output is left as it is
        gone = self._replaced()

        def kept_errors():
            for table in iter_error_tables(self.output, previous):
                if gone:
                    keep = [p not in gone for p in table.column("path").to_pylist()]
                    table = table.filter(pa.array(keep, pa.bool_()))
                yield table

        if self.failures.count or gone or not previous.has_errors_file:
            tables = itertools.chain(kept_errors(), self.failures.tables())
            self.output.write_tables(ERRORS_FILE, ERRORS_SCHEMA, tables,
                                     rows_per_group=ERRORS_ROW_GROUP)  # fmt: skip
        self.failures.close()
        manifest = self.manifest(True)
        self.output.write_bytes(MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        return manifest


def write_shards(ds, out: str | os.PathLike, *, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                 config=None, resume: bool = False, skipped=0, retry=frozenset(),
                 ledger=None, runtime_env: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``ds`` (a :func:`patch_dataset`, or any dataset of rows) under
    ``out``, from Ray's workers; returns the manifest.

    Every input ends once, in a shard row or in the errors table.

    Args:
        rows_per_shard: rows per write task, so about that many per shard.
        config: the :class:`PatchStreamConfig`, recorded in the manifest with
            the name of its energy rule (``motion`` chooses it).
        resume: add to what ``out`` holds: rows whose path it holds are not
            written again (counted as skipped); without it ``out`` must hold no run.
        skipped: inputs the caller left out because ``out`` had them (an int,
            or a callable asked at the end).
        retry: failures of the errors table that ``ds`` decodes again: their
            new rows replace them.
        ledger: the run's :class:`Ledger` actor when the caller started one
            (a streamed job screens its inputs with it); else one is started.
        runtime_env: for the write tasks and the ledger (a store's settings).

    Raises:
        OutputNotEmptyError: ``out`` already holds a run and ``resume`` is off.
        EnergyRuleError: ``resume`` into an output of another rule or other columns.
        JobError: another live run holds ``out``'s lock.
    """
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int):
        raise TypeError(f"rows_per_shard must be an int >= 1, got {rows_per_shard!r}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be an int >= 1, got {rows_per_shard}")
    output = OutputRoot(out)
    retry = frozenset(retry) if resume else frozenset()
    with output_lock(output):
        run = Run(output, config=config, rows_per_shard=rows_per_shard, resume=resume,
                  skipped=skipped, retry=retry)  # fmt: skip
        records: list[dict[str, Any]] = []
        counts: dict[str, Any] = {}
        if ds is not None:
            import ray

            if ledger is None:
                ledger = start_ledger(output.given, retry, screen=resume, runtime_env=runtime_env)
            run.begin()
            sink = _sink_class()(output, ledger, rows_per_shard)
            remote_args: dict[str, Any] = {"num_cpus": 0}
            if runtime_env:
                remote_args["runtime_env"] = runtime_env  # the output's store, say
            ds.write_datasink(sink, ray_remote_args=remote_args)
            records = sink.records
            counts = ray.get(ledger.totals.remote())
        return run.commit(records, counts)


def shard_dataset(out: str | os.PathLike):
    """A Ray Dataset of the good rows ``out`` holds: the shards its manifest
    lists, nothing decoded. From an object store, Ray's workers need the
    store's settings as for any read from it (``AWS_*`` in the job's runtime env).

    Read by Ray Data's first Parquet datasource, which reads the footers when
    the read is planned: the default one starts footer-reading actors on every
    execution (``benchmark/benchmark_shard_read.py``).

    Raises:
        OutputPathError: ``out`` holds no manifest, or its manifest lists no shard.
    """
    import ray

    output = OutputRoot(out)
    manifest = read_manifest(output)
    if manifest is None:
        raise OutputPathError(f"output {output.given!r} holds no {MANIFEST_FILE} (not an output?)")
    if not manifest["shards"]:
        raise OutputPathError(f"output {output.given!r} holds no shards (every video failed?)")
    files = [output.path(shard["file"]) for shard in manifest["shards"]]
    context = ray.data.DataContext.get_current()
    default = context.use_datasource_v2
    context.use_datasource_v2 = False  # read when the read is planned, here
    try:
        return ray.data.read_parquet(files, filesystem=output.fs)
    finally:
        context.use_datasource_v2 = default
