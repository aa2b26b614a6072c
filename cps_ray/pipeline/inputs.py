"""Inputs of ``local_stream`` and ``patch_dataset``: a list of paths or a
manifest file (text with one path per line, CSV or Parquet with a ``path``
column). Paths are data: they are never passed through a shell, and a local
name is never read by FFmpeg as one of its protocols (see :func:`local_name`).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable

from ..errors import ConfigError

MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".csv", ".parquet", ".pq")
# What FFmpeg's url_find_protocol reads as "PROTOCOL:rest" (file:, pipe:,
# concat:, subfile,,...:), instead of the name of a local file.
FFMPEG_PROTOCOL_PREFIX = re.compile(r"[A-Za-z0-9+.-]*:|subfile,.*:", re.DOTALL)
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


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
    return str(path).lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(path: str) -> list[str]:
    """Paths listed in a manifest; relative entries resolve against its folder."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError("inputs", path, "A manifest must be an existing file.")
    base = os.path.dirname(os.path.abspath(path))
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise ConfigError(
                "inputs",
                path,
                f"A Parquet manifest needs a 'path' column; it has {table.column_names}.",
            )
        entries = [str(p) for p in table.column("path").to_pylist() if p]
    elif lower.endswith(".csv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ConfigError(
                    "inputs",
                    path,
                    f"A CSV manifest needs a 'path' column; it has {reader.fieldnames}.",
                )
            entries = [row["path"] for row in reader if row.get("path")]
    else:
        with open(path) as f:
            entries = [
                line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")
            ]
    return [e if is_uri(e) or os.path.isabs(e) else os.path.join(base, e) for e in entries]


def resolve_inputs(inputs) -> list[str]:
    """A list of paths (str or PathLike), or one manifest path -> list of str."""
    if isinstance(inputs, (str, os.PathLike)):
        if is_manifest(os.fspath(inputs)):
            return read_manifest(os.fspath(inputs))
        raise ConfigError(
            "inputs",
            os.fspath(inputs),
            "Pass a list of video paths, or a manifest ending in "
            + ", ".join(MANIFEST_SUFFIXES)
            + ".",
        )
    if isinstance(inputs, Iterable):
        paths = []
        for item in inputs:
            if not isinstance(item, (str, os.PathLike)):
                raise ConfigError("inputs", item, "Each input must be a path (str or PathLike).")
            paths.append(local_name(os.fspath(item)))
        return paths
    raise ConfigError("inputs", inputs, "Pass a list of video paths or a manifest path.")
