"""Running many videos: ``local_stream`` (threads, no Ray) and the Ray Data
pipeline (``patch_dataset``, ``write_shards``, ``TrainingBatches``). Only this
package imports ``ray``, and only where a Ray pipeline is built."""

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


def __getattr__(name):
    # Each name is imported when first asked for: Ray only for a Ray
    # pipeline, torch only for decoding and rows.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cps_ray.pipeline' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ROW_COLUMNS",
    "TrainingBatches",
    "collate_patches",
    "local_stream",
    "patch_dataset",
    "row_patches",
    "write_shards",
]
