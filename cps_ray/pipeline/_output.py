"""An output's layout and what it holds: the folder or URI ``write_shards``
writes, every file named inside it, and a reader that never holds all of
its paths at once (see :func:`done_set`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .._kernels.reference import ENERGY_RULE, LEGACY_ENERGY_RULE
from ..errors import EnergyRuleError, OutputPathError
from ._lock import LOCK_FILE
from ._pathset import PathSet

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

    def write_tables(self, relative: str, schema: pa.Schema, tables,
                     rows_per_group: int = 2**16) -> None:  # fmt: skip
        """Write the ``tables`` (an iterable, read once) as one Parquet file in
        row groups of ``rows_per_group`` rows, never all in memory: the same
        rows give the same bytes however they were cut. See :meth:`write_bytes`."""

        def write(f) -> None:
            with pq.ParquetWriter(f, schema) as writer:
                pending: list[pa.Table] = []
                rows = 0
                for table in tables:
                    if table.num_rows:
                        pending.append(table.cast(schema))
                        rows += table.num_rows
                    while rows >= rows_per_group:
                        merged = pa.concat_tables(pending)
                        writer.write_table(merged.slice(0, rows_per_group))
                        rest = merged.slice(rows_per_group)
                        pending, rows = [rest], rest.num_rows
                if rows:
                    writer.write_table(pa.concat_tables(pending))
                elif not pending:  # no rows at all: one empty row group, as write_table
                    writer.write_table(schema.empty_table())

        self._write(relative, write)

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


@dataclass(frozen=True)
class WrittenOutput:
    """What an output folder already holds (empty when it does not exist).

    shards: ``{"file": "shards/shard-00000.parquet", "rows": n}`` in shard
        order (the counts come from the Parquet footers; the paths in the
        shards are not read: see :func:`iter_shard_paths` and :func:`done_set`).
    error_rows: rows of ``errors.parquet`` (from its footer; the rows
        themselves are read a row group at a time by :func:`iter_errors`).
    manifest: ``manifest.json`` parsed, or ``None``.
    temporaries: files a killed run left half written (``shards/NAME.tmp-...``);
        never part of the output, deleted by the next ``write_shards``.
    """

    shards: tuple[dict[str, Any], ...] = ()
    error_rows: int = 0
    manifest: dict[str, Any] | None = None
    has_errors_file: bool = False
    temporaries: tuple[str, ...] = ()

    @property
    def ok_rows(self) -> int:
        """Rows in the shards."""
        return sum(s["rows"] for s in self.shards)

    @property
    def next_shard_index(self) -> int:
        if not self.shards:
            return 0
        return 1 + max(_shard_index(s["file"]) for s in self.shards)

    @property
    def is_empty(self) -> bool:
        return not (self.shards or self.has_errors_file or self.manifest is not None)

    @property
    def is_settled(self) -> bool:
        """A finished run's output, all of it described: a complete manifest
        that lists every shard and counts every failure, an errors table, no
        half-written file. A run with nothing new leaves it as it is."""
        manifest = self.manifest
        return (
            manifest is not None
            and manifest.get("complete", True)
            and self.has_errors_file
            and not self.temporaries
            and manifest.get("shards") == list(self.shards)
            and manifest.get("failed") == self.error_rows
        )


def _shard_index(file: str) -> int:
    match = SHARD_NAME.fullmatch(file.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"not a shard file name: {file!r}")
    return int(match.group(1))


def read_output(out: str | os.PathLike | OutputRoot) -> WrittenOutput:
    """Read what ``out`` (a folder or URI written by :func:`write_shards`) holds.

    Only final shard names count: a temporary file of a killed run is ignored
    (and listed in ``temporaries``). Of each shard only its footer is read.

    Raises:
        OutputPathError: a file of the layout leads outside ``out`` (a symlink).
    """
    output = _output(out)
    if not output.root_exists():
        return WrittenOutput()
    shards: list[dict[str, Any]] = []
    temporaries = [n for n in output.files_in() if TEMPORARY_NAME.fullmatch(n)]
    if output.exists(SHARDS_DIR):
        listed = output.files_in(SHARDS_DIR)
        temporaries += [f"{SHARDS_DIR}/{n}" for n in listed if TEMPORARY_NAME.fullmatch(n)]
        names = sorted((n for n in listed if SHARD_NAME.fullmatch(n)), key=_shard_index)
        for name in names:
            with output.fs.open_input_file(output.path(f"{SHARDS_DIR}/{name}")) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            shards.append({"file": f"{SHARDS_DIR}/{name}", "rows": rows})
    has_errors_file = output.exists(ERRORS_FILE)
    error_rows = 0
    if has_errors_file:
        with output.fs.open_input_file(output.path(ERRORS_FILE)) as f:
            error_rows = pq.ParquetFile(f).metadata.num_rows
    return WrittenOutput(
        tuple(shards),
        error_rows,
        read_manifest(output),
        has_errors_file,
        tuple(temporaries),
    )


def read_manifest(out: str | os.PathLike | OutputRoot) -> dict[str, Any] | None:
    """The manifest ``out`` holds, or ``None`` (no output there yet, or not
    an output); nothing else of it is read."""
    output = _output(out)
    if not output.exists(MANIFEST_FILE):
        return None
    with output.fs.open_input_stream(output.path(MANIFEST_FILE)) as f:
        return json.loads(f.read().decode())


def iter_shard_paths(out: str | os.PathLike | OutputRoot,
                     written: WrittenOutput | None = None) -> Iterator[list[str]]:  # fmt: skip
    """The ``path`` column of each shard of ``out``, one shard at a time."""
    output = _output(out)
    written = read_output(output) if written is None else written
    for shard in written.shards:
        with output.fs.open_input_file(output.path(shard["file"])) as f:
            yield pq.read_table(f, columns=["path"]).column("path").to_pylist()


def done_set(out: str | os.PathLike | OutputRoot, written: WrittenOutput | None = None,
             exclude=frozenset()) -> PathSet:  # fmt: skip
    """The inputs ``out`` holds (shard rows and failures), as a :class:`PathSet`
    built one shard at a time; paths in ``exclude`` (failures to decode
    again) left out."""
    output = _output(out)
    written = read_output(output) if written is None else written
    done = PathSet()
    for paths in iter_shard_paths(output, written):
        done.update(paths)
    for table in iter_error_tables(output, written):
        done.update(p for p in table.column("path").to_pylist() if p not in exclude)
    return done


def iter_error_tables(out: str | os.PathLike | OutputRoot,
                      written: WrittenOutput | None = None) -> Iterator[pa.Table]:  # fmt: skip
    """``out``'s errors table (``path``, ``error``), a row group at a time,
    in order; nothing when it has none."""
    output = _output(out)
    written = read_output(output) if written is None else written
    if not written.has_errors_file:
        return
    with output.fs.open_input_file(output.path(ERRORS_FILE)) as f:
        errors = pq.ParquetFile(f)
        for group in range(errors.num_row_groups):
            yield errors.read_row_group(group, columns=["path", "error"])


def iter_errors(out: str | os.PathLike | OutputRoot,
                written: WrittenOutput | None = None) -> Iterator[tuple[str, str]]:  # fmt: skip
    """``(path, error)`` of each row of ``out``'s errors table, in order."""
    for table in iter_error_tables(out, written):
        yield from zip(table.column("path").to_pylist(), table.column("error").to_pylist())


def read_errors(out: str | os.PathLike | OutputRoot) -> list[tuple[str, str]]:
    """``(path, error)`` of every row of ``out``'s errors table, in order (all
    of it in memory: :func:`iter_errors` reads it a row group at a time)."""
    return list(iter_errors(out))
