"""Configuration: :class:`DecodeConfig`, :class:`PatchStreamConfig` and the
one place where ``auto`` backends are resolved.

Both configs are frozen dataclasses validated when built: a bad value raises
:class:`~cps_ray.errors.ConfigError` (a ``CpsRayError`` and a ``ValueError``)
naming the field, echoing the value and listing what is allowed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Literal, get_args

from . import _devices as devices
from ._guards import frames_too_large
from .errors import ConfigError

Backend = Literal["auto", "cpu", "gpu"]
UniformStrategy = Literal["auto", "index", "time", "keyframe"]
OutputDtype = Literal["bf16", "fp16", "fp32"]
Selection = Literal["energy", "random", "uniform"]
Motion = Literal["global", "none"]

# DCI 8K, 8192 x 4320: every real camera and codec level fits under it.
DEFAULT_MAX_PIXELS = 8192 * 4320
DEFAULT_DECODE_TIMEOUT_S = 600.0

BACKENDS: tuple[str, ...] = get_args(Backend)
UNIFORM_STRATEGIES: tuple[str, ...] = get_args(UniformStrategy)
OUTPUT_DTYPES: tuple[str, ...] = get_args(OutputDtype)
SELECTIONS: tuple[str, ...] = get_args(Selection)
MOTIONS: tuple[str, ...] = get_args(Motion)

# Fields of the seed API that were split per stage; there is no shim.
_REMOVED_FIELDS = {
    "backend": "decode_backend and process_backend",
    "device_id": "decode_device_id and process_device_id",
}


def _choices(values: tuple[str, ...]) -> str:
    return "Supported values are " + ", ".join(repr(v) for v in values) + "."


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(field, value, _choices(allowed))


def _check_int(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, value, f"It must be an int >= {minimum}.")
    if value < minimum:
        raise ConfigError(field, value, f"It must be an int >= {minimum}.")


def _reject_removed_fields(cls):
    """Make the removed seed fields fail with a TypeError that says what replaced them."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for old, new in _REMOVED_FIELDS.items():
            if old in kwargs:
                raise TypeError(
                    f"{cls.__name__}() got the removed field {old!r}; use {new} instead."
                )
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@_reject_removed_fields
@dataclass(frozen=True)
class DecodeConfig:
    """How to decode one video into ``sequence_length`` uniform frames.

    Attributes:
        video_path: the file to decode; ``None`` in configs handed to
            ``local_stream``/``patch_dataset``, where each input brings its path.
        sequence_length: T, the number of frames sampled uniformly. The
            frames (uint8 ``T x 3 x S x S``) may take at most
            ``cps_ray._guards.MAX_FRAMES_BYTES`` (16 GiB;
            ``CPS_RAY_MAX_FRAMES_BYTES`` overrides it), checked here where
            ``input_size`` is set, else when the video's size is known.
        decode_backend: ``"auto"`` (gpu where CUDA is available, else cpu),
            ``"cpu"`` (FFmpeg through torchcodec) or ``"gpu"`` (NVDEC).
        decode_device_id: CUDA device index for ``decode_backend="gpu"``,
            among the devices visible to this process.
        uniform_strategy: which frames represent the video, see
            :mod:`cps_ray._sampling`: ``"auto"``, ``"index"`` or ``"time"``
            (exact), or ``"keyframe"`` (per uniform target, the cheapest frame
            to decode within half a sampling interval, see :mod:`cps_ray._decode.packets`).
        input_size: ``None`` keeps the native resolution; an int S resizes
            the short side to S (bilinear, antialiased) and center-crops S x S.
        ffmpeg_threads: threads one video's decoding may use; 0 picks
            ``cores // concurrent videos`` so parallel decodes do not
            oversubscribe the machine. A long video spends them on
            decoders side by side (segments of its plan), a short one on
            FFmpeg's threads (``docs/decoding.md``).
        max_pixels: the largest decoded frame (width x height) accepted;
            a larger video is a ``DecodeError`` before any frame is decoded.
            The default fits DCI 8K (8192 x 4320); ``None`` removes the cap.
        decode_timeout_s: seconds one video may take; past it the video is a
            ``DecodeError`` ("timed out"). In-process decoding checks it
            between frames; the isolated workers of ``local_stream``, the
            pipeline and the job also kill a decoder that hangs in native
            code. ``None`` waits forever.
    """

    video_path: str | None = None
    sequence_length: int = 16
    decode_backend: Backend = "auto"
    decode_device_id: int = 0
    uniform_strategy: UniformStrategy = "auto"
    input_size: int | None = None
    ffmpeg_threads: int = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    decode_timeout_s: float | None = DEFAULT_DECODE_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.video_path is not None:
            if not isinstance(self.video_path, str):
                # Accept os.PathLike, store the plain string.
                try:
                    import os

                    object.__setattr__(self, "video_path", os.fspath(self.video_path))
                except TypeError:
                    raise ConfigError(
                        "video_path", self.video_path, "It must be a str, a path, or None."
                    ) from None
        _check_int("sequence_length", self.sequence_length, 1)
        _check_choice("decode_backend", self.decode_backend, BACKENDS)
        _check_int("decode_device_id", self.decode_device_id, 0)
        _check_choice("uniform_strategy", self.uniform_strategy, UNIFORM_STRATEGIES)
        if self.input_size is not None:
            _check_int("input_size", self.input_size, 1)
            size = self.input_size
            too_large = frames_too_large(self.sequence_length, size, size, machine=False)
            if too_large is not None:
                raise ConfigError("sequence_length", self.sequence_length, f"Its {too_large}.")
        _check_int("ffmpeg_threads", self.ffmpeg_threads, 0)
        if self.max_pixels is not None:
            _check_int("max_pixels", self.max_pixels, 1)
        if self.decode_timeout_s is not None:
            t = self.decode_timeout_s
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
                raise ConfigError(
                    "decode_timeout_s", t, "It must be a number of seconds > 0, or None."
                )

    def require_path(self) -> str:
        if self.video_path is None:
            raise ConfigError(
                "video_path", None, "decode_only and patch_stream need video_path set."
            )
        return self.video_path

    def decode_fields(self) -> dict:
        """The DecodeConfig fields of this config (drops the process-stage ones)."""
        return {f.name: getattr(self, f.name) for f in fields(DecodeConfig)}


@_reject_removed_fields
@dataclass(frozen=True)
class PatchStreamConfig(DecodeConfig):
    """Decode plus patch selection: every :class:`DecodeConfig` field and

    Attributes:
        input_size: S, frames are resized and center-cropped to S x S (224).
        process_backend: ``"auto"`` (follows the resolved decode backend),
            ``"cpu"`` (Numba) or ``"gpu"`` (Numba CUDA).
        process_device_id: CUDA device index for ``process_backend="gpu"``.
        patch_size: p; S must be a multiple of p.
        k_keep: patches kept per video, ``1 <= k_keep <= T * (S/p)**2``.
        output_dtype: dtype of ``patches``: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        selection: which patches are kept: ``"energy"`` (the ``k_keep``
            largest energies), or the ablation baselines ``"random"`` (seeded
            per video from its path and ``selection_seed``) and ``"uniform"``
            (a rolling grid, ``k_keep / T`` per frame); see :mod:`cps_ray._baselines`.
        selection_seed: an int >= 0 mixed into the random baseline's per-video seed.
        motion: ``"global"`` (the energy is the residual after the clip's
            global camera motion, estimated once per clip: pans and zooms
            no longer spread it over every patch) or ``"none"`` (the residual
            against the same pixels of the frame before); see
            ``docs/selection.md``. Rows carry the motion as ``meta_motion``.
    """

    input_size: int | None = 224
    process_backend: Backend = "auto"
    process_device_id: int = 0
    patch_size: int = 14
    k_keep: int = 2048
    output_dtype: OutputDtype = "bf16"
    selection: Selection = "energy"
    selection_seed: int = 0
    motion: Motion = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.input_size is None:
            raise ConfigError(
                "input_size", None, "patch_stream needs an int: frames are scored at S x S."
            )
        _check_choice("process_backend", self.process_backend, BACKENDS)
        _check_int("process_device_id", self.process_device_id, 0)
        _check_int("patch_size", self.patch_size, 1)
        if self.input_size % self.patch_size != 0:
            raise ConfigError(
                "input_size",
                self.input_size,
                f"It must be a multiple of patch_size ({self.patch_size}).",
            )
        _check_int("k_keep", self.k_keep, 1)
        if self.k_keep > self.total_patches:
            raise ConfigError(
                "k_keep",
                self.k_keep,
                f"It must be between 1 and sequence_length * (input_size / patch_size)**2 "
                f"= {self.sequence_length} * {self.grid_size}**2 = {self.total_patches}.",
            )
        _check_choice("output_dtype", self.output_dtype, OUTPUT_DTYPES)
        _check_choice("selection", self.selection, SELECTIONS)
        _check_int("selection_seed", self.selection_seed, 0)
        _check_choice("motion", self.motion, MOTIONS)

    @property
    def grid_size(self) -> int:
        """G = input_size / patch_size patches per side."""
        return self.input_size // self.patch_size

    @property
    def total_patches(self) -> int:
        """T * G**2, the number of patches scored per video."""
        return self.sequence_length * self.grid_size**2


@dataclass(frozen=True)
class ResolvedBackends:
    """What ``auto`` became on this node, recorded on every result and row.

    decode_fallback: why ``auto`` decodes on the CPU of a node where torch
    sees CUDA (torchcodec cannot decode there, see
    :func:`cps_ray._devices.nvdec_problem`); ``None`` otherwise. A worker
    that runs only the select half leaves the decode fields at what the
    config asks (``auto`` is not probed there).
    """

    decode_backend: Literal["cpu", "gpu"]
    decode_device: str
    process_backend: Literal["cpu", "gpu"] | None = None
    process_device: str | None = None
    decode_fallback: str | None = None


def resolve_decode(requested: str, device_id: int) -> tuple[Literal["cpu", "gpu"], str | None]:
    """``(backend, fallback)``: ``auto`` -> gpu where CUDA is available on this
    node and torchcodec can decode on it, else cpu; ``fallback`` says why
    ``auto`` chose cpu although torch sees CUDA.

    An explicit ``gpu`` (or an ``auto`` that chose gpu) is checked against
    the devices this process sees; an explicit ``gpu`` that torchcodec cannot
    decode on raises :class:`~cps_ray.errors.NvdecUnavailableError`. Only
    ``auto`` may choose.
    """
    _check_choice("decode_backend", requested, BACKENDS)
    if requested == "auto":
        resolved = "gpu" if devices.cuda_available() else "cpu"
    else:
        resolved = requested
    if resolved != "gpu":
        return resolved, None
    _check_gpu("decode", requested, device_id)
    problem = devices.nvdec_problem(device_id)
    if problem is None:
        return "gpu", None
    if requested != "auto":
        from .errors import NvdecUnavailableError

        raise NvdecUnavailableError(device_id, problem)
    return "cpu", problem


def _check_gpu(stage: str, requested: str, device_id: int) -> None:
    from .errors import DeviceUnavailableError

    count = devices.cuda_device_count()
    if count == 0:
        raise DeviceUnavailableError(f"{stage}_backend", requested, devices.describe_node())
    if device_id >= count:
        raise DeviceUnavailableError(f"{stage}_device_id", device_id, devices.describe_node())


def resolve_process_backend(
    requested: str, device_id: int, resolved_decode: str
) -> Literal["cpu", "gpu"]:
    """``auto`` -> the resolved decode backend; explicit gpu is checked."""
    _check_choice("process_backend", requested, BACKENDS)
    resolved = resolved_decode if requested == "auto" else requested
    if resolved == "gpu":
        _check_gpu("process", requested, device_id)
    return resolved


def resolve_backends(config: DecodeConfig, *, decode: bool = True,
                     process: bool = True) -> ResolvedBackends:  # fmt: skip
    """Resolve every ``auto`` of ``config`` on this node, in one place.

    A worker that runs one half of a split pipeline resolves that half:
    ``decode=False`` (it only selects) does not probe the decode backend
    here, and ``process_backend="auto"`` follows the config's explicit decode
    backend; ``process=False`` (it only decodes) leaves the process backend
    unresolved (``None``).
    """
    if decode or config.decode_backend == "auto":
        backend, fallback = resolve_decode(config.decode_backend, config.decode_device_id)
    else:
        backend, fallback = config.decode_backend, None
    decode_device = devices.torch_device(backend, config.decode_device_id)
    if not process or not isinstance(config, PatchStreamConfig):
        return ResolvedBackends(backend, decode_device, decode_fallback=fallback)
    chosen = resolve_process_backend(config.process_backend, config.process_device_id, backend)
    return ResolvedBackends(
        backend,
        decode_device,
        chosen,
        devices.torch_device(chosen, config.process_device_id),
        decode_fallback=fallback,
    )
