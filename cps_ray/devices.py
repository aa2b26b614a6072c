"""CUDA probing on this node, device strings and device-id checks.

Everything that asks "does this node have CUDA?" goes through
:func:`cuda_device_count`, so tests can inject an answer with
:func:`override_cuda_device_count` instead of needing real hardware.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_override_lock = threading.Lock()
_override: int | None = None


def cuda_device_count() -> int:
    """Number of CUDA devices visible to this process (0 without CUDA).

    Respects ``CUDA_VISIBLE_DEVICES``, so inside a Ray actor it counts the
    GPUs Ray assigned. ``CPS_RAY_FAKE_CUDA_DEVICES`` (an int) overrides the
    probe for the whole process; the value ``visible`` counts the ids in
    ``CUDA_VISIBLE_DEVICES``, which is how a simulated Ray cluster (declared
    GPUs, no hardware) gives GPU actors their devices.
    """
    if _override is not None:
        return _override
    fake = os.environ.get("CPS_RAY_FAKE_CUDA_DEVICES")
    if fake is not None and fake.strip() != "":
        if fake.strip() == "visible":
            # Simulated clusters: as many devices as CUDA_VISIBLE_DEVICES
            # names, i.e. the GPUs Ray assigned to this actor.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            return len([d for d in visible.split(",") if d.strip()])
        return int(fake)
    import torch

    if not torch.cuda.is_available():
        return 0
    return int(torch.cuda.device_count())


def cuda_available() -> bool:
    return cuda_device_count() > 0


@contextlib.contextmanager
def override_cuda_device_count(count: int) -> Iterator[None]:
    """Pretend this process sees ``count`` CUDA devices (tests)."""
    global _override
    with _override_lock:
        previous, _override = _override, count
    try:
        yield
    finally:
        with _override_lock:
            _override = previous


def describe_node() -> str:
    """One phrase saying what this node has, for error messages."""
    count = cuda_device_count()
    if count == 0:
        return "this node has no CUDA device (torch.cuda.is_available() is False)"
    return f"this node has {count} CUDA device(s): ids 0..{count - 1}"


def torch_device(backend: str, device_id: int) -> str:
    """Device string for a resolved backend: ``"cpu"`` or ``"cuda:{id}"``."""
    return "cpu" if backend == "cpu" else f"cuda:{device_id}"
