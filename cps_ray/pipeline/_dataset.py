"""``patch_dataset``: the Ray Data pipeline. One fused actor pool (decode and
select in each actor) for cpu -> cpu and gpu -> gpu on one device, else a
decode actor pool then a patch-selection actor pool, placed by the split
backend config (``docs/pipeline.md``).

Each stage declares its resources in a :class:`StageResources`; one adapter,
:func:`map_batches_kwargs`, maps that onto ``map_batches`` arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._config import PatchStreamConfig
from .._stderr import drop_ray_53727
from ..errors import ConfigError, DeviceUnavailableError
from ._inputs import input_dataset
from ._isolation import DEFAULT_ISOLATION, DEFAULT_MAX_ATTEMPTS, check_isolation
from ._stages import DecodeStage, FusedStage, SelectStage
from ._worker import check_stream_config

# Fractional GPU shares: several decode actors share one GPU's NVDEC engines.
# Eight per GPU keep a Hopper's seven engines (or an Ada's few) busy; one
# actor decodes one video at a time.
DEFAULT_DECODE_GPU_SHARE = 0.125
DEFAULT_SELECT_GPU_SHARE = 0.25
# Selection costs a few percent of decoding; its CPU actors need little.
DEFAULT_SELECT_CPU_SHARE = 0.5
# patch_dataset options that are not resources.
EXTRA_OPTIONS = {"preserve_order", "isolation", "max_attempts", "runtime_env"}


@dataclass(frozen=True)
class StageResources:
    """What one stage's actors ask for, and how many there are.

    pool: a fixed pool size, or ``(min, max)`` for an autoscaling pool.
    """

    name: str
    num_cpus: float
    num_gpus: float
    pool: int | tuple[int, int]


def map_batches_kwargs(resources: StageResources, videos_per_block: int) -> dict:
    import ray.data

    pool = resources.pool
    compute = (
        ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1])
        if isinstance(pool, tuple)
        else ray.data.ActorPoolStrategy(size=pool)
    )
    kwargs = {
        "compute": compute,
        "batch_size": videos_per_block,
        "batch_format": "numpy",
        "num_cpus": resources.num_cpus,
    }
    if resources.num_gpus:
        kwargs["num_gpus"] = resources.num_gpus
    return kwargs


@dataclass(frozen=True)
class PipelinePlan:
    """How ``patch_dataset`` lays the stages out on this cluster."""

    fused: bool
    stages: tuple[StageResources, ...]
    videos_per_block: int


def _check_pool(name: str, value) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v >= 1 for v in value)
        and value[0] <= value[1]
    )
    if not ok:
        raise ConfigError(name, value, "It must be an int >= 1 or a (min, max) tuple.")


def default_fuse(config: PatchStreamConfig, decode_gpu: bool, process_gpu: bool,
                 select_options: tuple) -> bool:  # fmt: skip
    """Whether a plan fuses decode and select into one actor when ``fuse``
    is not given: where both run on the CPU (unless a select option asks for a
    pool of its own), and gpu -> gpu on one device: the frames never leave
    the process that decoded them (nor its device), and no second pool of
    actors starts. cpu -> gpu and gpu -> cpu stay split: each stage is sized
    to its device. The measurements behind it: ``docs/pipeline.md``."""
    if decode_gpu != process_gpu:
        return False
    if decode_gpu:
        return config.decode_device_id == config.process_device_id
    return all(option is None for option in select_options)


def plan_pipeline(
    config: PatchStreamConfig,
    cluster: dict[str, float],
    *,
    decode_pool=None,
    select_pool=None,
    decode_num_cpus: float | None = None,
    decode_num_gpus: float | None = None,
    select_num_cpus: float | None = None,
    select_num_gpus: float | None = None,
    videos_per_block: int = 8,
    fuse: bool | None = None,
    reserve_cpus: float = 0.0,
    reserve_gpus: float = 0.0,
) -> PipelinePlan:
    """Resources per stage from the split config and the cluster's resources.

    One fused pool (decode and select in each actor) for cpu -> cpu, unless a
    ``select_*`` option asks for a select pool, and for gpu -> gpu on one
    device (:func:`default_fuse`); ``fuse=False`` splits any config into a
    decode pool and a select pool. A fused CPU actor holds one CPU (one video
    at a time, one FFmpeg and one Numba thread), one per CPU of the cluster.

    ``auto`` asks for GPUs when the cluster has them; each actor still
    resolves ``auto`` on its own node when it starts. ``reserve_cpus`` and
    ``reserve_gpus`` are held back for other work on the cluster (Ray Train
    workers): the pools are sized to what is left, and reserved GPUs are never
    offered to decode actors.
    """
    for name, value in (("reserve_cpus", reserve_cpus), ("reserve_gpus", reserve_gpus)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(name, value, "It must be a number >= 0.")
    cpus = float(cluster.get("CPU", 1.0)) - reserve_cpus
    gpus = max(float(cluster.get("GPU", 0.0)) - reserve_gpus, 0.0)
    if cpus < 0.5:
        raise ConfigError(
            "reserve_cpus", reserve_cpus,
            f"The cluster has {cluster.get('CPU', 0)} CPUs; the pipeline needs at least "
            "0.5 left to run.",
        )  # fmt: skip
    if not isinstance(videos_per_block, int) or videos_per_block < 1:
        raise ConfigError("videos_per_block", videos_per_block, "It must be an int >= 1.")
    for name, requested in (
        ("decode_backend", config.decode_backend),
        ("process_backend", config.process_backend),
    ):
        if requested == "gpu" and gpus == 0:
            raise DeviceUnavailableError(name, "gpu", "the Ray cluster declares no GPU")
    decode_gpu = config.decode_backend == "gpu" or (config.decode_backend == "auto" and gpus > 0)
    if decode_num_gpus is not None:
        decode_gpu = decode_num_gpus > 0
    process_gpu = config.process_backend == "gpu" or (
        config.process_backend == "auto" and decode_gpu
    )
    if select_num_gpus is not None:
        process_gpu = process_gpu and select_num_gpus > 0
    if fuse is None:
        fuse = default_fuse(config, decode_gpu, process_gpu,
                            (select_pool, select_num_cpus, select_num_gpus))  # fmt: skip

    if fuse:
        share = decode_num_gpus or (DEFAULT_DECODE_GPU_SHARE if decode_gpu else 0.0)
        per_actor_cpus = decode_num_cpus or 1.0
        default_pool = max(1, int(gpus / share)) if share else max(1, int(cpus // per_actor_cpus))
        pool = decode_pool or min(default_pool, max(1, int(cpus // per_actor_cpus)))
        _check_pool("decode_pool", pool)
        fused = StageResources("fused", per_actor_cpus, share, pool)
        return PipelinePlan(True, (fused,), videos_per_block)

    if process_gpu:
        s_gpus = select_num_gpus or DEFAULT_SELECT_GPU_SHARE
        s_cpus = select_num_cpus if select_num_cpus is not None else 0.5
        s_pool = select_pool or max(1, int(gpus))
    else:
        s_gpus = 0.0
        s_cpus = select_num_cpus if select_num_cpus is not None else DEFAULT_SELECT_CPU_SHARE
        s_pool = select_pool or max(1, int(cpus // 16))
    _check_pool("select_pool", s_pool)
    s_max = s_pool[1] if isinstance(s_pool, tuple) else s_pool

    if decode_gpu:
        d_gpus = decode_num_gpus or DEFAULT_DECODE_GPU_SHARE
        d_cpus = decode_num_cpus or 1.0
        d_default = max(1, int(gpus / d_gpus))
    else:
        d_gpus = 0.0
        d_default = max(1, int(cpus))
        left = max(cpus - s_cpus * s_max, 0.1 * d_default)
        d_cpus = decode_num_cpus or math.floor(100 * left / d_default) / 100
    d_pool = decode_pool or d_default
    _check_pool("decode_pool", d_pool)
    stages = (
        StageResources("decode", d_cpus, d_gpus, d_pool),
        StageResources("select", s_cpus, s_gpus, s_pool),
    )
    return PipelinePlan(False, stages, videos_per_block)


def patch_dataset(inputs, config: PatchStreamConfig, **pool_options):
    """A lazy ``ray.data.Dataset`` with one row per input video.

    Args:
        inputs: a list of paths, a manifest (``.txt``/``.csv``/``.parquet``,
            local or at a URI: read by Ray Data while the pipeline runs, never
            loaded into the driver), a folder or a URI prefix (its videos,
            sorted, listed by a task on the driver's node, then read the
            same way), a glob or one video file (listed in the driver), or a
            ``ray.data.Dataset`` with a ``path``
            column (its paths are collected first: its own stages may need
            the CPUs the pools take).
        config: a :class:`PatchStreamConfig` with ``video_path=None``.
        pool_options: ``decode_pool``, ``select_pool`` (int or ``(min, max)``),
            ``decode_num_cpus``, ``decode_num_gpus``, ``select_num_cpus``,
            ``select_num_gpus``, ``videos_per_block`` (8; fewer for short
            inputs, so every decode actor gets work), ``fuse`` (None: one
            fused pool for cpu -> cpu and for gpu -> gpu on one device, see
            :func:`plan_pipeline`; False: a decode and a select pool), ``reserve_cpus`` and
            ``reserve_gpus`` (0: resources the pools leave to other work,
            e.g. Ray Train workers; reserved GPUs never decode), ``preserve_order`` (True),
            ``isolation`` (``"process"``: decoders run in a child process of
            each decode actor, so a crash or hang costs one video, see
            :mod:`cps_ray.pipeline._isolation`; ``"none"``: in the actor,
            with bounded task retries), ``max_attempts`` (2), and
            ``runtime_env`` (for every stage's actors, e.g. ``env_vars``).

    Rows are those of :func:`cps_ray.local_stream`, bit for bit; a failed
    video is a row with ``error`` set. Defaults fill the cluster's CPUs once:
    on a CPU cluster one fused actor per CPU.
    """
    return build_patch_dataset(inputs, config, None, pool_options)


def build_patch_dataset(inputs, config: PatchStreamConfig, admit, pool_options: dict):
    """:func:`patch_dataset`, with ``admit`` (``None``, or a ``(function,
    kwargs)`` pair) run on each block of input paths before decoding, in the
    task that read it: it returns the paths to decode (a job leaves out what
    its output holds this way). ``inputs`` may also be a
    :class:`~cps_ray.pipeline._inputs.Listing` a job has screened."""
    import ray

    pool_options = dict(pool_options)

    check_stream_config(config)
    preserve_order = pool_options.pop("preserve_order", True)
    isolation = pool_options.pop("isolation", DEFAULT_ISOLATION)
    max_attempts = pool_options.pop("max_attempts", DEFAULT_MAX_ATTEMPTS)
    check_isolation(isolation, max_attempts)
    remote_args = {}
    runtime_env = pool_options.pop("runtime_env", None)
    if runtime_env is not None:
        remote_args["runtime_env"] = runtime_env
    if isolation == "none":
        # A crash kills the actor itself; Ray would restart it and retry the
        # block forever. Bounded retries make a poison file fail the run.
        remote_args["max_task_retries"] = max_attempts - 1
    known = {
        "decode_pool", "select_pool", "decode_num_cpus", "decode_num_gpus",
        "select_num_cpus", "select_num_gpus", "videos_per_block", "fuse",
        "reserve_cpus", "reserve_gpus",
    }  # fmt: skip
    unknown = set(pool_options) - known
    if unknown:
        raise TypeError(
            f"patch_dataset() got unknown pool options {sorted(unknown)}; "
            f"known: {sorted(known | EXTRA_OPTIONS)}"
        )
    if not ray.is_initialized():
        ray.init()
    drop_ray_53727()  # this process creates the pools' actors: see cps_ray._stderr
    plan = plan_pipeline(config, ray.cluster_resources(), **pool_options)
    pool = plan.stages[0].pool
    actors = pool[1] if isinstance(pool, tuple) else pool
    ds, per_block = input_dataset(inputs, plan.videos_per_block, actors, runtime_env)
    ds.context.execution_options.preserve_order = bool(preserve_order)
    if admit is not None:
        admit_fn, admit_kwargs = admit
        # Block by block (no batch_size), task pool, no CPU: Ray Data fuses it
        # into the read tasks.
        ds = ds.map_batches(
            admit_fn,
            fn_kwargs=admit_kwargs,
            compute=ray.data.TaskPoolStrategy(size=1),
            num_cpus=0,
            batch_size=None,
            batch_format="pyarrow",
            **({"runtime_env": runtime_env} if runtime_env else {}),
        )
    decoding = {"config": config, "isolation": isolation, "max_attempts": max_attempts}
    if plan.fused:
        (fused,) = plan.stages
        decoding.update(cpus=fused.num_cpus, gpu_share=fused.num_gpus)
        return _map(ds, FusedStage, decoding, fused, per_block, remote_args)
    decode, select = plan.stages
    decoding.update(cpus=decode.num_cpus, gpu_share=decode.num_gpus)
    ds = _map(ds, DecodeStage, decoding, decode, per_block, remote_args)
    return _map(ds, SelectStage, {"config": config}, select, per_block, remote_args)


def _map(ds, stage, constructor_kwargs, resources, per_block, remote_args):
    import warnings

    with warnings.catch_warnings():
        # max_task_retries has no named map_batches parameter yet; the
        # generic remote arguments it travels in warn of a future removal.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            stage,
            fn_constructor_kwargs=constructor_kwargs,
            **map_batches_kwargs(resources, per_block),
            **remote_args,
        )
