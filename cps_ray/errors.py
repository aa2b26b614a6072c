"""Errors callers may catch. Every one derives from :class:`CpsRayError`.

A video that fails carries a *kind*, set where the error is raised and kept
in its error row (``error_kind``):

==============  ============================================================
``missing``     no such file or object (a broken link, a 404)
``unreadable``  it exists but cannot be read: permission, not a regular file
``unsupported`` no video stream, or one this decoder or device cannot decode
``corrupt``     not a video, or too damaged to decode
``too_large``   larger than ``max_pixels``, FFmpeg's limit or the spill limit
``timeout``     past ``decode_timeout_s``
``crashed``     its decoder process died, or could not start
``remote``      an object store or server failed after bounded tries
``internal``    anything else: a bug, reported with its exception type
==============  ============================================================

``timeout``, ``crashed`` and ``remote`` are :data:`TRANSIENT_KINDS`: a later
run may cure them (``--retry-failed`` decodes them again).
"""

from __future__ import annotations

from typing import Literal, get_args

ErrorKind = Literal[
    "missing", "unreadable", "unsupported", "corrupt", "too_large", "timeout", "crashed",
    "remote", "internal",
]  # fmt: skip
ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)
TRANSIENT_KINDS = frozenset({"timeout", "crashed", "remote"})


class CpsRayError(Exception):
    """Base class of every error cps_ray raises on purpose."""


class ConfigError(CpsRayError, ValueError):
    """A configuration field has a value that is not allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"Invalid {field} ({value!r}). {allowed}")


class DeviceUnavailableError(CpsRayError):
    """An explicit ``gpu`` backend or a device id this node cannot serve."""

    def __init__(self, field: str, value: object, node_has: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r} cannot run on this node: {node_has}")


class NvdecUnavailableError(DeviceUnavailableError):
    """An explicit ``decode_backend="gpu"`` on a node where torch sees CUDA
    but torchcodec cannot decode on it (a CPU build of torchcodec, one built
    for another CUDA, no NVDEC library). ``reason`` says what the probe found."""

    def __init__(self, device_id: int, reason: str):
        self.reason = reason
        super().__init__(
            "decode_backend",
            "gpu",
            f"torch sees CUDA device {device_id}, but {reason}. Install the CUDA builds "
            "of torch and torchcodec that match (pip install -c constraints-gpu.txt "
            "-e '.[cuda]'), or use decode_backend='cpu' ('auto' falls back by itself)",
        )


def printable_path(path: str) -> str:
    """``path`` for a one-line message: control characters (a newline in a
    file name, say) are shown escaped, as ``repr`` would."""
    if path.isprintable():
        return path
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


class DecodeError(CpsRayError):
    """A video could not be decoded. The message is one line naming the file
    (control characters in its name escaped); ``path`` is the name as given,
    ``kind`` one of :data:`ERROR_KINDS`."""

    def __init__(self, path: str, reason: str, kind: ErrorKind = "corrupt"):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; known: {ERROR_KINDS}")
        self.path = path
        self.reason = " ".join(str(reason).split())
        self.kind = kind
        super().__init__(f"{printable_path(str(path))}: {self.reason}")

    def __reduce__(self):  # pickled across processes with its kind
        return (type(self), (self.path, self.reason, self.kind))


class SessionClosedError(CpsRayError):
    """A closed :class:`~cps_ray.PatchStream` session was used."""


class MissingDependencyError(CpsRayError, ImportError):
    """An optional package needed by a feature is not installed."""

    def __init__(self, package: str, feature: str, extra: str):
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'cps_ray[{extra}]'"
        )


class JobError(CpsRayError):
    """A job that cannot run as asked: its inputs, its output or its address."""


class IsolationError(CpsRayError):
    """A worker's child process could not start: a setup problem of the
    node (not of a video), so the whole run stops."""


class OutputPathError(CpsRayError, ValueError):
    """A file ``write_shards`` would write or read that is not inside its output."""


class OutputNotEmptyError(CpsRayError, ValueError):
    """``write_shards`` without ``resume`` on an output that already holds a run."""


class EnergyRuleError(CpsRayError, ValueError):
    """``resume`` into an output whose rows were selected under another energy rule."""


class MediaToolError(CpsRayError):
    """The ``ffmpeg`` command is missing or failed to make a sample video."""


class VideoFolderError(CpsRayError, ValueError):
    """A videos folder that does not exist or is not a directory."""
