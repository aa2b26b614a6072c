"""What a benchmark ran on: cores, CPU model, memory, GPU, library versions, load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata

PACKAGES = ("cps_ray", "torch", "torchcodec", "decord", "numba", "numpy", "matplotlib")


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _ffmpeg() -> dict:
    info: dict = {}
    try:
        from torchcodec._core import get_ffmpeg_library_versions

        info["torchcodec_libs"] = get_ffmpeg_library_versions()
    except Exception as err:
        info["torchcodec_libs"] = f"unknown ({type(err).__name__})"
    binary = shutil.which("ffmpeg")
    if binary:
        out = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False)
        info["cli"] = (out.stdout.splitlines() or ["?"])[0]
    info["decord_libavcodec"] = _decord_libavcodec()
    return info


def _decord_libavcodec() -> str | None:
    """decord's wheels bundle their own FFmpeg; its libavcodec version is in the file name."""
    try:
        dist = metadata.distribution("decord")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        name = file.name
        if name.startswith("libavcodec"):
            return name.split(".so.", 1)[-1]
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """A JSON-ready description of this machine and the libraries in use."""
    return {
        "cores": usable_cores(),
        "host_cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "ffmpeg": _ffmpeg(),
        "load_average_at_start": load_average(),
    }


def describe(info: dict) -> str:
    """One line for the top of a table."""
    gpu = ", ".join(info["gpus"]) or "no GPU"
    return (
        f"{info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, {gpu}; "
        f"torch {info['versions']['torch']}, torchcodec {info['versions']['torchcodec']}, "
        f"decord {info['versions']['decord']}, cps_ray {info['versions']['cps_ray']}"
    )


def require(module: str, feature: str):
    """Import ``module`` or exit with a message naming it and the ``bench`` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SystemExit(
            f"{feature} needs the '{module}' package, which is not installed ({err}). "
            "Install the benchmark extra: pip install -e '.[bench]' "
            "(or `make bench`), or leave that feature out."
        ) from None
