"""Folders and URI prefixes as inputs, listed off the driver.

A folder (searched recursively) or a URI prefix (``s3://bucket/videos/``)
is listed by one Ray task, not by the driver: the task finds the files with
a video extension, sorts them, and writes them to a Parquet file in a
temporary folder of the driver's node, returning only their number. The
pipeline then streams that file like any Parquet manifest
(:mod:`cps_ray.pipeline.manifests`), its read tasks on the same node. So the
driver holds neither the list nor its listing's objects (a prefix of a
million objects is some 300 MB of file records while it is listed), and the
blocks are sized from the exact count.

The listing is deleted when its dataset is garbage-collected, or when the
driver exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass

from ..errors import ConfigError
from ..remote import redact
from .inputs import is_manifest, is_uri, list_uri, transport_path

LISTING_ROW_GROUP = 2**16


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
    from ..media import VIDEO_EXTENSIONS, VideoFolderError, find_videos

    if is_uri(spec):
        return list_uri(spec, VIDEO_EXTENSIONS)
    try:
        return [os.path.abspath(p) for p in find_videos(spec)]
    except VideoFolderError as err:
        raise ConfigError("inputs", spec, str(err)) from None


def _write_listing(spec: str, target: str) -> tuple[int, str | None]:
    """(Ray task) List ``spec`` into ``target``: (count, None), or (0, reason)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        paths = list_videos(spec)
    except ConfigError as err:
        return 0, err.allowed
    column = pa.array([transport_path(p) for p in paths], pa.string())
    pq.write_table(pa.table({"path": column}), target, row_group_size=LISTING_ROW_GROUP)
    return len(paths), None


@dataclass
class Listing:
    """A folder's or prefix's videos, listed into ``path`` (a Parquet file
    with a ``path`` column, on the node ``node_id``)."""

    spec: str
    path: str
    count: int
    node_id: str


def list_on_cluster(spec: str | os.PathLike, runtime_env: dict | None = None) -> Listing:
    """List ``spec`` in a Ray task on this driver's node (see the module).

    Raises:
        ConfigError: ``spec`` cannot be listed, or holds no video file.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    spec = os.fspath(spec)
    node_id = ray.get_runtime_context().get_node_id()
    folder = tempfile.mkdtemp(prefix="cps_ray-listing-")
    target = os.path.join(folder, "listing.parquet")
    options = {
        "num_cpus": 0,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
    }
    if runtime_env:
        options["runtime_env"] = runtime_env
    try:
        count, reason = ray.get(ray.remote(_write_listing).options(**options).remote(spec, target))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if reason is not None or count == 0:
        shutil.rmtree(folder, ignore_errors=True)
        shown = redact(spec)
        raise ConfigError("inputs", shown, reason or "There are no video files under it.")
    listing = Listing(spec, target, count, node_id)
    weakref.finalize(listing, shutil.rmtree, folder, True)
    return listing
