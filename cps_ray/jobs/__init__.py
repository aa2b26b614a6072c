"""What ``jobs/preprocess.py``, ``jobs/train_stream.py`` and ``cps-ray
preprocess`` share, by concern:

- :mod:`.inputs`: finding the inputs (a folder, a manifest, a glob, a URI
  prefix) and checking the output;
- :mod:`.options`: the command-line options (config, isolation, actor pools,
  Ray address, preprocess);
- :mod:`.preprocess`: planning a run (resume, ``--retry-failed``), joining
  Ray, writing shards under the output's lock, and the summaries.

Paths are data: they are listed, globbed and handed to the decoders, never
to a shell.
"""

from ..errors import JobError
from ._inputs import find_inputs, resolve_output
from ._options import (
    DEFAULT_ROWS_PER_SHARD,
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
    PreprocessPlan,
    build_preprocess_parser,
    connect_ray,
    plan_preprocess,
    preprocess_from_args,
    preprocess_main,
    run_entry_point,
    run_preprocess,
    summarize_preprocess,
)

__all__ = [
    "DEFAULT_ROWS_PER_SHARD",
    "JobError",
    "PreprocessPlan",
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
    "plan_preprocess",
    "positive_int",
    "preprocess_from_args",
    "preprocess_main",
    "resolve_output",
    "run_entry_point",
    "run_preprocess",
    "summarize_preprocess",
]
