"""Inputs of ``local_stream`` and ``patch_dataset``: a list of paths or a
manifest file (text with one path per line, CSV or Parquet with a ``path``
column). Paths are data: they are never passed through a shell, and a local
name is never read by FFmpeg as one of its protocols (see :func:`local_name`).
"""

from __future__ import annotations

import base64
import csv
import os
import re
from collections.abc import Iterable

from .._remote import redact
from ..errors import ConfigError

MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".csv", ".parquet", ".pq")
# What FFmpeg's url_find_protocol reads as "PROTOCOL:rest" (file:, pipe:,
# concat:, subfile,,...:), instead of the name of a local file.
FFMPEG_PROTOCOL_PREFIX = re.compile(r"[A-Za-z0-9+.-]*:|subfile,.*:", re.DOTALL)
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


# A local file name that is not valid UTF-8 travels between Ray stages (Arrow
# strings) as this marker and its bytes in base64; no real path holds a NUL.
_RAW_NAME = "\0fsname:"


def transport_path(path: str) -> str:
    """``path`` as a valid UTF-8 string that :func:`local_path` turns back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return _RAW_NAME + base64.b64encode(os.fsencode(path)).decode("ascii")
    return path


def local_path(transported: str) -> str:
    """The path :func:`transport_path` was given."""
    if transported.startswith(_RAW_NAME):
        return os.fsdecode(base64.b64decode(transported[len(_RAW_NAME) :]))
    return transported


def row_path(path: str) -> str:
    """The ``path`` a row shows: a URI's credentials redacted, and the bytes
    of a file name that is not valid UTF-8 as ``\\xff`` escapes (Arrow's
    strings are UTF-8)."""
    shown = redact(path)
    try:
        shown.encode("utf-8")
    except UnicodeEncodeError:
        return shown.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return shown


def is_uri(path: str) -> bool:
    """``scheme://...`` (``s3://``, ``gs://``, ``https://``): kept as given."""
    return URI.match(path) is not None


def local_name(path: str) -> str:
    """``path``, with ``./`` in front when it is a relative name FFmpeg would
    take for a protocol: ``file:b.mp4`` would open ``b.mp4``, ``pipe:0`` stdin,
    ``concat:a|b`` two other files. URIs (``scheme://``) are kept as they are.
    """
    if is_uri(path) or os.path.isabs(path) or not FFMPEG_PROTOCOL_PREFIX.match(path):
        return path
    return os.path.join(".", path)


def is_manifest(path: str) -> bool:
    """A manifest's name: ``.txt``, ``.csv``, ``.parquet``...; a URI's
    options (``?endpoint_override=...``) are not part of it."""
    path = str(path)
    if is_uri(path):
        path = path.split("?", 1)[0]
    return path.lower().endswith(MANIFEST_SUFFIXES)


def tidy(path: str) -> str:
    """A local path without ``.`` components and repeated separators, so that
    ``dir/./a.mp4`` and ``dir//a.mp4`` are ``dir/a.mp4``. ``..`` is kept: past
    a symbolic link it does not mean the folder above."""
    if is_uri(path) or not path:
        return path
    head = os.sep if path.startswith(os.sep) else ""
    parts = [p for p in path.split(os.sep) if p not in ("", ".")]
    return head + os.sep.join(parts) if parts else (head or ".")


def _open_text(path: str):
    """A manifest's text, local or at a URI (pyarrow's filesystems)."""
    if not is_uri(path):
        return open(path, newline="")
    import io

    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as f:
        return io.StringIO(f.read().decode("utf-8"), newline="")


def manifest_base(path: str) -> str:
    """The folder (or URI prefix) a manifest's relative entries resolve against.

    Raises:
        ConfigError: a local manifest that is not an existing file.
    """
    if is_uri(path):
        # pyarrow's URI options (?endpoint_override=...) hold for every entry.
        head, mark, query = path.partition("?")
        return head.rsplit("/", 1)[0] + mark + query
    if not os.path.isfile(path):
        raise ConfigError("inputs", path, "A manifest must be an existing file.")
    return os.path.dirname(os.path.abspath(path))


def resolve_entry(entry: str, base: str) -> str:
    """One manifest entry as an input path: URIs and absolute paths as they
    are, relative ones under ``base`` (a folder, or a URI prefix)."""
    if is_uri(entry):
        return entry
    if is_uri(base):
        if os.path.isabs(entry):
            return entry
        prefix, mark, query = base.partition("?")
        return f"{prefix}/{entry}{mark}{query}"
    return tidy(entry if os.path.isabs(entry) else os.path.join(base, entry))


def read_manifest(path: str) -> list[str]:
    """Paths listed in a manifest (a local file or a URI); relative entries
    resolve against its folder. The whole list, in memory: ``patch_dataset``
    streams manifests instead (:mod:`cps_ray.pipeline._manifests`)."""
    path = os.fspath(path)
    base = manifest_base(path)
    try:
        entries = _manifest_entries(path, path.lower())
    except OSError as err:
        raise ConfigError("inputs", path, f"The manifest cannot be read ({err}).") from None
    return [resolve_entry(e, base) for e in entries]


def _manifest_entries(path: str, lower: str) -> list[str]:
    if lower.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise ConfigError(
                "inputs",
                path,
                f"A Parquet manifest needs a 'path' column; it has {table.column_names}.",
            )
        return [str(p) for p in table.column("path").to_pylist() if p]
    if lower.endswith(".csv"):
        with _open_text(path) as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ConfigError(
                    "inputs",
                    path,
                    f"A CSV manifest needs a 'path' column; it has {reader.fieldnames}.",
                )
            return [row["path"] for row in reader if row.get("path")]
    with _open_text(path) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def list_uri(uri: str, extensions) -> list[str]:
    """The objects under a URI prefix whose names end in ``extensions``,
    sorted; the URI itself when it names one object."""
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.File:
            return [uri]
        found = fs.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=True,
                                                   allow_not_found=True))  # fmt: skip
    except (OSError, ValueError) as err:
        raise ConfigError("inputs", uri, f"The URI cannot be listed ({err}).") from None
    scheme, rest = uri.split("://", 1)
    query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    prefix_path = inner.rstrip("/")
    head = uri.split("?", 1)[0].rstrip("/")
    return sorted(
        head + i.path[len(prefix_path) :] + query
        for i in found
        if i.type == pafs.FileType.File and i.path.lower().endswith(tuple(extensions))
    )


GLOB_CHARACTERS = "*?["


def resolve_inputs(inputs) -> list[str]:
    """The one input resolver of the API, the jobs and the CLI: the videos
    ``inputs`` names, in order.

    ``inputs`` is a list of paths (str or PathLike, kept as given), or one
    spec: a manifest (``.txt``/``.csv``/``.parquet``, local or a URI; its
    order), a folder or a URI prefix (its videos, sorted), a glob
    (``'videos/**/*.mp4'``, matching files, sorted) or one video file.

    Raises:
        ConfigError: a spec that names nothing, or no video.
    """
    if isinstance(inputs, (str, os.PathLike)):
        return _resolve_spec(os.fspath(inputs))
    if isinstance(inputs, Iterable):
        paths = []
        for item in inputs:
            if not isinstance(item, (str, os.PathLike)):
                raise ConfigError("inputs", item, "Each input must be a path (str or PathLike).")
            paths.append(local_name(tidy(os.fspath(item))))
        return paths
    raise ConfigError("inputs", inputs, "Pass a list of video paths or a manifest path.")


def _resolve_spec(spec: str) -> list[str]:
    from ._listing import is_listing, list_videos

    if is_manifest(spec):
        return read_manifest(spec)
    if is_listing(spec):
        paths = list_videos(spec)
        if not paths:
            raise ConfigError("inputs", redact(spec), "There are no video files under it.")
        return paths
    if os.path.isfile(spec):
        return [os.path.abspath(spec)]
    if any(ch in spec for ch in GLOB_CHARACTERS):
        import glob

        matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError("inputs", spec, "No files match it.")
        return [os.path.abspath(p) for p in matches]
    raise ConfigError(
        "inputs",
        spec,
        "It does not exist; pass a list of video paths, a folder, a glob, a video file or a "
        "manifest ending in " + ", ".join(MANIFEST_SUFFIXES) + ".",
    )
