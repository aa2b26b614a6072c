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

Resuming (``resume=True``): :func:`read_output` says what an output already
holds (the paths in its shards and in its errors table); the caller leaves
those inputs out, and ``write_shards`` numbers new shards after the existing
ones, never rewrites an existing shard, adds new failures to the errors table
(rewritten only when there are new ones) and rewrites the manifest with the
totals. A run writes a provisional manifest (``"complete": false``, with its
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

import contextlib
import dataclasses
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import EnergyRuleError, OutputNotEmptyError, OutputPathError
from ..kernels.reference import ENERGY_RULE, LEGACY_ENERGY_RULE
from .lock import LOCK_FILE, output_lock
from .rows import NULLABLE_STRING_COLUMNS

SHARDS_DIR = "shards"
SHARD_PATTERN = "shard-{:05d}.parquet"
SHARD_NAME = re.compile(r"shard-(\d{5,})\.parquet")
ERRORS_FILE = "errors.parquet"
MANIFEST_FILE = "manifest.json"
# NAME.tmp-XXXXXXXX: a file being written, or left by a killed run.
TEMPORARY_NAME = re.compile(
    rf"(?:shard-\d{{5,}}\.parquet|{re.escape(ERRORS_FILE)}|{re.escape(MANIFEST_FILE)}"
    rf"|{re.escape(LOCK_FILE)})\.tmp-[0-9a-f]{{8}}"
)


def written_energy_rule(manifest: dict[str, Any]) -> str:
    """The energy rule an output's manifest records; manifests written before
    the rule was recorded used the first-frame variance rule."""
    return manifest.get("energy_rule", LEGACY_ENERGY_RULE)


def check_energy_rule(manifest: dict[str, Any] | None, where: str) -> None:
    """Refuse to add rows selected by this release's rule to an output whose
    rows were selected by another (their scores and patches would mix)."""
    if manifest is None:
        return
    rule = written_energy_rule(manifest)
    if rule != ENERGY_RULE:
        raise EnergyRuleError(
            f"output {where!r} was written under the energy rule {rule!r}, and this "
            f"cps_ray selects under {ENERGY_RULE!r}; its rows cannot be resumed into. "
            "Write to a new output (or delete this one)"
        )


class OutputRoot:
    """An output folder or URI; every file under it is named by :meth:`path`.

    Args:
        out: a local folder (made absolute) or a URI (``s3://...``, ``file://...``).
    """

    def __init__(self, out: str | os.PathLike):
        self.given = os.fspath(out)
        uri = self.given if "://" in self.given else os.path.abspath(self.given)
        self.fs, root = pafs.FileSystem.from_uri(uri)
        self.root = root.rstrip("/")
        # Symlinks exist only on local filesystems; there the real folder is the fence.
        self.real_root = (
            os.path.realpath(root or "/") if isinstance(self.fs, pafs.LocalFileSystem) else None
        )

    def path(self, relative: str) -> str:
        """``relative`` (``"shards/shard-00000.parquet"``) under the root.

        Raises:
            OutputPathError: ``relative`` is empty, absolute or has ``.``/``..``
                or empty parts; or, in a local folder, it resolves (through a
                symlink) outside the folder.
        """
        parts = relative.split("/")
        if (
            not relative
            or relative.startswith("/")
            or "\\" in relative
            or "\x00" in relative
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise OutputPathError(
                f"output {self.given!r}: refusing {relative!r}: every file of an output "
                "is a plain relative name inside it (no '..', no absolute name)"
            )
        full = f"{self.root}/{relative}"
        if self.real_root is not None:
            real = os.path.realpath(full)
            if os.path.commonpath([self.real_root, real]) != self.real_root:
                raise OutputPathError(
                    f"output {self.given!r}: refusing {relative!r}: it resolves to "
                    f"{real!r}, outside the output folder {self.real_root!r} (a symlink); "
                    "remove the link, or make OUT itself the folder you want written"
                )
        return full

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def files_in(self, relative: str | None = None) -> list[str]:
        """Base names of the files directly in the folder ``relative`` (the root: None)."""
        folder = (self.root or "/") if relative is None else self.path(relative)
        infos = self.fs.get_file_info(pafs.FileSelector(folder))
        return [i.base_name for i in infos if i.type == pafs.FileType.File]

    def root_exists(self) -> bool:
        return self.fs.get_file_info(self.root or "/").type != pafs.FileType.NotFound

    def delete(self, relative: str) -> None:
        self.fs.delete_file(self.path(relative))

    def write_table(self, relative: str, table: pa.Table) -> None:
        """Write ``table`` as Parquet; see :meth:`write_bytes`."""
        self._write(relative, lambda f: pq.write_table(table, f))

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write ``data`` under a temporary name, then move it into place: the
        final name only ever holds a whole file."""
        self._write(relative, lambda f: f.write(data))

    def _write(self, relative: str, write) -> None:
        final = self.path(relative)
        tmp_relative = f"{relative}.tmp-{uuid.uuid4().hex[:8]}"
        tmp = self.path(tmp_relative)
        try:
            with self.fs.open_output_stream(tmp) as f:
                write(f)
            self.fs.move(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise


def _output(out: str | os.PathLike | OutputRoot) -> OutputRoot:
    return out if isinstance(out, OutputRoot) else OutputRoot(out)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("cps_ray", "torch", "torchcodec", "ray", "numba", "numpy", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class WrittenOutput:
    """What an output folder already holds (empty when it does not exist).

    shards: ``{"file": "shards/shard-00000.parquet", "rows": n}`` in shard order.
    shard_paths: the ``path`` of every row in those shards.
    error_paths, error_reasons: the rows of ``errors.parquet``.
    manifest: ``manifest.json`` parsed, or ``None``.
    temporaries: files a killed run left half written (``shards/NAME.tmp-...``);
        never part of the output, deleted by the next ``write_shards``.
    """

    shards: tuple[dict[str, Any], ...] = ()
    shard_paths: tuple[str, ...] = ()
    error_paths: tuple[str, ...] = ()
    error_reasons: tuple[str, ...] = ()
    manifest: dict[str, Any] | None = None
    has_errors_file: bool = False
    temporaries: tuple[str, ...] = ()

    @property
    def done_paths(self) -> frozenset[str]:
        """Inputs already written: in a shard or in the errors table."""
        return frozenset(self.shard_paths) | frozenset(self.error_paths)

    @property
    def next_shard_index(self) -> int:
        if not self.shards:
            return 0
        return 1 + max(_shard_index(s["file"]) for s in self.shards)

    @property
    def is_empty(self) -> bool:
        return not (self.shards or self.has_errors_file or self.manifest is not None)


def _shard_index(file: str) -> int:
    match = SHARD_NAME.fullmatch(file.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"not a shard file name: {file!r}")
    return int(match.group(1))


def read_output(out: str | os.PathLike | OutputRoot) -> WrittenOutput:
    """Read what ``out`` (a folder or URI written by :func:`write_shards`) holds.

    Only final shard names count: a temporary file of a killed run is ignored
    (and listed in ``temporaries``).

    Raises:
        OutputPathError: a file of the layout leads outside ``out`` (a symlink).
    """
    output = _output(out)
    if not output.root_exists():
        return WrittenOutput()
    shards: list[dict[str, Any]] = []
    shard_paths: list[str] = []
    temporaries = [n for n in output.files_in() if TEMPORARY_NAME.fullmatch(n)]
    if output.exists(SHARDS_DIR):
        listed = output.files_in(SHARDS_DIR)
        temporaries += [f"{SHARDS_DIR}/{n}" for n in listed if TEMPORARY_NAME.fullmatch(n)]
        names = sorted((n for n in listed if SHARD_NAME.fullmatch(n)), key=_shard_index)
        for name in names:
            with output.fs.open_input_file(output.path(f"{SHARDS_DIR}/{name}")) as f:
                table = pq.read_table(f, columns=["path"])
            shards.append({"file": f"{SHARDS_DIR}/{name}", "rows": table.num_rows})
            shard_paths.extend(table.column("path").to_pylist())
    has_errors_file = output.exists(ERRORS_FILE)
    errors = read_errors(output) if has_errors_file else []
    manifest = None
    if output.exists(MANIFEST_FILE):
        with output.fs.open_input_stream(output.path(MANIFEST_FILE)) as f:
            manifest = json.loads(f.read().decode())
    return WrittenOutput(
        tuple(shards),
        tuple(shard_paths),
        tuple(path for path, _ in errors),
        tuple(reason for _, reason in errors),
        manifest,
        has_errors_file,
        tuple(temporaries),
    )


def read_errors(out: str | os.PathLike | OutputRoot) -> list[tuple[str, str]]:
    """``(path, error)`` of every row of ``out``'s errors table, in order."""
    output = _output(out)
    with output.fs.open_input_file(output.path(ERRORS_FILE)) as f:
        errors = pq.read_table(f)
    return list(zip(errors.column("path").to_pylist(), errors.column("error").to_pylist()))


def _errors_table(paths: list[str], reasons: list[str]) -> pa.Table:
    return pa.table({"path": pa.array(paths, pa.string()), "error": pa.array(reasons, pa.string())})


def write_shards(
    ds,
    out: str | os.PathLike,
    *,
    rows_per_shard: int = 64,
    config=None,
    resume: bool = False,
    skipped: int = 0,
    retry=(),
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
            recorded in the manifest.
        retry: paths of the errors table that ``ds`` decodes again (with
            ``resume``): their new rows replace their old failures.

    The run holds ``out``'s lock (:mod:`cps_ray.pipeline.lock`): a second run
    writing the same output at the same time is refused with a
    :class:`JobError`.

    The manifest: ``inputs`` (this run's distinct inputs: ``skipped`` plus
    the rows written), ``skipped``, ``ok`` and ``failed`` (videos in the
    shards and in the errors table, all runs), ``shards`` (all of them),
    ``errors``, ``run`` (this run: ``ok``, ``failed``, ``new_shards``),
    ``duplicate_rows`` (rows of ``ds`` whose path this run had already
    written: not written again), ``complete`` (``false`` in the provisional
    manifest a run writes first), ``seconds``, ``config``, ``energy_rule``
    (the selection rule's name, see :mod:`cps_ray.kernels.reference`),
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
        return _write_shards(ds, output, rows_per_shard, config, resume, skipped, retry)


def _write_shards(ds, output, rows_per_shard, config, resume, skipped, retry) -> dict[str, Any]:
    previous = read_output(output)
    if not resume and not previous.is_empty:
        raise OutputNotEmptyError(
            f"output {output.given!r} already holds a run ({len(previous.shards)} shards); "
            "pass resume=True to add to it, or write to an empty output"
        )
    check_energy_rule(previous.manifest, output.given)
    for name in previous.temporaries:  # half-written files of a killed run
        output.delete(name)
    output.fs.create_dir(output.path(SHARDS_DIR), recursive=True)
    start = time.time()
    first_index = previous.next_shard_index
    shards: list[dict[str, Any]] = []
    errors_path: list[str] = []
    errors_reason: list[str] = []
    counts = {"ok": 0, "already": 0, "duplicates": 0}
    retry = frozenset(retry) & frozenset(previous.error_paths) if resume else frozenset()
    kept_errors = [(p, r) for p, r in zip(previous.error_paths, previous.error_reasons)
                   if p not in retry]  # fmt: skip

    def manifest(complete: bool) -> dict[str, Any]:
        return {
            "inputs": skipped + counts["already"] + counts["ok"] + len(errors_path),
            "skipped": skipped + counts["already"],
            "ok": len(previous.shard_paths) + counts["ok"],
            "failed": len(kept_errors) + len(errors_path),
            "shards": list(previous.shards) + shards,
            "errors": ERRORS_FILE,
            "run": {
                "ok": counts["ok"],
                "failed": len(errors_path),
                "new_shards": [s["file"] for s in shards],
            },
            "duplicate_rows": counts["duplicates"],
            "complete": complete,
            "seconds": round(time.time() - start, 3),
            "config": dataclasses.asdict(config) if config is not None else None,
            "energy_rule": ENERGY_RULE,
            "versions": _versions(),
        }

    # First the settings: a run killed before its end is resumed with them.
    output.write_bytes(MANIFEST_FILE, json.dumps(manifest(False), indent=2).encode())
    done = set(previous.done_paths) - retry
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(tables: list[pa.Table]) -> None:
        table = pa.concat_tables(tables, promote_options="default")
        for column in NULLABLE_STRING_COLUMNS:
            if column in table.schema.names and table.schema.field(column).type != pa.string():
                # A batch without failures types its all-null column as null; every
                # shard has one schema, whatever batches its rows came in.
                index = table.schema.get_field_index(column)
                table = table.set_column(index, column, table.column(column).cast(pa.string()))
        name = f"{SHARDS_DIR}/{SHARD_PATTERN.format(first_index + len(shards))}"
        output.write_table(name, table)
        shards.append({"file": name, "rows": table.num_rows})

    batches = (
        () if ds is None else ds.iter_batches(batch_size=rows_per_shard, batch_format="pyarrow")
    )
    for batch in batches:
        errors = batch.column("error").to_pylist()
        good = np.zeros(batch.num_rows, dtype=bool)
        for i, (path, err) in enumerate(zip(batch.column("path").to_pylist(), errors)):
            if path in done:
                old = path in previous.done_paths and path not in retry
                counts["already" if old else "duplicates"] += 1
                continue
            done.add(path)
            if err:
                errors_path.append(path)
                errors_reason.append(err)
            else:
                good[i] = True
        if good.any():
            kept = batch if good.all() else batch.filter(pa.array(good))
            pending.append(kept)
            pending_rows += kept.num_rows
            counts["ok"] += kept.num_rows
        while pending_rows >= rows_per_shard:
            merged = pa.concat_tables(pending, promote_options="default")
            flush([merged.slice(0, rows_per_shard)])
            rest = merged.slice(rows_per_shard)
            pending = [rest] if rest.num_rows else []
            pending_rows = rest.num_rows
    if pending_rows:
        flush(pending)

    if errors_path or retry or not previous.has_errors_file:
        output.write_table(
            ERRORS_FILE,
            _errors_table(
                [p for p, _ in kept_errors] + errors_path,
                [r for _, r in kept_errors] + errors_reason,
            ),
        )
    final = manifest(True)
    output.write_bytes(MANIFEST_FILE, json.dumps(final, indent=2).encode())
    return final
