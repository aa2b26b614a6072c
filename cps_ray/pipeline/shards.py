"""``write_shards``: a patch dataset to Parquet shards, a manifest and an
errors table, in a local folder or any URI pyarrow's filesystems accept.

Layout under ``out``::

    shards/shard-00000.parquet ...   good rows, in input order, rows_per_shard each
    errors.parquet                   path, error of every failed video
    manifest.json                    counts, shard list, config, versions

Shard names are deterministic (input order is preserved by ``patch_dataset``),
and each file is written under a temporary name and then moved into place, so
a killed run never leaves a half shard under a final name.

Resuming (``resume=True``): :func:`read_output` says what an output already
holds (the paths in its shards and in its errors table); the caller leaves
those inputs out, and ``write_shards`` numbers new shards after the existing
ones, never rewrites an existing shard, adds new failures to the errors table
(rewritten only when there are new ones) and rewrites the manifest with the
totals. The output of a run that was killed before its manifest was written
resumes the same way: the shard files themselves are the record.
"""

from __future__ import annotations

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

SHARD_PATTERN = "shard-{:05d}.parquet"
SHARD_NAME = re.compile(r"shard-(\d{5,})\.parquet")
ERRORS_FILE = "errors.parquet"
MANIFEST_FILE = "manifest.json"


def _filesystem(out: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in out:
        out = os.path.abspath(out)
    fs, root = pafs.FileSystem.from_uri(out if "://" in out else out)
    return fs, root.rstrip("/")


def _write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        pq.write_table(table, f)
    fs.move(tmp, path)


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


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
    """

    shards: tuple[dict[str, Any], ...] = ()
    shard_paths: tuple[str, ...] = ()
    error_paths: tuple[str, ...] = ()
    error_reasons: tuple[str, ...] = ()
    manifest: dict[str, Any] | None = None
    has_errors_file: bool = False

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


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_output(out: str) -> WrittenOutput:
    """Read what ``out`` (a folder or URI written by :func:`write_shards`) holds.

    Only final shard names count: a temporary file of a killed run is ignored.
    """
    fs, root = _filesystem(out)
    if not _exists(fs, root):
        return WrittenOutput()
    shards: list[dict[str, Any]] = []
    shard_paths: list[str] = []
    if _exists(fs, f"{root}/shards"):
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/shards"))
        names = sorted(
            (info.base_name for info in infos if SHARD_NAME.fullmatch(info.base_name)),
            key=_shard_index,
        )
        for name in names:
            with fs.open_input_file(f"{root}/shards/{name}") as f:
                table = pq.read_table(f, columns=["path"])
            shards.append({"file": f"shards/{name}", "rows": table.num_rows})
            shard_paths.extend(table.column("path").to_pylist())
    has_errors_file = _exists(fs, f"{root}/{ERRORS_FILE}")
    errors = read_errors(out) if has_errors_file else []
    error_paths = [path for path, _ in errors]
    error_reasons = [reason for _, reason in errors]
    manifest = None
    if _exists(fs, f"{root}/{MANIFEST_FILE}"):
        with fs.open_input_stream(f"{root}/{MANIFEST_FILE}") as f:
            manifest = json.loads(f.read().decode())
    return WrittenOutput(
        tuple(shards),
        tuple(shard_paths),
        tuple(error_paths),
        tuple(error_reasons),
        manifest,
        has_errors_file,
    )


def read_errors(out: str) -> list[tuple[str, str]]:
    """``(path, error)`` of every row of ``out``'s errors table, in order."""
    fs, root = _filesystem(out)
    with fs.open_input_file(f"{root}/{ERRORS_FILE}") as f:
        errors = pq.read_table(f)
    return list(zip(errors.column("path").to_pylist(), errors.column("error").to_pylist()))


def _errors_table(paths: list[str], reasons: list[str]) -> pa.Table:
    return pa.table({"path": pa.array(paths, pa.string()), "error": pa.array(reasons, pa.string())})


def write_shards(
    ds,
    out: str,
    *,
    rows_per_shard: int = 64,
    config=None,
    resume: bool = False,
    skipped: int = 0,
) -> dict[str, Any]:
    """Write ``ds`` (a :func:`patch_dataset`) under ``out``; returns the manifest.

    Every input ends in a shard row or in ``errors.parquet``.

    Args:
        ds: the dataset, or ``None`` when there is nothing new to write
            (every input was skipped).
        rows_per_shard: good rows per shard (the last one may be short).
        config: the :class:`PatchStreamConfig`, recorded in the manifest.
        resume: add to what ``out`` holds (see :func:`read_output`): new
            shards after the existing ones, new failures after the old ones.
            Without it, ``out`` is written as if it were empty.
        skipped: inputs the caller left out because ``out`` already had them;
            recorded in the manifest.

    The manifest: ``inputs`` (this run's inputs: ``skipped`` plus the rows of
    ``ds``), ``skipped``, ``ok`` and ``failed`` (videos in the shards and in
    the errors table, all runs), ``shards`` (all of them), ``errors``,
    ``run`` (this run: ``ok``, ``failed``, ``new_shards``), ``seconds``,
    ``config``, ``versions``.
    """
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int):
        raise TypeError(f"rows_per_shard must be an int >= 1, got {rows_per_shard!r}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be an int >= 1, got {rows_per_shard}")
    fs, root = _filesystem(out)
    previous = read_output(out) if resume else WrittenOutput()
    fs.create_dir(f"{root}/shards", recursive=True)
    first_index = previous.next_shard_index
    shards: list[dict[str, Any]] = []
    errors_path: list[str] = []
    errors_reason: list[str] = []
    ok = 0
    start = time.time()
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(tables: list[pa.Table]) -> None:
        table = pa.concat_tables(tables, promote_options="default")
        name = SHARD_PATTERN.format(first_index + len(shards))
        _write_table(fs, f"{root}/shards/{name}", table)
        shards.append({"file": f"shards/{name}", "rows": table.num_rows})

    batches = (
        () if ds is None else ds.iter_batches(batch_size=rows_per_shard, batch_format="pyarrow")
    )
    for batch in batches:
        errors = batch.column("error").to_pylist()
        bad = np.array([bool(e) for e in errors])
        for path, err in zip(batch.column("path").to_pylist(), errors):
            if err:
                errors_path.append(path)
                errors_reason.append(err)
        good = batch.filter(pa.array(~bad)) if bad.any() else batch
        if good.num_rows:
            pending.append(good)
            pending_rows += good.num_rows
            ok += good.num_rows
        while pending_rows >= rows_per_shard:
            merged = pa.concat_tables(pending, promote_options="default")
            flush([merged.slice(0, rows_per_shard)])
            rest = merged.slice(rows_per_shard)
            pending = [rest] if rest.num_rows else []
            pending_rows = rest.num_rows
    if pending_rows:
        flush(pending)

    all_error_paths = list(previous.error_paths) + errors_path
    all_error_reasons = list(previous.error_reasons) + errors_reason
    if errors_path or not previous.has_errors_file:
        _write_table(fs, f"{root}/{ERRORS_FILE}", _errors_table(all_error_paths, all_error_reasons))
    manifest = {
        "inputs": skipped + ok + len(errors_path),
        "skipped": skipped,
        "ok": len(previous.shard_paths) + ok,
        "failed": len(all_error_paths),
        "shards": list(previous.shards) + shards,
        "errors": ERRORS_FILE,
        "run": {
            "ok": ok,
            "failed": len(errors_path),
            "new_shards": [s["file"] for s in shards],
        },
        "seconds": round(time.time() - start, 3),
        "config": dataclasses.asdict(config) if config is not None else None,
        "versions": _versions(),
    }
    _write_bytes(fs, f"{root}/{MANIFEST_FILE}", json.dumps(manifest, indent=2).encode())
    return manifest
