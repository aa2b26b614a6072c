"""Outputs, in one module (``docs/jobs.md``): the folder or URI a run
writes (``shards/shard-<digest>.parquet``, ``errors.parquet``,
``manifest.json``, ``.lock``), who may write it (the lock), what it holds
(reading, resume screening: the :class:`Ledger`), and the write itself:
workers write the shards through a Ray Data ``Datasink`` and return small
records; the driver commits the errors table and the manifest. Every file
is written under a temporary name, moved into place, and named through
:meth:`OutputRoot.path`, which keeps it inside ``OUT``. What an output
holds is what its folder holds, so a run killed at any point and resumed
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
import re
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .._kernels.reference import ENERGY_RULE, ENERGY_RULES, LEGACY_ENERGY_RULE
from .._rows import NULLABLE_STRING_COLUMNS, ROW_COLUMNS, local_path, row_path
from ..errors import (
    TRANSIENT_KINDS,
    EnergyRuleError,
    JobError,
    OutputNotEmptyError,
    OutputPathError,
)

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
DEFAULT_ROWS_PER_SHARD = 64
# A run's failures held in memory before they go to a local spill file.
FAILURES_IN_MEMORY = 10_000
# Rows per row group of the errors table: what a reader holds at a time.
ERRORS_ROW_GROUP = 2**16
HEARTBEAT_S = 20.0
STALE_S = 120.0


def energy_rule(config) -> str:
    """The name of the rule ``config`` selects under (recorded in manifests)."""
    return ENERGY_RULES[getattr(config, "motion", "none")] if config is not None else ENERGY_RULE


def resize_policy() -> str:
    """The pixels' policy (see docs/decoding.md), recorded in manifests."""
    from .._decode.resize import RESIZE_POLICY

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
    """Hold ``output``'s lock (an :class:`~cps_ray.pipeline._shards.OutputRoot`)
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
