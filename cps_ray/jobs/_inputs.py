"""Finding a job's inputs (through the one resolver) and checking its output."""

from __future__ import annotations

import os

from .._remote import redact
from ..errors import ConfigError, JobError
from ..pipeline._inputs import resolve_inputs, tidy


def find_inputs(spec: str | os.PathLike) -> list[str]:
    """The videos ``spec`` names (:func:`~cps_ray.pipeline._inputs.resolve_inputs`:
    a folder or URI prefix, a manifest, a glob or one video file), absolute,
    duplicates dropped (the first one kept), for a job.

    Raises:
        JobError: ``spec`` names nothing, or no video.
    """
    spec = os.fspath(spec)
    try:
        paths = resolve_inputs(spec)
    except ConfigError as err:
        raise JobError(f"input {redact(spec)!r}: {err.allowed}") from None
    if not paths:
        raise JobError(f"input {redact(spec)!r}: the manifest lists no videos")
    return list(dict.fromkeys(tidy(p) for p in paths))


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
