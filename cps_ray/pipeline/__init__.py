"""Running many videos: ``local_stream`` (threads, no Ray) and the Ray Data
pipeline (``patch_dataset``, ``write_shards``, ``TrainingBatches``). Only this
package imports ``ray``, and only where a Ray pipeline is built."""

from .._lazy import lazy_attributes

_LAZY = {
    "TrainingBatches": ".feed",
    "collate_patches": ".feed",
    "local_stream": ".local",
    "ROW_COLUMNS": ".rows",
    "row_patches": ".rows",
    # These import Ray.
    "patch_dataset": ".dataset",
    "plan_pipeline": ".dataset",
    "write_shards": ".shards",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "ROW_COLUMNS",
    "TrainingBatches",
    "collate_patches",
    "local_stream",
    "patch_dataset",
    "row_patches",
    "write_shards",
]
