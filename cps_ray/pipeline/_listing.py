"""Folders and URI prefixes as inputs, listed off the driver.

A folder (searched recursively) or a URI prefix (``s3://bucket/videos/``)
is listed by one Ray task, not by the driver: the task finds the files with
a video extension and sorts them; its result, an Arrow table of paths, stays
in Ray's object store, and the driver gets only their number. Read tasks of
:class:`~cps_ray.pipeline._manifests.ListingSource` then take it a slice
each while the pipeline runs. So the driver holds neither the list nor its
listing's objects (a prefix of a million objects is some 300 MB of file
records while it is listed), the blocks are sized from the exact count, and
the table is freed with the dataset (Ray owns it: nothing is left on disk).

This module holds what needs no Ray (``local_stream`` lists here, in-process).
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from ._inputs import is_manifest, is_uri, list_uri


def is_listing(spec) -> bool:
    """Whether ``spec`` is listed: a local folder, or a URI that is not a manifest."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    spec = os.fspath(spec)
    return (is_uri(spec) and not is_manifest(spec)) or os.path.isdir(spec)


def list_videos(spec: str) -> list[str]:
    """The video files under a folder (absolute paths) or a URI prefix (URIs,
    their ``?options`` kept), sorted; a URI that names one object is itself.

    Raises:
        ConfigError: ``spec`` cannot be listed.
    """
    from .._media import VIDEO_EXTENSIONS, VideoFolderError, find_videos

    if is_uri(spec):
        return list_uri(spec, VIDEO_EXTENSIONS)
    try:
        return [os.path.abspath(p) for p in find_videos(spec)]
    except VideoFolderError as err:
        raise ConfigError("inputs", spec, str(err)) from None
