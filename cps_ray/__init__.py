"""cps_ray: videos to fixed-budget patch tokens.

Per video: ``sequence_length`` uniform frames, resized to ``input_size``
squared, every ``patch_size`` squared patch scored by a codec-like energy, the
``k_keep`` highest kept with their (t, row, col) positions.
"""

from .api import DecodeResult, PatchStream, decode_only, patch_stream
from .config import DecodeConfig, PatchStreamConfig, resolve_backends
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
from .pipeline import TrainingBatches, collate_patches, local_stream, row_patches
from .select import select_patches


def __getattr__(name):
    # patch_dataset and write_shards import Ray; keep `import cps_ray` light.
    if name in ("patch_dataset", "write_shards"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'cps_ray' has no attribute {name!r}")


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
    "resolve_backends",
    "row_patches",
    "select_patches",
    "write_shards",
]
