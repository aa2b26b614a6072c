"""The job programs: ``run_preprocess`` (videos -> shards, resumable), and
the command lines ``jobs/preprocess.py``, ``jobs/train_stream.py`` and
``cps-ray preprocess`` share (their flags build a ``PatchStreamConfig`` and
the pipeline's options, so every entry point accepts the same ones).

Paths are data: they are listed, globbed and handed to the decoders, never
to a shell.
"""

from ..errors import JobError
from ._options import (
    add_address_option,
    add_config_options,
    add_isolation_options,
    add_pool_options,
    add_preprocess_options,
    check_address,
    config_from_args,
    isolation_from_args,
    non_negative_int,
    pipeline_options_from_args,
    positive_int,
)
from ._preprocess import (
    build_preprocess_parser,
    connect_ray,
    find_inputs,
    preprocess_from_args,
    preprocess_main,
    resolve_output,
    run_entry_point,
    run_preprocess,
    summarize_preprocess,
)

__all__ = [
    "JobError",
    "add_address_option",
    "add_config_options",
    "add_isolation_options",
    "add_pool_options",
    "add_preprocess_options",
    "build_preprocess_parser",
    "check_address",
    "config_from_args",
    "connect_ray",
    "find_inputs",
    "isolation_from_args",
    "non_negative_int",
    "pipeline_options_from_args",
    "positive_int",
    "preprocess_from_args",
    "preprocess_main",
    "resolve_output",
    "run_entry_point",
    "run_preprocess",
    "summarize_preprocess",
]
