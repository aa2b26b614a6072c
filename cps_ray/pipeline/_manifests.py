"""Manifests read by Ray Data, streamed: the driver never holds the list.

A manifest (text with one path per line, CSV or Parquet with a ``path``
column; a local file or a URI) becomes a Ray Data read. The driver only
looks at the file's size (text, CSV) or its Parquet footer, and checks that
the ``path`` column exists; the entries are read by read tasks while the
pipeline runs:

- text: one read task per ``chunk_bytes`` of the file (1 MiB, some 20,000
  lines); a task keeps the lines that start in its byte range;
- CSV: one read task that streams the file (quoted fields may hold newlines,
  so it cannot be cut by bytes);
- Parquet: one read task per row group.

Each task's paths are cut into blocks of about ``videos_per_block`` paths,
so the decode actors share the work from the first block on. Read tasks ask for no CPU and run
one at a time: the decode pool holds the cluster's CPUs, and a read task
that waited for one would wait forever. Entries are resolved as
:func:`~cps_ray.pipeline._inputs.read_manifest` resolves them.

Only ``pyarrow`` and Ray Data are imported here: a read task's worker loads
neither torch nor the decoders.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from .._remote import redact
from ..errors import ConfigError
from ._inputs import is_uri, manifest_base, resolve_entry, transport_path
from ._listing import list_videos

DEFAULT_CHUNK_BYTES = 2**20
# For block sizing only (short, so that blocks err on the small side): a
# short manifest still gives every decode actor work.
ESTIMATED_LINE_BYTES = 32
_TAIL_BYTES = 2**16


def manifest_kind(path: str) -> str:
    lower = path.split("?", 1)[0].lower() if is_uri(path) else path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith(".csv"):
        return "csv"
    return "text"


def _open_fs(path: str) -> tuple[pafs.FileSystem, str]:
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (OSError, ValueError) as err:
        reason = f"The manifest cannot be opened ({err})."
        raise ConfigError("inputs", redact(path), reason) from None


def _entries_table(entries: list[str], base: str) -> pa.Table:
    paths = [transport_path(resolve_entry(e, base)) for e in entries]
    return pa.table({"path": pa.array(paths, pa.string())})


def _text_entries(lines: list[bytes]) -> list[str]:
    out = []
    for raw in lines:
        line = raw.decode("utf-8", "surrogateescape").strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def read_text_range(f, start: int, end: int, size: int) -> list[bytes]:
    """The lines of a text file that start in ``[start, end)``, whole."""
    low = max(start - 1, 0)
    data = f.read_at(end - low, low)
    if start > 0:
        # The byte before `start` says whether a line starts at `start`.
        newline = data.find(b"\n")
        if newline < 0:
            return []
        data = data[newline + 1 :]
    at = end
    while data and not data.endswith(b"\n") and at < size:
        more = f.read_at(min(_TAIL_BYTES, size - at), at)
        at += len(more)
        newline = more.find(b"\n")
        if newline >= 0:
            data += more[: newline + 1]
            break
        data += more
    return data.splitlines()


class ManifestSource(Datasource):
    """A manifest as a Ray Data datasource (see the module's docstring).

    Raises:
        ConfigError: the manifest does not exist, cannot be opened, or (CSV,
            Parquet) has no ``path`` column.
    """

    def __init__(self, path: str | os.PathLike, videos_per_block: int = 8,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):  # fmt: skip
        self.path = os.fspath(path)
        self.kind = manifest_kind(self.path)
        self.base = manifest_base(self.path)
        self.videos_per_block = videos_per_block
        self.chunk_bytes = chunk_bytes
        self.fs, self.inner = _open_fs(self.path)
        shown = redact(self.path)
        try:
            info = self.fs.get_file_info(self.inner)
        except OSError as err:
            raise ConfigError("inputs", shown, f"The manifest cannot be read ({err}).") from None
        if info.type != pafs.FileType.File:
            raise ConfigError("inputs", shown, "A manifest must be an existing file.")
        self.size = info.size or 0
        self.row_groups = 0
        self.rows = None
        self._counted: int | None = None
        try:
            columns = self._columns()
        except OSError as err:
            raise ConfigError("inputs", shown, f"The manifest cannot be read ({err}).") from None
        if columns is not None and "path" not in columns:
            kind = "A Parquet" if self.kind == "parquet" else "A CSV"
            reason = f"{kind} manifest needs a 'path' column; it has {columns}."
            raise ConfigError("inputs", shown, reason)

    def _columns(self) -> list[str] | None:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            with self.fs.open_input_file(self.inner) as f:
                meta = pq.ParquetFile(f).metadata
            self.row_groups, self.rows = meta.num_row_groups, meta.num_rows
            return list(meta.schema.names)
        if self.kind == "csv":
            with self.fs.open_input_file(self.inner) as f:
                head = f.read(min(self.size, _TAIL_BYTES)).decode("utf-8", "surrogateescape")
            return next(csv.reader(io.StringIO(head)), None) or []
        return None

    @property
    def read_tasks(self) -> int:
        if self.kind == "text":
            return max(1, -(-self.size // self.chunk_bytes))
        return 1 if self.kind == "csv" else max(1, self.row_groups)

    @property
    def estimated_rows(self) -> int:
        """Rows of a Parquet manifest; lines of a text or CSV one that fits in
        one chunk (counted: blocks sized to the real count); else a guess
        from its size."""
        if self.rows is not None:
            return self.rows
        if self.size <= self.chunk_bytes:
            if self._counted is None:
                with self.fs.open_input_file(self.inner) as f:
                    lines = _text_entries(f.read(self.size).splitlines())
                self._counted = max(1, len(lines) - (self.kind == "csv"))
            return self._counted
        return max(1, self.size // ESTIMATED_LINE_BYTES)

    # --- the Datasource interface ---------------------------------------------------

    def get_name(self) -> str:
        return "ReadManifest"

    def estimate_inmemory_data_size(self) -> int:
        return self.size

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        if self.kind == "text":
            ranges = [(s, min(s + self.chunk_bytes, self.size))
                      for s in range(0, self.size, self.chunk_bytes)]  # fmt: skip
            reads = [lambda s=s, e=e: self._read_text(s, e) for s, e in ranges]
        elif self.kind == "csv":
            reads = [self._read_csv] if self.size else []
        else:
            reads = [lambda g=g: self._read_parquet(g) for g in range(self.row_groups)]
        tasks = []
        for read in reads:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None,
                                 exec_stats=None)  # fmt: skip
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks

    # --- read tasks -----------------------------------------------------------------

    def _table(self, entries: list[str]) -> pa.Table:
        return _entries_table(entries, self.base)

    def _blocks(self, entries: list[str]) -> Iterator[pa.Table]:
        step = self.videos_per_block
        for i in range(0, len(entries), step):
            yield self._table(entries[i : i + step])

    def _read_text(self, start: int, end: int) -> Iterator[pa.Table]:
        with self.fs.open_input_file(self.inner) as f:
            lines = read_text_range(f, start, end, self.size)
        yield from self._blocks(_text_entries(lines))

    def _read_csv(self) -> Iterator[pa.Table]:
        with self.fs.open_input_stream(self.inner) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
            batch: list[str] = []
            for row in csv.DictReader(text):
                if row.get("path"):
                    batch.append(row["path"])
                if len(batch) == self.videos_per_block:
                    yield self._table(batch)
                    batch = []
            if batch:
                yield self._table(batch)

    def _read_parquet(self, group: int) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        with self.fs.open_input_file(self.inner) as f:
            batches = pq.ParquetFile(f).iter_batches(
                batch_size=self.videos_per_block, row_groups=[group], columns=["path"]
            )
            for batch in batches:
                entries = [str(p) for p in batch.column(0).to_pylist() if p]
                if entries:
                    yield self._table(entries)


# --- folders and URI prefixes (see cps_ray.pipeline._listing) ----------------------------

LISTING_ROWS_PER_TASK = 2**16


def _list_task(spec: str) -> tuple[tuple[int, str | None], object]:
    """(Ray task, two returns) List ``spec``: ``((count, None), table)``, or
    ``((0, reason), None)``. The table (column ``path``) stays in the object
    store; the driver only ever gets the count."""
    import pyarrow as pa

    try:
        paths = list_videos(spec)
    except ConfigError as err:
        return (0, err.allowed), None
    column = pa.array([transport_path(p) for p in paths], pa.string())
    return (len(paths), None), pa.table({"path": column})


class ListingSource(Datasource):
    """A listing in the object store as a Ray Data datasource: one read task
    per :data:`LISTING_ROWS_PER_TASK` paths, each taking its slice of the
    table (zero-copy on the node that holds it)."""

    def __init__(self, spec: str, table_ref, count: int, videos_per_block: int = 8):
        self.spec = spec
        self.table_ref = table_ref  # freed with this source (the dataset's)
        self.count = count
        self.estimated_rows = count
        self.videos_per_block = videos_per_block

    @property
    def read_tasks(self) -> int:
        return max(1, -(-self.count // LISTING_ROWS_PER_TASK))

    def get_name(self) -> str:
        return "ListFolder"

    def estimate_inmemory_data_size(self) -> int:
        return 64 * self.count

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        tasks = []
        for start in range(0, self.count, LISTING_ROWS_PER_TASK):
            rows = min(LISTING_ROWS_PER_TASK, self.count - start)
            meta = BlockMetadata(num_rows=rows, size_bytes=None, input_files=None,
                                 exec_stats=None)  # fmt: skip
            read = functools.partial(_read_slice, self.table_ref, start, rows,
                                     self.videos_per_block)  # fmt: skip
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def _read_slice(table_ref, start: int, rows: int, step: int):
    import ray

    table = ray.get(table_ref).slice(start, rows)
    for at in range(0, rows, step):
        yield table.slice(at, step)


def list_on_cluster(spec: str | os.PathLike, runtime_env: dict | None = None) -> ListingSource:
    """List ``spec`` in a Ray task (see the module).

    Raises:
        ConfigError: ``spec`` cannot be listed, or holds no video file.
    """
    import ray

    spec = os.fspath(spec)
    options: dict = {"num_cpus": 0, "num_returns": 2}
    if runtime_env:
        options["runtime_env"] = runtime_env
    head, table_ref = ray.remote(_list_task).options(**options).remote(spec)
    count, reason = ray.get(head)
    if reason is not None or count == 0:
        raise ConfigError("inputs", redact(spec), reason or "There are no video files under it.")
    return ListingSource(spec, table_ref, count)


def read_manifest_dataset(source: ManifestSource | ListingSource, runtime_env: dict | None = None):
    """The Ray dataset of ``source``'s paths (column ``path``), streamed;
    ``runtime_env`` for its read tasks (a store's credentials, as the stages
    get them)."""
    import ray.data

    # Ray Data merges what a read task yields into one block, then cuts each
    # task's block into override_num_blocks / tasks pieces: asking for a block
    # per videos_per_block rows gives the decode actors work from the first
    # blocks on, and spreads a chunk of the manifest over all of them.
    blocks = max(source.read_tasks, -(-source.estimated_rows // source.videos_per_block))
    one_at_a_time = ray.data.TaskPoolStrategy(size=1)
    extra = {"runtime_env": runtime_env} if runtime_env else {}
    return ray.data.read_datasource(
        source, num_cpus=0, compute=one_at_a_time, override_num_blocks=blocks, **extra
    )
