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
    MissingDependencyError,
    SessionClosedError,
)
from .pipeline import local_stream, row_patches
from .select import select_patches

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CpsRayError",
    "DecodeConfig",
    "DecodeError",
    "DecodeResult",
    "DeviceUnavailableError",
    "MissingDependencyError",
    "PatchStream",
    "PatchStreamConfig",
    "SessionClosedError",
    "decode_only",
    "local_stream",
    "patch_stream",
    "resolve_backends",
    "row_patches",
    "select_patches",
]
