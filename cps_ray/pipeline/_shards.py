"""``write_shards``: a patch dataset to Parquet shards, a manifest and an
errors table, in a local folder or any URI pyarrow's filesystems accept.

Layout under ``out``::

    shards/shard-00000.parquet ...   good rows, in input order, rows_per_shard each
    errors.parquet                   path, error of every failed video
    manifest.json                    counts, shard list, config, versions

Shard names are deterministic (input order is preserved by ``patch_dataset``),
and each file is written under a temporary name (``NAME.tmp-XXXXXXXX``) and
then moved into place, so a killed run never leaves a half shard under a
final name. Temporary names never count as output; the next ``write_shards``
on that output deletes them.

Every file is named through one helper, :meth:`OutputRoot.path`, which keeps
it inside ``out``: no ``..``, no absolute name, and in a local folder no
symlink (``shards/``, ``manifest.json``...) that leads out of it.

Resuming (``resume=True``): :func:`done_set` says which inputs an output
already holds (the paths in its shards, read one shard at a time and kept as
16-byte digests, and in its errors table); the caller leaves
those inputs out, and ``write_shards`` numbers new shards after the existing
ones, never rewrites an existing shard, adds new failures to the errors table
(rewritten only when there are new ones, the old table read and the new one
written a row group at a time; this run's failures past
:data:`FAILURES_IN_MEMORY` wait in a local spill file) and rewrites the
manifest with the totals. A run writes a provisional manifest (``"complete": false``, with its
config) before its first shard, so the output of a run killed halfway still
records the settings it was written with; the shard files themselves are the
record of what is done. Good rows are grouped into full shards in input
order and only the last shard of a run may be short, so a run killed halfway
and resumed with the same inputs and ``rows_per_shard`` gives the shards,
errors table and totals of a run that was never interrupted.

One path, one row: a row whose path is already in the output, or already
written by this run (a duplicated input, or a row a retried Ray task gave
twice), is not written again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
import weakref
from typing import Any

import numpy as np
import pyarrow as pa

from .._kernels.reference import ENERGY_RULE
from ..errors import OutputNotEmptyError
from ._lock import output_lock
from ._output import (  # noqa: F401  (the names an output's readers import from here)
    ERRORS_FILE,
    MANIFEST_FILE,
    SHARD_PATTERN,
    SHARDS_DIR,
    EnergyRuleError,
    OutputPathError,
    OutputRoot,
    WrittenOutput,
    check_energy_rule,
    done_set,
    iter_error_tables,
    iter_errors,
    iter_shard_paths,
    read_errors,
    read_manifest,
    read_output,
)
from ._pathset import PathSet
from ._rows import NULLABLE_STRING_COLUMNS


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("cps_ray", "torch", "torchcodec", "ray", "numba", "numpy", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _errors_table(paths: list[str], reasons: list[str]) -> pa.Table:
    return pa.table({"path": pa.array(paths, pa.string()), "error": pa.array(reasons, pa.string())})


# A run's failures held in memory before they go to a local spill file.
FAILURES_IN_MEMORY = 10_000
# Rows per row group of the errors table: what a reader holds at a time.
ERRORS_ROW_GROUP = 2**16


class FailureLog:
    """This run's failures (path, reason) in arrival order, at most
    :data:`FAILURES_IN_MEMORY` of them in memory: the rest wait in a Parquet
    file of this node's temporary folder until the errors table is written."""

    def __init__(self):
        self.count = 0
        self._paths: list[str] = []
        self._reasons: list[str] = []
        self._spill: str | None = None
        self._writer = None

    def add(self, path: str, reason: str) -> None:
        self._paths.append(path)
        self._reasons.append(reason)
        self.count += 1
        if len(self._paths) >= FAILURES_IN_MEMORY:
            self._write_spill()

    def _write_spill(self) -> None:
        import tempfile

        import pyarrow.parquet as pq

        table = _errors_table(self._paths, self._reasons)
        if self._writer is None:
            fd, self._spill = tempfile.mkstemp(prefix="cps_ray-failures-", suffix=".parquet")
            os.close(fd)
            # Deleted however the run ends (close(), an exception, the driver's exit).
            self._finalizer = weakref.finalize(self, _remove_quietly, self._spill)
            self._writer = pq.ParquetWriter(self._spill, table.schema)
        self._writer.write_table(table)
        self._paths, self._reasons = [], []

    def tables(self):
        """The failures, as tables in arrival order (the spill file read a row group at a time)."""
        import pyarrow.parquet as pq

        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spill is not None:
            spilled = pq.ParquetFile(self._spill)
            for group in range(spilled.num_row_groups):
                yield spilled.read_row_group(group)
        if self._paths:
            yield _errors_table(self._paths, self._reasons)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spill is not None:
            self._finalizer()
            self._spill = None


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_shards(
    ds,
    out: str | os.PathLike,
    *,
    rows_per_shard: int = 64,
    config=None,
    resume: bool = False,
    skipped: int = 0,
    retry=(),
    screened: bool = False,
) -> dict[str, Any]:
    """Write ``ds`` (a :func:`patch_dataset`) under ``out``; returns the manifest.

    Every input ends in a shard row or in ``errors.parquet``, once.

    Args:
        ds: the dataset (anything with Ray Data's ``iter_batches(batch_size=,
            batch_format="pyarrow")``), or ``None`` when there is nothing new
            to write (every input was skipped).
        rows_per_shard: good rows per shard (the last one may be short).
        config: the :class:`PatchStreamConfig`, recorded in the manifest.
        resume: add to what ``out`` holds (see :func:`read_output`): new
            shards after the existing ones, new failures after the old ones;
            rows whose path ``out`` already holds are left out (and counted
            as skipped). Without it, ``out`` must hold no run yet.
        skipped: inputs the caller left out because ``out`` already had them;
            recorded in the manifest. A callable is asked each time the
            manifest is written (a streamed job counts them as it reads).
        retry: paths of the errors table that ``ds`` decodes again (with
            ``resume``): their new rows replace their old failures.
        screened: ``ds`` already leaves out what ``out`` holds (a streamed
            job's first stage does, see :mod:`cps_ray.jobs._admit`): the
            output's paths are not read here too.

    A run that brings no row writes nothing when the output holds no run
    yet, or when it is settled (:attr:`WrittenOutput.is_settled`); the
    manifest it returns has this run's counts.

    The run holds ``out``'s lock (:mod:`cps_ray.pipeline._lock`): a second run
    writing the same output at the same time is refused with a
    :class:`JobError`.

    The manifest: ``inputs`` (this run's distinct inputs: ``skipped`` plus
    the rows written), ``skipped``, ``ok`` and ``failed`` (videos in the
    shards and in the errors table, all runs), ``shards`` (all of them),
    ``errors``, ``run`` (this run: ``ok``, ``failed``, ``new_shards``),
    ``duplicate_rows`` (rows of ``ds`` whose path this run had already
    written: not written again), ``complete`` (``false`` in the provisional
    manifest a run writes first), ``seconds``, ``config``, ``energy_rule``
    (the selection rule's name, see :mod:`cps_ray._kernels.reference`),
    ``versions``.

    Raises:
        OutputNotEmptyError: ``out`` already holds a run and ``resume`` is off.
        EnergyRuleError: ``resume`` into an output written under another energy rule.
        OutputPathError: a file of the layout would land outside ``out``.
    """
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int):
        raise TypeError(f"rows_per_shard must be an int >= 1, got {rows_per_shard!r}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be an int >= 1, got {rows_per_shard}")
    output = OutputRoot(out)
    with output_lock(output):
        return _write_shards(ds, output, rows_per_shard, config, resume, skipped, retry, screened)


def _write_shards(ds, output, rows_per_shard, config, resume, skipped, retry,
                  screened) -> dict[str, Any]:  # fmt: skip
    writer = ShardWriter(output, rows_per_shard, config, resume, skipped, retry, screened)
    if ds is not None:
        for batch in ds.iter_batches(batch_size=rows_per_shard, batch_format="pyarrow"):
            writer.add(batch)
    return writer.finish()


class ShardWriter:
    """One run writing into an output (see :func:`write_shards`): row batches
    in (:meth:`add`), shards as they fill, then the errors table and the
    manifest (:meth:`finish`)."""

    def __init__(self, output: OutputRoot, rows_per_shard: int, config, resume: bool,
                 skipped, retry, screened: bool):  # fmt: skip
        previous = read_output(output)
        if not resume and not previous.is_empty:
            raise OutputNotEmptyError(
                f"output {output.given!r} already holds a run ({len(previous.shards)} shards); "
                "pass resume=True to add to it, or write to an empty output"
            )
        check_energy_rule(previous.manifest, output.given)
        for name in previous.temporaries:  # half-written files of a killed run
            output.delete(name)
        self.output, self.previous = output, previous
        self.rows_per_shard, self.config, self.skipped = rows_per_shard, config, skipped
        self.start = time.time()
        self.shards: list[dict[str, Any]] = []
        self.failures = FailureLog()
        self.counts = {"ok": 0, "already": 0, "duplicates": 0}
        retry = frozenset(retry) if resume else frozenset()
        if retry:  # only failures of the errors table are decoded again
            retry = frozenset(p for p, _ in iter_errors(output, previous) if p in retry)
        self.retry = retry
        # Old rows, not decoded again.
        self.done = PathSet() if screened else done_set(output, previous, exclude=retry)
        self.written = PathSet()  # this run's rows
        self.pending: list[pa.Table] = []  # good rows not yet in a shard
        self.pending_rows = 0
        self.started = False

    def _replaced(self) -> list[str]:
        """Failures decoded again: each is replaced by its new row (or new failure)."""
        retry = list(self.retry)
        return [p for p, new in zip(retry, self.written.contains(retry)) if new]

    def _kept_errors(self):
        """The old errors table less the replaced failures, a row group at a time."""
        gone = set(self._replaced())
        for table in iter_error_tables(self.output, self.previous):
            if gone:
                keep = [p not in gone for p in table.column("path").to_pylist()]
                table = table.filter(pa.array(keep, pa.bool_()))
            yield table

    def manifest(self, complete: bool) -> dict[str, Any]:
        previous, counts, failures = self.previous, self.counts, self.failures
        left_out = self.skipped() if callable(self.skipped) else self.skipped
        return {
            "inputs": left_out + counts["already"] + counts["ok"] + failures.count,
            "skipped": left_out + counts["already"],
            "ok": previous.ok_rows + counts["ok"],
            "failed": previous.error_rows - len(self._replaced()) + failures.count,
            "shards": list(previous.shards) + self.shards,
            "errors": ERRORS_FILE,
            "run": {
                "ok": counts["ok"],
                "failed": failures.count,
                "new_shards": [s["file"] for s in self.shards],
            },
            "duplicate_rows": counts["duplicates"],
            "complete": complete,
            "seconds": round(time.time() - self.start, 3),
            "config": dataclasses.asdict(self.config) if self.config is not None else None,
            "energy_rule": ENERGY_RULE,
            "versions": _versions(),
        }

    def _write_manifest(self, complete: bool) -> dict[str, Any]:
        manifest = self.manifest(complete)
        self.output.write_bytes(MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        return manifest

    def _flush(self, tables: list[pa.Table]) -> None:
        table = pa.concat_tables(tables, promote_options="default")
        for column in NULLABLE_STRING_COLUMNS:
            if column in table.schema.names and table.schema.field(column).type != pa.string():
                # A batch without failures types its all-null column as null; every
                # shard has one schema, whatever batches its rows came in.
                index = table.schema.get_field_index(column)
                table = table.set_column(index, column, table.column(column).cast(pa.string()))
        number = self.previous.next_shard_index + len(self.shards)
        name = f"{SHARDS_DIR}/{SHARD_PATTERN.format(number)}"
        self.output.write_table(name, table)
        self.shards.append({"file": name, "rows": table.num_rows})

    def add(self, batch: pa.Table) -> None:
        """Sort a batch of rows: old, duplicate, failed, or good (shards as they fill)."""
        if not batch.num_rows:
            return
        if not self.started:
            # First the settings: a run killed before its end is resumed with them.
            self.output.fs.create_dir(self.output.path(SHARDS_DIR), recursive=True)
            self._write_manifest(False)
            self.started = True
        counts = self.counts
        errors = batch.column("error").to_pylist()
        paths = batch.column("path").to_pylist()
        old = self.done.contains(paths)
        fresh = iter(self.written.add_new([p for p, o in zip(paths, old) if not o]))
        good = np.zeros(batch.num_rows, dtype=bool)
        for i, (path, err, is_old) in enumerate(zip(paths, errors, old)):
            if is_old:
                counts["already"] += 1
            elif not next(fresh):
                counts["duplicates"] += 1
            elif err:
                self.failures.add(path, err)
            else:
                good[i] = True
        if good.any():
            kept = batch if good.all() else batch.filter(pa.array(good))
            self.pending.append(kept)
            self.pending_rows += kept.num_rows
            counts["ok"] += kept.num_rows
        while self.pending_rows >= self.rows_per_shard:
            merged = pa.concat_tables(self.pending, promote_options="default")
            self._flush([merged.slice(0, self.rows_per_shard)])
            rest = merged.slice(self.rows_per_shard)
            self.pending = [rest] if rest.num_rows else []
            self.pending_rows = rest.num_rows

    def finish(self) -> dict[str, Any]:
        """The last (short) shard, the errors table and the final manifest."""
        if self.pending_rows:
            self._flush(self.pending)
            self.pending, self.pending_rows = [], 0
        previous = self.previous
        if not (self.started or self.retry) and (previous.is_empty or previous.is_settled):
            return self.manifest(True)  # nothing new: the output is left as it is
        if self.failures.count or self.retry or not previous.has_errors_file:
            schema = _errors_table([], []).schema
            # Read as they are written: old rows a row group at a time, then this run's.
            tables = itertools.chain(self._kept_errors(), self.failures.tables())
            self.output.write_tables(ERRORS_FILE, schema, tables, rows_per_group=ERRORS_ROW_GROUP)
        self.failures.close()
        return self._write_manifest(True)


def shard_dataset(out: str | os.PathLike):
    """A Ray Dataset of the good rows ``out`` holds (a folder or URI that
    :func:`write_shards` wrote): the shards its manifest lists, nothing decoded.
    From an object store, Ray's workers need the store's settings as for any
    read from it (``AWS_*`` in the job's runtime env).

    Read by Ray Data's first Parquet datasource, which reads the footers in
    the driver (in tasks past a few dozen files). The second, Ray 2.60's
    default, starts a pool of footer-reading actors on every execution: on 2
    cores two passes over eight shards cost 10.7 CPU-s that way and 0.8 this
    way (``benchmark/benchmark_shard_read.py``), and a training loop pays it
    on every pass.

    Raises:
        OutputPathError: ``out`` holds no manifest, or its manifest lists no
            shard (every video failed?).
    """
    import ray

    output = OutputRoot(out)
    manifest = read_manifest(output)  # the shards' footers are Ray Data's to read
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
