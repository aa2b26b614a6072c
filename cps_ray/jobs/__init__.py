"""The job programs: ``run_preprocess`` (videos -> shards, resumable) and
what the command lines ``jobs/preprocess.py``, ``jobs/train_stream.py`` and
``cps-ray preprocess`` share: one set of flags for the config and the
pipeline (``add_pipeline_flags``), one way to join Ray, one exit rule.

Paths are data: they are listed, globbed and handed to the decoders, never
to a shell.
"""

from .._stderr import drop_ray_53727
from .._store import read_manifest
from ..errors import JobError
from ._options import add_pipeline_flags, non_negative_int, pipeline_from_flags, positive_int
from ._preprocess import (
    connect_ray,
    find_inputs,
    preprocess_main,
    run_entry_point,
    run_preprocess,
    summarize_preprocess,
)

__all__ = [
    "JobError",
    "add_pipeline_flags",
    "connect_ray",
    "drop_ray_53727",
    "find_inputs",
    "non_negative_int",
    "pipeline_from_flags",
    "positive_int",
    "preprocess_main",
    "read_manifest",
    "run_entry_point",
    "run_preprocess",
    "summarize_preprocess",
]
