"""cps_ray: videos to fixed-budget patch tokens.

Per video: ``sequence_length`` uniform frames, resized to ``input_size``
squared, every ``patch_size`` squared patch scored by a codec-like energy, the
``k_keep`` highest kept with their (t, row, col) positions.
"""

from ._lazy import lazy_attributes
from .errors import (
    ConfigError,
    CpsRayError,
    DecodeError,
    DeviceUnavailableError,
    EnergyRuleError,
    IsolationError,
    JobError,
    MediaToolError,
    MissingDependencyError,
    NvdecUnavailableError,
    OutputNotEmptyError,
    OutputPathError,
    SessionClosedError,
    VideoFolderError,
)

# The rest is imported when first used: `import cps_ray` (and a Ray worker
# that only reads a manifest) loads neither torch nor Ray.
_LAZY = {
    "DecodeResult": "._api",
    "PatchStream": "._api",
    "decode_only": "._api",
    "patch_stream": "._api",
    "DecodeConfig": "._config",
    "PatchStreamConfig": "._config",
    "resolve_backends": "._config",
    "TrainingBatches": ".pipeline",
    "collate_patches": ".pipeline",
    "local_stream": ".pipeline",
    "row_patches": "._rows",
    "patch_dataset": ".pipeline",
    "write_shards": ".pipeline",
    "shard_dataset": ".pipeline",
    "select_patches": "._select",
    "rebuild_clip": "._rebuild",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CpsRayError",
    "DecodeConfig",
    "DecodeError",
    "DecodeResult",
    "DeviceUnavailableError",
    "EnergyRuleError",
    "IsolationError",
    "JobError",
    "MediaToolError",
    "MissingDependencyError",
    "NvdecUnavailableError",
    "OutputNotEmptyError",
    "OutputPathError",
    "PatchStream",
    "PatchStreamConfig",
    "SessionClosedError",
    "TrainingBatches",
    "VideoFolderError",
    "collate_patches",
    "decode_only",
    "local_stream",
    "patch_dataset",
    "patch_stream",
    "rebuild_clip",
    "resolve_backends",
    "row_patches",
    "select_patches",
    "shard_dataset",
    "write_shards",
]
