"""Finding a job's inputs (folders, manifests, globs, URIs) and checking its output."""

from __future__ import annotations

import glob
import os

from ..errors import ConfigError, JobError
from ..media import VIDEO_EXTENSIONS, find_videos
from ..pipeline.inputs import (
    MANIFEST_SUFFIXES,
    is_manifest,
    is_uri,
    list_uri,
    read_manifest,
    tidy,
)
from ..remote import redact

GLOB_CHARACTERS = "*?["


# Fields that shape the rows: a resumed output must keep them.
def _dedupe(paths: list[str]) -> list[str]:
    return list(dict.fromkeys(tidy(p) for p in paths))


def find_inputs(spec: str | os.PathLike) -> list[str]:
    """The videos ``spec`` names, as absolute paths (manifest URIs kept).

    ``spec`` is a folder (searched recursively for video extensions, sorted),
    a manifest (``.txt`` one path per line, ``.csv``/``.parquet`` with a
    ``path`` column; its order is kept), a glob (``'videos/**/*.mp4'``,
    sorted) or one video file. Duplicates are dropped, first one kept.

    Raises:
        JobError: ``spec`` names nothing, or no video.
    """
    spec = os.fspath(spec)
    if is_uri(spec):
        try:
            paths = read_manifest(spec) if is_manifest(spec) else list_uri(spec, VIDEO_EXTENSIONS)
        except ConfigError as err:
            raise JobError(f"input {redact(spec)!r}: {err.allowed}") from None
        if not paths:
            raise JobError(f"no video files found under {redact(spec)!r}")
        return _dedupe(paths)
    if os.path.isdir(spec):
        paths = [os.path.abspath(p) for p in find_videos(spec)]
        if not paths:
            raise JobError(f"no video files found under {spec!r}")
        return _dedupe(paths)
    if os.path.isfile(spec):
        if is_manifest(spec):
            paths = read_manifest(spec)
            if not paths:
                raise JobError(f"manifest {spec!r} lists no videos")
            return _dedupe(paths)
        return [os.path.abspath(spec)]
    if any(ch in spec for ch in GLOB_CHARACTERS):
        matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not matches:
            raise JobError(f"no files match {spec!r}")
        return _dedupe([os.path.abspath(p) for p in matches])
    raise JobError(
        f"input {spec!r} does not exist; IN is a folder, a manifest "
        f"({', '.join(MANIFEST_SUFFIXES)}) or a glob"
    )


def resolve_output(output: str | os.PathLike) -> str:
    """A local folder as an absolute path (created), or a URI as given.

    Raises:
        JobError: the folder cannot be made, or the URI's filesystem cannot
            be reached.
    """
    output = os.fspath(output)
    if "://" in output:
        import pyarrow.fs as pafs

        try:
            pafs.FileSystem.from_uri(output)
        except Exception as err:  # pyarrow raises several types for bad URIs
            raise JobError(f"output {output!r}: {' '.join(str(err).split())}") from None
        return output
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise JobError(f"output {output!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise JobError(f"output {output!r}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise JobError(f"output {output!r}: permission denied")
    return path
