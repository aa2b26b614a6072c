"""Running many videos: ``local_stream`` (threads, no Ray) and the Ray Data
pipeline (``patch_dataset``, ``write_shards``, ``TrainingBatches``). Only this
package imports ``ray``, and only where a Ray pipeline is built."""

from .feed import TrainingBatches, collate_patches
from .local import local_stream
from .rows import ROW_COLUMNS, row_patches


def __getattr__(name):
    # Ray is imported only when a Ray pipeline is asked for.
    if name in ("patch_dataset", "plan_pipeline"):
        from . import dataset

        return getattr(dataset, name)
    if name == "write_shards":
        from .shards import write_shards

        return write_shards
    raise AttributeError(name)


__all__ = [
    "ROW_COLUMNS",
    "TrainingBatches",
    "collate_patches",
    "local_stream",
    "patch_dataset",
    "row_patches",
    "write_shards",
]
