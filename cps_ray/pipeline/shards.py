"""``write_shards``: a patch dataset to Parquet shards, a manifest and an
errors table, in a local folder or any URI pyarrow's filesystems accept.

Layout under ``out``::

    shards/shard-00000.parquet ...   good rows, in input order, rows_per_shard each
    errors.parquet                   path, error of every failed video
    manifest.json                    counts, shard list, config, versions

Shard names are deterministic (input order is preserved by ``patch_dataset``),
and each file is written under a temporary name and then moved into place, so
a killed run never leaves a half shard under a final name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SHARD_PATTERN = "shard-{:05d}.parquet"


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


def write_shards(ds, out: str, *, rows_per_shard: int = 64, config=None) -> dict[str, Any]:
    """Write ``ds`` (a :func:`patch_dataset`) under ``out``; returns the manifest.

    Every input ends in a shard row or in ``errors.parquet``.
    """
    fs, root = _filesystem(out)
    fs.create_dir(f"{root}/shards", recursive=True)
    shards: list[dict[str, Any]] = []
    errors_path: list[str] = []
    errors_reason: list[str] = []
    ok = 0
    start = time.time()
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(tables: list[pa.Table]) -> None:
        table = pa.concat_tables(tables, promote_options="default")
        name = SHARD_PATTERN.format(len(shards))
        _write_table(fs, f"{root}/shards/{name}", table)
        shards.append({"file": f"shards/{name}", "rows": table.num_rows})

    for batch in ds.iter_batches(batch_size=rows_per_shard, batch_format="pyarrow"):
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

    _write_table(
        fs,
        f"{root}/errors.parquet",
        pa.table(
            {
                "path": pa.array(errors_path, pa.string()),
                "error": pa.array(errors_reason, pa.string()),
            }
        ),
    )
    manifest = {
        "inputs": ok + len(errors_path),
        "ok": ok,
        "failed": len(errors_path),
        "shards": shards,
        "errors": "errors.parquet",
        "seconds": round(time.time() - start, 3),
        "config": dataclasses.asdict(config) if config is not None else None,
        "versions": _versions(),
    }
    _write_bytes(fs, f"{root}/manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest
