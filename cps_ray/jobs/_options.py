"""The command-line options the jobs and ``cps-ray`` share: the config, isolation,
actor pools, the Ray address and the preprocess options."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .._config import (
    BACKENDS,
    MOTIONS,
    OUTPUT_DTYPES,
    SELECTIONS,
    UNIFORM_STRATEGIES,
    PatchStreamConfig,
)
from ..errors import JobError
from ..pipeline._isolation import DEFAULT_ISOLATION, DEFAULT_MAX_ATTEMPTS, ISOLATION_MODES
from ..pipeline._output import DEFAULT_ROWS_PER_SHARD

RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int_at_least(text, 0)


# --- inputs and output ------------------------------------------------------


def _warn_relative_in_job(name: str, value: str) -> None:
    if RAY_JOB_ENV in os.environ and "://" not in value and not os.path.isabs(value):
        print(
            f"warning: {name} {value!r} is relative: in a submitted job it resolves "
            f"against the job's copy of its working directory ({os.getcwd()}), not "
            "where you ran 'ray job submit'; pass an absolute path or a URI",
            file=sys.stderr,
        )


# --- command-line options -----------------------------------------------------


def add_config_options(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """The :class:`PatchStreamConfig` flags; ``defaults`` override the
    config's own defaults (``k_keep=None`` means "decided by the caller")."""
    base = {f: getattr(PatchStreamConfig, f) for f in PatchStreamConfig.__dataclass_fields__}
    base.update(defaults)
    group = parser.add_argument_group("patch selection (PatchStreamConfig)")
    ints = (
        ("--sequence-length", "sequence_length", "T", "frames sampled uniformly per video"),
        ("--input-size", "input_size", "S", "frames are resized and center-cropped to S x S"),
        ("--patch-size", "patch_size", "P", "patch side in pixels; must divide S"),
        ("--k-keep", "k_keep", "K", "patches kept per video, 1 <= K <= T * (S/P)**2"),
    )
    for flag, field, metavar, text in ints:
        shown = "see above" if base[field] is None else base[field]
        group.add_argument(
            flag, type=positive_int, default=base[field], metavar=metavar,
            help=f"{text} ({shown})",
        )  # fmt: skip
    choices = (
        ("--output-dtype", "output_dtype", OUTPUT_DTYPES, "dtype of the kept patches"),
        ("--decode-backend", "decode_backend", BACKENDS, "decode on cpu (FFmpeg) or gpu (NVDEC)"),
        ("--process-backend", "process_backend", BACKENDS, "select on cpu or gpu"),
        ("--uniform-strategy", "uniform_strategy", UNIFORM_STRATEGIES, "which frames"),
        (
            "--selection",
            "selection",
            SELECTIONS,
            "which patches: the highest energies, or a baseline for ablations",
        ),
        (
            "--motion",
            "motion",
            MOTIONS,
            "global: the energy compensates camera motion; none: the residual in place",
        ),
    )
    for flag, field, allowed, text in choices:
        group.add_argument(
            flag, choices=allowed, default=base[field],
            help=f"{text} ({base[field]})",
        )  # fmt: skip
    group.add_argument(
        "--selection-seed", type=non_negative_int, default=base["selection_seed"],
        metavar="N", help="mixed into the random baseline's per-video seed "
        f"({base['selection_seed']})",
    )  # fmt: skip
    group.add_argument(
        "--max-pixels", type=_int_or_none, default=base["max_pixels"], metavar="N",
        help="largest frame (width x height) decoded; larger videos are errors; 'none' "
        f"removes the cap ({base['max_pixels']})",
    )  # fmt: skip
    group.add_argument(
        "--decode-timeout", type=_seconds_or_none, default=base["decode_timeout_s"],
        metavar="SECONDS", dest="decode_timeout_s",
        help="a video taking longer becomes an error row; 'none' waits forever "
        f"({base['decode_timeout_s']:g})",
    )  # fmt: skip


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else positive_int(text)


def _seconds_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_isolation_options(parser: argparse.ArgumentParser) -> None:
    """``--isolation`` and ``--max-attempts``: how a crashing or hanging decoder
    is contained (see :mod:`cps_ray.pipeline._isolation`)."""
    parser.add_argument(
        "--isolation", choices=ISOLATION_MODES, default=DEFAULT_ISOLATION,
        help="'process': each worker decodes in a child process, so a decoder crash or "
        "hang costs one video; 'none': in the worker itself (trusted inputs only) "
        f"({DEFAULT_ISOLATION})",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts", type=positive_int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
        help="tries per video when its decoder process dies; then an error row "
        f"({DEFAULT_MAX_ATTEMPTS})",
    )  # fmt: skip


def isolation_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"isolation": args.isolation, "max_attempts": args.max_attempts}


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    """``--decode-pool``, ``--select-pool`` and ``--fuse``: the actor pools of
    :func:`~cps_ray.patch_dataset`, which sizes them to the cluster when unset."""
    group = parser.add_argument_group("actor pools (default: sized to the cluster)")
    group.add_argument(
        "--decode-pool", type=positive_int, default=None, metavar="N",
        help="decode actors (fused actors with --fuse)",
    )  # fmt: skip
    group.add_argument(
        "--select-pool", type=positive_int, default=None, metavar="N",
        help="patch-selection actors (split pipelines only)",
    )  # fmt: skip
    group.add_argument(
        "--fuse", action=argparse.BooleanOptionalAction, default=None,
        help="decode and select in the same actor (default: fused for gpu -> gpu on one "
        "device, split otherwise)",
    )  # fmt: skip


def pipeline_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``patch_dataset`` options of :func:`add_isolation_options` and
    :func:`add_pool_options`; an unset pool option keeps the default."""
    pools = {"decode_pool": args.decode_pool, "select_pool": args.select_pool, "fuse": args.fuse}
    return {**isolation_from_args(args), **{k: v for k, v in pools.items() if v is not None}}


def config_from_args(args: argparse.Namespace, **overrides: Any) -> PatchStreamConfig:
    """The config the flags of :func:`add_config_options` describe.

    Raises:
        ConfigError: an invalid combination (``k_keep`` too large, ``S``
            not a multiple of ``P``...).
    """
    values = {
        "sequence_length": args.sequence_length,
        "input_size": args.input_size,
        "patch_size": args.patch_size,
        "k_keep": args.k_keep,
        "output_dtype": args.output_dtype,
        "decode_backend": args.decode_backend,
        "process_backend": args.process_backend,
        "uniform_strategy": args.uniform_strategy,
        "selection": args.selection,
        "selection_seed": args.selection_seed,
        "motion": args.motion,
        "max_pixels": args.max_pixels,
        "decode_timeout_s": args.decode_timeout_s,
    }
    values.update(overrides)
    return PatchStreamConfig(**values)


def add_address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: 'auto' (the one 'ray start' made on this machine), "
        "HOST:6379, or ray://HOST:10001. Default: $RAY_ADDRESS when set (as in a job "
        "submitted with 'ray job submit'), else start a local Ray",
    )


def add_preprocess_options(parser: argparse.ArgumentParser, *, positional: bool) -> None:
    """IN, OUT (``--input``/``--output`` or positional), the config flags,
    ``--rows-per-shard``, ``--resume`` and ``--address``."""
    in_help = "a folder (searched recursively), a manifest (.txt/.csv/.parquet) or a glob"
    out_help = "output folder or URI (s3://..., gs://...): shards/, errors.parquet, manifest.json"
    if positional:
        parser.add_argument("input", metavar="IN", help=in_help)
        parser.add_argument("output", metavar="OUT", help=out_help)
    else:
        parser.add_argument("--input", required=True, metavar="IN", help=in_help)
        parser.add_argument("--output", required=True, metavar="OUT", help=out_help)
    parser.add_argument(
        "--rows-per-shard", type=positive_int, default=DEFAULT_ROWS_PER_SHARD, metavar="N",
        help=f"rows per write, so about that many videos per Parquet shard "
        f"({DEFAULT_ROWS_PER_SHARD})",
    )  # fmt: skip
    parser.add_argument(
        "--resume",
        action="store_true",
        help="add to OUT: skip the inputs it already has (in a shard or in the errors "
        "table) and number new shards after the existing ones; no shard is rewritten",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: decode again the inputs whose failure a rerun may cure "
        "(error kinds timeout, crashed, remote); corrupt or unsupported videos stay",
    )
    add_address_option(parser)
    add_isolation_options(parser)
    add_pool_options(parser)
    add_config_options(parser)


# --- Ray --------------------------------------------------------------------------


def check_address(address: str | None) -> None:
    if address is not None and address.lower().startswith(("http://", "https://")):
        raise JobError(
            f"--address {address!r} is a dashboard (job submission) address; use the "
            "cluster's address (HOST:6379, auto, ray://HOST:10001), or submit the job: "
            f"ray job submit --address {address} --working-dir . -- python jobs/preprocess.py ..."
        )


def add_pipeline_flags(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Every flag a job that runs the pipeline takes: the config
    (:func:`add_config_options`, ``defaults`` overriding its defaults), the
    isolation, the actor pools and the Ray address."""
    add_address_option(parser)
    add_isolation_options(parser)
    add_pool_options(parser)
    add_config_options(parser, **defaults)


def pipeline_from_flags(args: argparse.Namespace) -> tuple[PatchStreamConfig, dict[str, Any]]:
    """``(config, patch_dataset options)`` from :func:`add_pipeline_flags`'s flags."""
    return config_from_args(args), pipeline_options_from_args(args)
