"""An output folder's format, without Ray (``docs/jobs.md``): its files
(``shards/shard-<digest>.parquet``, ``errors.parquet``, ``manifest.json``,
``.lock``), the lock that lets one run write it, and what it holds (read a
footer at a time; the paths as a :class:`PathSet` of digests). Every file
is written under a temporary name, moved into place, and named through
:meth:`OutputRoot.path`, which keeps it inside ``OUT``. The write itself
(a Ray Data ``Datasink``) is the pipeline's, built on this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ._kernels.reference import ENERGY_RULE, ENERGY_RULES, LEGACY_ENERGY_RULE
from ._rows import ROW_COLUMNS
from .errors import TRANSIENT_KINDS, EnergyRuleError, JobError, OutputPathError

SHARDS_DIR = "shards"
SHARD_NAME = re.compile(r"shard-(?:[0-9a-f]{16}|\d{5,})\.parquet")
ERRORS_FILE = "errors.parquet"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
# NAME.tmp-XXXXXXXX: a file being written, or left by a killed run.
TEMPORARY_NAME = re.compile(
    rf"(?:shard-[0-9a-f]+\.parquet|{re.escape(ERRORS_FILE)}|{re.escape(MANIFEST_FILE)}"
    rf"|{re.escape(LOCK_FILE)})\.tmp-[0-9a-f]{{8}}"
)
ERRORS_SCHEMA = pa.schema([("path", pa.string()), ("error", pa.string()),
                           ("error_kind", pa.string())])  # fmt: skip
HEARTBEAT_S = 20.0
STALE_S = 120.0


def energy_rule(config) -> str:
    """The name of the rule ``config`` selects under (recorded in manifests)."""
    return ENERGY_RULES[getattr(config, "motion", "none")] if config is not None else ENERGY_RULE


def resize_policy() -> str:
    """The pixels' policy (see docs/decoding.md), recorded in manifests."""
    from ._decode.resize import RESIZE_POLICY

    return RESIZE_POLICY


def check_resumable(manifest: dict[str, Any] | None, where: str, rule: str) -> None:
    """Refuse to add rows to an output whose rows were selected by another
    energy rule (their scores and patches would mix), whose frames were
    resized by another policy, or that holds other columns."""
    if manifest is None:
        return
    written = manifest.get("energy_rule", LEGACY_ENERGY_RULE)
    if written != rule:
        raise EnergyRuleError(
            f"output {where!r} was written under the energy rule {written!r}, and this "
            f"run selects under {rule!r}; its rows cannot be resumed into. "
            "Write to a new output (or delete this one)"
        )
    policy = manifest.get("resize_policy")
    if policy is not None and policy != resize_policy():
        raise EnergyRuleError(
            f"output {where!r} holds frames resized under {policy!r}, and this cps_ray "
            f"resizes under {resize_policy()!r}; its rows cannot be resumed into. "
            "Write to a new output"
        )
    columns = manifest.get("columns")
    if columns is not None and list(columns) != list(ROW_COLUMNS) or columns is None and (
        manifest.get("shards") or manifest.get("failed")
    ):  # fmt: skip
        raise EnergyRuleError(
            f"output {where!r} was written by another cps_ray with other row columns; "
            "its rows cannot be resumed into. Write to a new output"
        )


# --- the output folder -------------------------------------------------------------------


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


def _output(out) -> OutputRoot:
    return out if isinstance(out, OutputRoot) else OutputRoot(out)


# --- one run at a time: OUT/.lock -------------------------------------------------------
# A run writes the lock (host, process, a random token, the time) before it
# reads or writes anything else, refreshes it from a thread and deletes it at
# its end. A live lock refuses a second run; a lock whose holder is gone (a
# dead process on this host, or no heartbeat for STALE_S) is taken over.
# Object stores have no create-if-absent: each run reads its lock back and
# only the run whose token is there goes on.


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(output) -> dict | None:
    if not output.exists(LOCK_FILE):
        return None
    try:
        with output.fs.open_input_stream(output.path(LOCK_FILE)) as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):
        return None  # half written, or deleted meanwhile


def _holder_is_gone(lock: dict) -> bool:
    if time.time() - float(lock.get("refreshed", 0)) > STALE_S:
        return True
    return lock.get("host") == socket.gethostname() and not _alive(int(lock.get("pid", -1)))


@contextmanager
def output_lock(output):
    """Hold ``output``'s lock (an :class:`OutputRoot`)
    for the block. Raises :class:`JobError` when another live run holds it."""
    held = _HELD.get(output.given)
    if held is not None:  # this process already holds it (run_preprocess -> write_shards)
        yield
        return
    current = _read(output)
    if current is not None and not _holder_is_gone(current):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(current["started"])))
        raise JobError(
            f"output {output.given!r} is being written by another run (host "
            f"{current.get('host')}, pid {current.get('pid')}, since {since}); wait for it "
            f"to end. A killed run's lock expires {STALE_S:g} s after its last heartbeat."
        )
    token = uuid.uuid4().hex
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
            "started": time.time(), "refreshed": time.time()}  # fmt: skip
    output.fs.create_dir(output.root or "/", recursive=True)
    output.write_bytes(LOCK_FILE, json.dumps(lock).encode())
    back = _read(output)
    if back is None or back.get("token") != token:
        raise JobError(f"output {output.given!r}: another run took its lock at the same time")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            lock["refreshed"] = time.time()
            try:
                output.write_bytes(LOCK_FILE, json.dumps(lock).encode())
            except OSError:
                pass  # the next beat tries again; the run itself reports write failures

    beat = threading.Thread(target=heartbeat, name="cps_ray-output-lock", daemon=True)
    beat.start()
    _HELD[output.given] = token
    try:
        yield
    finally:
        _HELD.pop(output.given, None)
        stop.set()
        beat.join(timeout=5)
        current = _read(output)
        if current is not None and current.get("token") == token:
            try:
                output.delete(LOCK_FILE)
            except OSError:
                pass


_HELD: dict[str, str] = {}


# --- what an output holds -----------------------------------------------------------------


@dataclass(frozen=True)
class WrittenOutput:
    """What an output folder holds (empty when it does not exist).

    shards: ``{"file": "shards/shard-....parquet", "rows": n}``: the manifest's
        shards first, in its order, then shards of a killed run it does not
        list (row counts from the footers; the paths are read by
        :func:`iter_shard_paths`).
    error_rows: rows of ``errors.parquet`` (from its footer).
    manifest: ``manifest.json`` parsed, or ``None``.
    temporaries: files a killed run left half written; never part of the output.
    """

    shards: tuple[dict[str, Any], ...] = ()
    error_rows: int = 0
    manifest: dict[str, Any] | None = None
    has_errors_file: bool = False
    temporaries: tuple[str, ...] = ()

    @property
    def ok_rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    @property
    def is_empty(self) -> bool:
        return not (self.shards or self.has_errors_file or self.manifest is not None)

    @property
    def is_settled(self) -> bool:
        """A finished run's output, all of it described: a complete manifest
        listing every shard and counting every failure, an errors table, no
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


def read_output(out) -> WrittenOutput:
    """Read what ``out`` holds: only final shard names count (temporaries are
    listed apart); of each shard only its footer is read."""
    output = _output(out)
    if not output.root_exists():
        return WrittenOutput()
    temporaries = [n for n in output.files_in() if TEMPORARY_NAME.fullmatch(n)]
    manifest = read_manifest(output)
    found: dict[str, int] = {}
    if output.exists(SHARDS_DIR):
        for name in output.files_in(SHARDS_DIR):
            if TEMPORARY_NAME.fullmatch(name):
                temporaries.append(f"{SHARDS_DIR}/{name}")
            elif SHARD_NAME.fullmatch(name):
                with output.fs.open_input_file(output.path(f"{SHARDS_DIR}/{name}")) as f:
                    found[f"{SHARDS_DIR}/{name}"] = pq.ParquetFile(f).metadata.num_rows
    listed = [s["file"] for s in (manifest or {}).get("shards", []) if s["file"] in found]
    order = listed + sorted(set(found) - set(listed))
    has_errors_file = output.exists(ERRORS_FILE)
    error_rows = 0
    if has_errors_file:
        with output.fs.open_input_file(output.path(ERRORS_FILE)) as f:
            error_rows = pq.ParquetFile(f).metadata.num_rows
    shards = tuple({"file": name, "rows": found[name]} for name in order)
    return WrittenOutput(shards, error_rows, manifest, has_errors_file, tuple(temporaries))


def read_manifest(out) -> dict[str, Any] | None:
    """The manifest ``out`` holds, or ``None``; nothing else of it is read."""
    output = _output(out)
    if not output.exists(MANIFEST_FILE):
        return None
    with output.fs.open_input_stream(output.path(MANIFEST_FILE)) as f:
        return json.loads(f.read().decode())


def iter_shard_paths(out, written: WrittenOutput | None = None) -> Iterator[list[str]]:
    """The ``path`` column of each shard of ``out``, one shard at a time."""
    output = _output(out)
    written = read_output(output) if written is None else written
    for shard in written.shards:
        with output.fs.open_input_file(output.path(shard["file"])) as f:
            yield pq.read_table(f, columns=["path"]).column("path").to_pylist()


def iter_error_tables(out, written: WrittenOutput | None = None) -> Iterator[pa.Table]:
    """``out``'s errors table, a row group at a time, in order."""
    output = _output(out)
    written = read_output(output) if written is None else written
    if not written.has_errors_file:
        return
    with output.fs.open_input_file(output.path(ERRORS_FILE)) as f:
        errors = pq.ParquetFile(f)
        for group in range(errors.num_row_groups):
            table = errors.read_row_group(group)
            if "error_kind" not in table.schema.names:  # written before kinds existed
                table = table.append_column("error_kind", pa.nulls(table.num_rows, pa.string()))
            yield table.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA)


def iter_errors(out, written: WrittenOutput | None = None) -> Iterator[tuple[str, str, str]]:
    """``(path, error, error_kind)`` of each row of ``out``'s errors table."""
    for table in iter_error_tables(out, written):
        yield from zip(*(table.column(c).to_pylist() for c in ERRORS_SCHEMA.names))


def read_errors(out) -> list[tuple[str, str, str]]:
    """Every row of ``out``'s errors table, in order (all of it in memory)."""
    return list(iter_errors(out))


def done_set(out, written: WrittenOutput | None = None, exclude=frozenset()) -> PathSet:
    """The inputs ``out`` holds (shard rows and failures) as a :class:`PathSet`,
    built a shard at a time; paths in ``exclude`` (failures to decode again)
    left out."""
    output = _output(out)
    written = read_output(output) if written is None else written
    done = PathSet()
    for paths in iter_shard_paths(output, written):
        done.update(paths)
    for table in iter_error_tables(output, written):
        done.update(p for p in table.column("path").to_pylist() if p not in exclude)
    return done


def failures_to_retry(out, kinds: Iterable[str] = TRANSIENT_KINDS,
                      written: WrittenOutput | None = None) -> frozenset[str]:  # fmt: skip
    """Paths of ``out``'s errors table whose kind is one of ``kinds``."""
    kinds = frozenset(kinds)
    return frozenset(path for path, _, kind in iter_errors(out, written) if kind in kinds)


# --- a set of paths as 16-byte digests ----------------------------------------------------
# A million paths take 16 MB, in one sorted NumPy array plus a set of the
# latest additions merged into it when it grows past an eighth of it.


DIGEST_BYTES = 16
_MIN_MERGE = 4096


def path_digest(path: str) -> bytes:
    return hashlib.blake2b(
        path.encode("utf-8", "surrogateescape"), digest_size=DIGEST_BYTES
    ).digest()


class PathSet:
    """Membership of paths by digest; ``add_new`` and ``contains`` take
    batches (a block of rows), in order."""

    def __init__(self, paths: Iterable[str] = ()):
        self._sorted = np.empty(0, dtype=f"S{DIGEST_BYTES}")
        self._recent: set[bytes] = set()
        self.update(paths)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def update(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._recent.add(path_digest(path))
            if len(self._recent) > max(_MIN_MERGE, len(self._sorted) // 8):
                self._merge()

    def _merge(self) -> None:
        recent = np.array(sorted(self._recent), dtype=self._sorted.dtype)
        self._sorted = np.union1d(self._sorted, recent)
        self._recent = set()

    def _in_sorted(self, digests: list[bytes]) -> np.ndarray:
        if not len(self._sorted) or not digests:
            return np.zeros(len(digests), dtype=bool)
        wanted = np.array(digests, dtype=self._sorted.dtype)
        at = np.searchsorted(self._sorted, wanted)
        at[at == len(self._sorted)] = 0
        return self._sorted[at] == wanted

    def contains(self, paths: list[str]) -> list[bool]:
        """Which of ``paths`` are in the set."""
        digests = [path_digest(p) for p in paths]
        in_sorted = self._in_sorted(digests)
        return [bool(s) or d in self._recent for d, s in zip(digests, in_sorted)]

    def __contains__(self, path: str) -> bool:
        return self.contains([path])[0]

    def add_new(self, paths: list[str]) -> list[bool]:
        """Add ``paths`` in order; True for each one that was not in the set
        yet (a path twice in ``paths`` is new only the first time)."""
        digests = [path_digest(p) for p in paths]
        in_sorted = self._in_sorted(digests)
        new = []
        for digest, seen in zip(digests, in_sorted):
            fresh = not seen and digest not in self._recent
            if fresh:
                self._recent.add(digest)
            new.append(fresh)
        if len(self._recent) > max(_MIN_MERGE, len(self._sorted) // 8):
            self._merge()
        return new
