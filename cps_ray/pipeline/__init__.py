"""Running many videos: ``local_stream`` (no Ray), the Ray Data pipeline
(``patch_dataset``), its outputs (``write_shards``, ``shard_dataset``) and
training feeds (``TrainingBatches``, Ray Train). Only this package and the
jobs import ``ray``, and only where a Ray pipeline is built."""

from .._lazy import lazy_attributes

_LAZY = {
    "TrainingBatches": "._feed",
    "collate_patches": "._feed",
    "local_stream": "._local",
    # These import Ray.
    "patch_dataset": "._dataset",
    "plan_pipeline": "._dataset",
    "write_shards": "._output",
    "shard_dataset": "._output",
    "without_error_rows": "._train",
    "Lockstep": "._train",
    "train_on_workers": "._train",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "Lockstep",
    "TrainingBatches",
    "collate_patches",
    "local_stream",
    "patch_dataset",
    "plan_pipeline",
    "shard_dataset",
    "train_on_workers",
    "without_error_rows",
    "write_shards",
]
