"""Inputs, in one place (``docs/pipeline.md``): a list of paths, a
``ray.data.Dataset`` with a ``path`` column, or one string (a manifest, a
folder or URI prefix, a glob, one video), classified once by
:func:`input_spec`, becomes paths in memory (:func:`input_paths`) or a Ray
dataset of paths (:func:`input_dataset`). Manifests are read in chunks by
one parser (:class:`Manifest`); in a Ray pipeline each chunk is a read task
without a CPU, so the driver never holds a manifest of any size. Paths are
data: never passed through a shell, never read by FFmpeg as a protocol.
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .._remote import redact
from .._rows import transport_path
from ..errors import ConfigError

MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".csv", ".parquet", ".pq")
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# What FFmpeg's url_find_protocol reads as "PROTOCOL:rest" (file:, pipe:,
# concat:, subfile,,...:), instead of the name of a local file.
FFMPEG_PROTOCOL_PREFIX = re.compile(r"[A-Za-z0-9+.-]*:|subfile,.*:", re.DOTALL)
GLOB_CHARACTERS = "*?["
DEFAULT_CHUNK_BYTES = 2**20
# For block sizing only (short, so blocks err on the small side).
ESTIMATED_LINE_BYTES = 32
LISTING_ROWS_PER_TASK = 2**16
_TAIL_BYTES = 2**16


# --- paths -----------------------------------------------------------------------------


def is_uri(path: str) -> bool:
    """``scheme://...`` (``s3://``, ``gs://``, ``https://``): kept as given."""
    return URI.match(str(path)) is not None


def local_name(path: str) -> str:
    """``path``, with ``./`` in front when it is a relative name FFmpeg would
    take for a protocol (``pipe:0`` is stdin, ``concat:a|b`` two files)."""
    if is_uri(path) or os.path.isabs(path) or not FFMPEG_PROTOCOL_PREFIX.match(path):
        return path
    return os.path.join(".", path)


def tidy(path: str) -> str:
    """A local path without ``.`` components and repeated separators. ``..``
    is kept: past a symbolic link it does not mean the folder above."""
    if is_uri(path) or not path:
        return path
    head = os.sep if path.startswith(os.sep) else ""
    parts = [p for p in path.split(os.sep) if p not in ("", ".")]
    return head + os.sep.join(parts) if parts else (head or ".")


def is_manifest(path) -> bool:
    """A manifest's name; a URI's options (``?endpoint_override=...``) are not part of it."""
    path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if is_uri(path):
        path = path.split("?", 1)[0]
    return path.lower().endswith(MANIFEST_SUFFIXES)


# --- specs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What an input names. kind: ``paths`` (``value`` a list: a list, a
    glob's matches, one file), ``manifest`` or ``folder`` (``value`` the
    string), or ``dataset`` (``value`` a ``ray.data.Dataset``)."""

    kind: str
    value: Any


def input_spec(inputs) -> InputSpec:
    """Classify ``inputs`` (see the module docstring), the one dispatch.

    Raises:
        ConfigError: a spec that names nothing.
    """
    if isinstance(inputs, (str, os.PathLike)):
        spec = os.fspath(inputs)
        if is_manifest(spec):
            return InputSpec("manifest", spec)
        if is_uri(spec) or os.path.isdir(spec):
            return InputSpec("folder", spec)
        if os.path.isfile(spec):
            return InputSpec("paths", [os.path.abspath(spec)])
        if any(ch in spec for ch in GLOB_CHARACTERS):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ConfigError("inputs", spec, "No files match it.")
            return InputSpec("paths", [os.path.abspath(p) for p in matches])
        raise ConfigError(
            "inputs", spec,
            "It does not exist; pass a list of video paths, a folder, a glob, a video file or a "
            "manifest ending in " + ", ".join(MANIFEST_SUFFIXES) + ".",
        )  # fmt: skip
    data = sys.modules.get("ray.data")  # a Dataset exists only once ray.data is imported
    if data is not None and isinstance(inputs, data.Dataset):
        return InputSpec("dataset", inputs)
    if isinstance(inputs, Iterable):
        paths = []
        for item in inputs:
            if not isinstance(item, (str, os.PathLike)):
                raise ConfigError("inputs", item, "Each input must be a path (str or PathLike).")
            paths.append(local_name(tidy(os.fspath(item))))
        return InputSpec("paths", paths)
    raise ConfigError("inputs", inputs, "Pass a list of video paths, a folder or a manifest.")


def input_paths(inputs) -> list[str]:
    """The videos ``inputs`` names, in order, in memory (``local_stream``,
    the CLI, a job's glob). Raises :class:`ConfigError` for a spec that names
    nothing or no video."""
    spec = input_spec(inputs)
    if spec.kind == "paths":
        return list(spec.value)
    if spec.kind == "manifest":
        manifest = Manifest(spec.value)
        return [p for chunk in manifest.chunks() for p in manifest.read(chunk)]
    if spec.kind == "folder":
        paths = list_videos(spec.value)
        if not paths:
            raise ConfigError("inputs", redact(spec.value), "There are no video files under it.")
        return paths
    return dataset_paths(spec.value)


def dataset_paths(dataset) -> list[str]:
    """The ``path`` column of a Ray dataset (read first: its own stages may
    need the CPUs the pools are about to take)."""
    names = dataset.schema().names
    if "path" not in names:
        raise ConfigError("inputs", f"Dataset with columns {names}", "It needs a 'path' column.")
    return [str(row["path"]) for row in dataset.select_columns(["path"]).iter_rows()]


# --- folders and URI prefixes ----------------------------------------------------------


def list_videos(spec: str) -> list[str]:
    """The video files under a folder (absolute paths) or a URI prefix (URIs,
    their ``?options`` kept), sorted; a URI naming one object is itself.

    Raises:
        ConfigError: ``spec`` cannot be listed.
    """
    from .._media import VIDEO_EXTENSIONS, VideoFolderError, find_videos

    if not is_uri(spec):
        try:
            return [os.path.abspath(p) for p in find_videos(spec)]
        except VideoFolderError as err:
            raise ConfigError("inputs", spec, str(err)) from None
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(spec)
        if fs.get_file_info(inner).type == pafs.FileType.File:
            return [spec]
        selector = pafs.FileSelector(inner.rstrip("/"), recursive=True, allow_not_found=True)
        found = fs.get_file_info(selector)
    except (OSError, ValueError) as err:
        raise ConfigError("inputs", redact(spec), f"The URI cannot be listed ({err}).") from None
    query = "?" + spec.split("?", 1)[1] if "?" in spec else ""
    prefix, head = inner.rstrip("/"), spec.split("?", 1)[0].rstrip("/")
    return sorted(
        head + info.path[len(prefix) :] + query
        for info in found
        if info.type == pafs.FileType.File
        and os.path.splitext(info.path)[1].lower() in VIDEO_EXTENSIONS
    )


# --- manifests: one parser, read in chunks ---------------------------------------------


def _open_fs(path: str):
    import pyarrow.fs as pafs

    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (OSError, ValueError) as err:
        reason = f"The manifest cannot be opened ({err})."
        raise ConfigError("inputs", redact(path), reason) from None


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


class Manifest:
    """A manifest, checked when built (it exists; CSV and Parquet have a
    ``path`` column: only the head or the footer is read), then read a chunk
    at a time: :meth:`chunks` lists them, :meth:`read` reads one. Relative
    entries resolve against the manifest's folder (or URI prefix, its
    ``?options`` kept).

    Raises:
        ConfigError: the manifest does not exist, cannot be opened, or has
            no ``path`` column.
    """

    def __init__(self, path: str | os.PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        import pyarrow.fs as pafs

        self.path = os.fspath(path)
        lower = (self.path.split("?", 1)[0] if is_uri(self.path) else self.path).lower()
        self.kind = "parquet" if lower.endswith((".parquet", ".pq")) else (
            "csv" if lower.endswith(".csv") else "text")  # fmt: skip
        self.chunk_bytes = chunk_bytes
        self.fs, self.inner = _open_fs(self.path)
        shown = redact(self.path)
        try:
            info = self.fs.get_file_info(self.inner)
            if info.type != pafs.FileType.File:
                raise ConfigError("inputs", shown, "A manifest must be an existing file.")
            self.size = info.size or 0
            self.row_groups, self.rows = 0, None
            columns = self._columns()
        except OSError as err:
            raise ConfigError("inputs", shown, f"The manifest cannot be read ({err}).") from None
        if columns is not None and "path" not in columns:
            kind = "A Parquet" if self.kind == "parquet" else "A CSV"
            reason = f"{kind} manifest needs a 'path' column; it has {columns}."
            raise ConfigError("inputs", shown, reason)
        if is_uri(self.path):
            head, mark, query = self.path.partition("?")
            self.base = head.rsplit("/", 1)[0] + mark + query
        else:
            self.base = os.path.dirname(os.path.abspath(self.path))

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

    def chunks(self) -> list[tuple]:
        """The chunks, in order: ``(start, end)`` byte ranges of a text
        manifest, ``()`` for a CSV, ``(group,)`` per Parquet row group."""
        if self.kind == "text":
            step = self.chunk_bytes
            return [(s, min(s + step, self.size)) for s in range(0, self.size, step)]
        if self.kind == "csv":
            return [()] if self.size else []
        return [(g,) for g in range(self.row_groups)]

    @functools.cached_property
    def estimated_rows(self) -> int:
        """Rows of a Parquet manifest; entries of a text or CSV one that fits
        one chunk (counted); else a guess from its size (for block sizing)."""
        if self.rows is not None:
            return self.rows
        if self.size <= self.chunk_bytes:
            return max(1, sum(len(self.read(c)) for c in self.chunks()))
        return max(1, self.size // ESTIMATED_LINE_BYTES)

    def resolve(self, entry: str) -> str:
        """One entry as an input path: URIs and absolute paths as they are,
        relative ones under the manifest's folder."""
        if is_uri(entry):
            return entry
        if is_uri(self.base):
            if os.path.isabs(entry):
                return entry
            prefix, mark, query = self.base.partition("?")
            return f"{prefix}/{entry}{mark}{query}"
        return tidy(entry if os.path.isabs(entry) else os.path.join(self.base, entry))

    def read(self, chunk: tuple) -> list[str]:
        """The input paths of one chunk, in manifest order."""
        return list(self.iter_paths(chunk))

    def iter_paths(self, chunk: tuple) -> Iterator[str]:
        """:meth:`read`, one path at a time (a CSV is streamed)."""
        if self.kind == "text":
            with self.fs.open_input_file(self.inner) as f:
                entries = _text_entries(read_text_range(f, chunk[0], chunk[1], self.size))
            yield from map(self.resolve, entries)
        elif self.kind == "csv":
            with self.fs.open_input_stream(self.inner) as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape",
                                        newline="")  # fmt: skip
                for row in csv.DictReader(text):
                    if row.get("path"):
                        yield self.resolve(row["path"])
        else:
            import pyarrow.parquet as pq

            with self.fs.open_input_file(self.inner) as f:
                table = pq.ParquetFile(f).read_row_group(chunk[0], columns=["path"])
            yield from (self.resolve(str(p)) for p in table.column("path").to_pylist() if p)


# --- Ray: the dataset of paths ---------------------------------------------------------


def _read_manifest_chunk(manifest: Manifest, chunk: tuple, step: int):
    import pyarrow as pa

    batch: list[str] = []
    for path in manifest.iter_paths(chunk):
        batch.append(transport_path(path))
        if len(batch) == step:
            yield pa.table({"path": pa.array(batch, pa.string())})
            batch = []
    if batch:
        yield pa.table({"path": pa.array(batch, pa.string())})


def _read_listing_slice(table_ref, start: int, rows: int, step: int):
    import ray

    table = ray.get(table_ref).slice(start, rows)
    for at in range(0, rows, step):
        yield table.slice(at, step)


@functools.cache
def _paths_source_class():
    """A Ray Data datasource of chunk readers (defined on first use: this
    module must not import Ray, ``local_stream`` reads manifests too)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PathsSource(Datasource):
        def __init__(self, name: str, reads: list[Callable[[], Iterator]], estimated_rows: int):
            self.name, self.reads, self.estimated_rows = name, reads, estimated_rows

        def get_name(self) -> str:
            return self.name

        def estimate_inmemory_data_size(self) -> int:
            return 64 * self.estimated_rows

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None,
                                 exec_stats=None)  # fmt: skip
            return [ReadTask(read, meta, per_task_row_limit=per_task_row_limit)
                    for read in self.reads]  # fmt: skip

    return PathsSource


def per_block(num_videos: int, videos_per_block: int, decode_actors: int) -> int:
    """Videos per block: ``videos_per_block``, fewer for short inputs so every
    decode actor still gets two blocks to work on."""
    return max(1, min(videos_per_block, -(-num_videos // (2 * max(1, decode_actors)))))


@dataclass
class Listing:
    """A folder or URI prefix listed by a Ray task: its table of paths stays
    in the object store; the driver holds only ``count`` (and ``ref``)."""

    spec: str
    ref: Any
    count: int


def _list_task(spec: str):
    """(Ray task, two returns) ``((count, None), table)`` or ``((0, reason), None)``."""
    import pyarrow as pa

    try:
        paths = list_videos(spec)
    except ConfigError as err:
        return (0, err.allowed), None
    column = pa.array([transport_path(p) for p in paths], pa.string())
    return (len(paths), None), pa.table({"path": column})


def list_on_cluster(spec: str, runtime_env: dict | None = None) -> Listing:
    """List ``spec`` in a Ray task that asks for no CPU.

    Raises:
        ConfigError: ``spec`` cannot be listed, or holds no video file.
    """
    import ray

    options: dict = {"num_cpus": 0, "num_returns": 2}
    if runtime_env:
        options["runtime_env"] = runtime_env
    head, table_ref = ray.remote(_list_task).options(**options).remote(spec)
    count, reason = ray.get(head)
    if reason is not None or count == 0:
        raise ConfigError("inputs", redact(spec), reason or "There are no video files under it.")
    return Listing(spec, table_ref, count)


def input_dataset(inputs, videos_per_block: int, decode_actors: int,
                  runtime_env: dict | None = None):  # fmt: skip
    """``(dataset of paths, videos per block)`` for ``inputs`` (or a
    :class:`Listing`): a manifest or a listing streamed by read tasks that
    ask for no CPU and run one at a time (the actor pools hold the cluster's
    CPUs: a read task waiting for one would wait forever), a list from memory.

    Raises:
        ConfigError: the inputs name no video.
    """
    import ray.data

    spec = inputs if isinstance(inputs, Listing) else input_spec(inputs)
    if isinstance(spec, InputSpec) and spec.kind == "folder":
        spec = list_on_cluster(spec.value, runtime_env)
    if isinstance(spec, Listing):
        step = per_block(spec.count, videos_per_block, decode_actors)
        reads = [functools.partial(_read_listing_slice, spec.ref, s,
                                   min(LISTING_ROWS_PER_TASK, spec.count - s), step)
                 for s in range(0, spec.count, LISTING_ROWS_PER_TASK)]  # fmt: skip
        return _streamed("ListFolder", reads, spec.count, step, runtime_env), step
    if spec.kind == "manifest":
        manifest = Manifest(spec.value)
        if manifest.size == 0:
            raise ConfigError("inputs", redact(manifest.path), "There are no input videos.")
        step = per_block(manifest.estimated_rows, videos_per_block, decode_actors)
        reads = [functools.partial(_read_manifest_chunk, manifest, c, step)
                 for c in manifest.chunks()]  # fmt: skip
        return _streamed("ReadManifest", reads, manifest.estimated_rows, step, runtime_env), step
    paths = spec.value if spec.kind == "paths" else dataset_paths(spec.value)
    if not paths:
        raise ConfigError("inputs", inputs, "There are no input videos.")
    step = per_block(len(paths), videos_per_block, decode_actors)
    items = [{"path": transport_path(p)} for p in paths]  # Arrow strings are UTF-8
    return ray.data.from_items(items, override_num_blocks=-(-len(paths) // step)), step


def _streamed(name: str, reads, estimated_rows: int, step: int, runtime_env):
    import ray.data

    source = _paths_source_class()(name, reads, estimated_rows)
    # Ray Data merges what a read task yields into one block, then cuts it into
    # override_num_blocks / tasks pieces: a block per `step` rows gives every
    # decode actor work from the first blocks on.
    blocks = max(len(reads), -(-estimated_rows // step))
    extra = {"runtime_env": runtime_env} if runtime_env else {}
    return ray.data.read_datasource(source, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=1),
                                    override_num_blocks=blocks, **extra)  # fmt: skip
