"""Running many videos: ``local_stream`` (threads, no Ray) and the Ray Data
pipeline (``patch_dataset``, ``write_shards``, ``shard_dataset``, ``TrainingBatches``). Only this
package imports ``ray``, and only where a Ray pipeline is built."""

from .._lazy import lazy_attributes

_LAZY = {
    "TrainingBatches": "._feed",
    "collate_patches": "._feed",
    "local_stream": "._local",
    "ROW_COLUMNS": "._rows",
    "row_patches": "._rows",
    # These import Ray.
    "patch_dataset": "._dataset",
    "plan_pipeline": "._dataset",
    "write_shards": "._shards",
    "shard_dataset": "._shards",
    "without_error_rows": "._error_rows",
    # Training on Ray Train workers (these import torch).
    "Lockstep": "._train",
    "train_on_workers": "._train",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "Lockstep",
    "ROW_COLUMNS",
    "TrainingBatches",
    "collate_patches",
    "local_stream",
    "patch_dataset",
    "row_patches",
    "shard_dataset",
    "train_on_workers",
    "without_error_rows",
    "write_shards",
]
