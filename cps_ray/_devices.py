"""CUDA probing on this node (torch and torchcodec), device strings and
device-id checks.

Everything that asks "does this node have CUDA?" goes through
:func:`cuda_device_count`, and "can torchcodec decode on it?" through
:func:`nvdec_problem`, so tests can inject answers
(:func:`override_cuda_device_count`, :func:`override_nvdec_problem`, or the
environment variables ``CPS_RAY_FAKE_CUDA_DEVICES`` and
``CPS_RAY_FAKE_NVDEC``, which also reach child processes) instead of
needing real hardware.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Iterator

_override_lock = threading.Lock()
_override: int | None = None
_UNSET = object()
_nvdec_override: object = _UNSET
_probe_lock = threading.Lock()
_probe_results: dict[int, str | None] = {}

# One gray 128x128 H.264 frame in MP4 (854 bytes, made with the ffmpeg CLI):
# small enough to embed, inside every NVDEC's size limits.
_PROBE_CLIP = base64.b64decode(
    "AAAAIGZ0eXBpc29tAAACAGlzb21pc28yYXZjMW1wNDEAAALqbW9vdgAAAGxtdmhkAAAAAAAAAAAAAAAAAAAD6AAA"
    "ACgAAQAAAQAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAgAAAjl0cmFrAAAAXHRraGQAAAADAAAAAAAAAAAAAAABAAAAAAAAACgAAAAAAAAAAAAA"
    "AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAABAAAAAAIAAAACAAAAAAAAkZWR0cwAAABxlbHN0"
    "AAAAAAAAAAEAAAAoAAAAAAABAAAAAAGxbWRpYQAAACBtZGhkAAAAAAAAAAAAAAAAAAAyAAAAAgBVxAAAAAAALWhk"
    "bHIAAAAAAAAAAHZpZGUAAAAAAAAAAAAAAABWaWRlb0hhbmRsZXIAAAABXG1pbmYAAAAUdm1oZAAAAAEAAAAAAAAA"
    "AAAAACRkaW5mAAAAHGRyZWYAAAAAAAAAAQAAAAx1cmwgAAAAAQAAARxzdGJsAAAAuHN0c2QAAAAAAAAAAQAAAKhh"
    "dmMxAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAIAAgABIAAAASAAAAAAAAAABDExhdmMgbGlieDI2NAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAGP//AAAALmF2Y0MBQsAL/+EAF2dCwAvaCBGwEQAAAwABAAADADIPFCqgAQAEaM4PyAAAABBw"
    "YXNwAAAAAQAAAAEAAAAUYnRydAAAAAAAAC7gAAAu4AAAABhzdHRzAAAAAAAAAAEAAAABAAACAAAAABxzdHNjAAAA"
    "AAAAAAEAAAABAAAAAQAAAAEAAAAUc3RzegAAAAAAAAA8AAAAAQAAABRzdGNvAAAAAAAAAAEAAAMaAAAAPXVkdGEA"
    "AAA1bWV0YQAAAAAAAAAhaGRscgAAAAAAAAAAbWRpcmFwcGwAAAAAAAAAAAAAAAAIaWxzdAAAAAhmcmVlAAAARG1k"
    "YXQAAAA4ZYiEOiYoDJycnJycnJ111111111111111111111111111111111111111111111111111111114="
)


# The library every decode loads: PyAV (FFmpeg in its wheel) decodes on the
# CPU and indexes the packets for NVDEC. torchcodec (the GPU's decoder) is
# loaded where a worker decodes on a GPU: by the NVDEC probe that resolves
# ``auto`` and by size_nvdec_cache. Decoding on the CPU needs neither it nor torch.
DECODER_MODULES = ("av",)


def load_decoders() -> None:
    """Import the decoders' libraries now: what a worker does when it
    starts: loaded lazily, they would fall inside its first video's
    ``decode_timeout_s``, and on a loaded host take seconds."""
    for name in DECODER_MODULES:
        importlib.import_module(name)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_threads(config, concurrent_videos: int = 1, cores: float | None = None) -> int:
    """Threads one video's decoding may use, the one rule: ``config.ffmpeg_threads``
    when set, else the ``cores`` a worker holds (this process's usable cores by
    default; a Ray actor's CPUs) shared by its ``concurrent_videos``. How a
    video spends them (decoders side by side, FFmpeg threads each) is
    :func:`split_decoders`."""
    if config.ffmpeg_threads:
        return config.ffmpeg_threads
    available = usable_cores() if cores is None else cores
    return max(1, int(available) // max(1, concurrent_videos))


# Planned work (packets to decode plus frames to convert) each decoder must
# get before a video is split: a decoder of its own costs an open of the
# file, a thread and its own start (about 6 ms of CPU for a 360p H.264
# clip). Measured on 2 cores (benchmark/RESULTS.md, "One long video on
# every core"): from 117 units on, two decoders beat one decoder with 2
# FFmpeg threads (28 vs 45 ms) and one thread (41 ms); at 100 they tied
# with one thread on a loaded machine. Tests lower it.
MIN_WORK_PER_DECODER = 100


def split_decoders(threads: int, work: int, max_decoders: int) -> tuple[int, int]:
    """``(decoders, FFmpeg threads each)`` for one video given its ``threads``
    (:func:`decode_threads`): as many decoders side by side as the threads,
    the places its plan can be split at (``max_decoders``: segments that
    start at keyframes) and its ``work`` (planned packets plus frames) allow,
    at least :data:`MIN_WORK_PER_DECODER` each; the threads left go to
    FFmpeg's threads in each decoder. One decoder gets them all."""
    decoders = max(1, min(threads, max_decoders, work // MIN_WORK_PER_DECODER))
    return decoders, max(1, threads // decoders)


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
    if _no_cuda_here():
        return 0
    import torch

    if not torch.cuda.is_available():
        return 0
    return int(torch.cuda.device_count())


def _no_cuda_here() -> bool:
    """No CUDA device can be seen, known without importing torch (2-3 s):
    ``CUDA_VISIBLE_DEVICES`` hides them all (a Ray actor given no GPU), or
    a Linux machine has no NVIDIA driver node (``/dev/nvidiactl``; WSL's GPU
    is ``/dev/dxg``)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return sys.platform.startswith("linux") and not any(
        os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/dxg")
    )


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


def fake_environment() -> dict[str, str]:
    """The environment variables that give a child process this process's
    injected answers (the overrides above live in this process only)."""
    env = {}
    if _override is not None:
        env["CPS_RAY_FAKE_CUDA_DEVICES"] = str(_override)
    if _nvdec_override is not _UNSET:
        env["CPS_RAY_FAKE_NVDEC"] = "ok" if _nvdec_override is None else str(_nvdec_override)
    return env


def _devices_faked() -> bool:
    return _override is not None or os.environ.get("CPS_RAY_FAKE_CUDA_DEVICES", "").strip() != ""


def nvdec_problem(device_id: int = 0) -> str | None:
    """Why torchcodec cannot decode on ``cuda:{device_id}`` in this process,
    or ``None`` when it can.

    torch seeing CUDA is not enough: a CPU build of torchcodec, one built for
    another CUDA, or a node without the NVDEC library cannot decode there.
    The probe decodes one embedded H.264 frame on the device, once per
    process and device. ``CPS_RAY_FAKE_NVDEC`` (``ok``, or the reason to
    report) or :func:`override_nvdec_problem` inject the answer; on a node
    whose devices are faked (``CPS_RAY_FAKE_CUDA_DEVICES``) the answer is
    ``None`` unless injected.
    """
    if _nvdec_override is not _UNSET:
        return _nvdec_override  # type: ignore[return-value]
    fake = os.environ.get("CPS_RAY_FAKE_NVDEC", "").strip()
    if fake:
        return None if fake == "ok" else fake
    if _devices_faked():
        return None
    with _probe_lock:
        if device_id not in _probe_results:
            _probe_results[device_id] = _probe_torchcodec_cuda(device_id)
        return _probe_results[device_id]


def _probe_torchcodec_cuda(device_id: int) -> str | None:
    from ._guards import short_reason

    device = f"cuda:{device_id}"
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except (ImportError, OSError, RuntimeError) as err:
        return f"torchcodec cannot be loaded ({short_reason(err)})"
    name = f"torchcodec {getattr(torchcodec, '__version__', '(unknown version)')}"
    try:
        decoder = VideoDecoder(_PROBE_CLIP, device=device)
        frame = decoder.get_frame_at(0).data
        fallback = decoder.cpu_fallback
    except (RuntimeError, ValueError) as err:  # torch's CUDA errors are RuntimeErrors
        return f"{name} cannot decode on {device} ({short_reason(err)})"
    if fallback:
        why = str(fallback).split("Falling back due to:", 1)[-1].strip()
        return f"{name} cannot decode on the NVDEC of {device} ({why})"
    if str(frame.device) != device:
        return f"{name} decoded the probe frame to {frame.device}, not {device}"
    return None


@contextlib.contextmanager
def override_nvdec_problem(problem: str | None) -> Iterator[None]:
    """Pretend torchcodec's CUDA decoding fails for ``problem`` (a reason), or
    works (``None``), whatever the probe would find (tests)."""
    global _nvdec_override
    with _override_lock:
        previous, _nvdec_override = _nvdec_override, problem
    try:
        yield
    finally:
        with _override_lock:
            _nvdec_override = previous


# NVDEC decoders torchcodec keeps for reuse (same codec and size) by all the
# decode processes of one GPU together; torchcodec's default, 20 in every
# process, grows with the pool (8 actors per GPU would keep 160).
NVDEC_CACHE_PER_GPU = 32
# One video holds two CUDA decoders at once (the NVDEC check and a route).
NVDEC_CACHE_MIN = 4


def nvdec_cache_capacity(processes_per_gpu: int) -> int:
    """Decoders one of ``processes_per_gpu`` decode processes keeps cached."""
    return max(NVDEC_CACHE_MIN, NVDEC_CACHE_PER_GPU // max(1, processes_per_gpu))


def size_nvdec_cache(processes_per_gpu: int) -> int:
    """Set torchcodec's NVDEC cache of this process to its share; returns it."""
    from torchcodec.decoders import set_nvdec_cache_capacity

    capacity = nvdec_cache_capacity(processes_per_gpu)
    set_nvdec_cache_capacity(capacity)
    return capacity


def processes_per_gpu(gpu_share: float) -> int:
    """Decode processes one GPU holds when each asks for ``gpu_share`` of it."""
    return max(1, round(1.0 / gpu_share)) if gpu_share > 0 else 1


def describe_node() -> str:
    """One phrase saying what this node has, for error messages."""
    count = cuda_device_count()
    if count == 0:
        return "this node has no CUDA device (torch.cuda.is_available() is False)"
    return f"this node has {count} CUDA device(s): ids 0..{count - 1}"


def torch_device(backend: str, device_id: int) -> str:
    """Device string for a resolved backend: ``"cpu"`` or ``"cuda:{id}"``."""
    return "cpu" if backend == "cpu" else f"cuda:{device_id}"
