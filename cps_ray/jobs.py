"""What ``jobs/preprocess.py``, ``jobs/train_stream.py`` and ``cps-ray
preprocess`` share: finding the inputs, the config options of the command
line, connecting to Ray, and preprocessing into shards with resume.

``run_preprocess`` runs the same way in three places: under ``ray job submit``
(the driver joins the job's cluster through ``RAY_ADDRESS``), with
``--address`` (joins that cluster), and alone (starts a local Ray). Paths are
data: they are listed, globbed and handed to the decoders, never to a shell.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from .config import BACKENDS, OUTPUT_DTYPES, SELECTIONS, UNIFORM_STRATEGIES, PatchStreamConfig
from .errors import ConfigError, CpsRayError, JobError
from .media import VIDEO_EXTENSIONS, find_videos
from .pipeline.inputs import (
    MANIFEST_SUFFIXES,
    is_manifest,
    is_uri,
    list_uri,
    read_manifest,
    tidy,
)
from .pipeline.isolation import DEFAULT_ISOLATION, DEFAULT_MAX_ATTEMPTS, ISOLATION_MODES
from .pipeline.lock import output_lock
from .pipeline.rows import row_path
from .pipeline.shards import (
    EnergyRuleError,
    OutputRoot,
    WrittenOutput,
    check_energy_rule,
    is_transient,
    read_errors,
    read_output,
    write_shards,
)
from .remote import redact

GLOB_CHARACTERS = "*?["
# Fields that shape the rows: a resumed output must keep them.
OUTPUT_FIELDS = (
    "sequence_length",
    "input_size",
    "patch_size",
    "k_keep",
    "output_dtype",
    "uniform_strategy",
    "selection",
    "selection_seed",
)
DEFAULT_ROWS_PER_SHARD = 64
# Failed videos listed at the end of a run; the errors table has them all.
MAX_LISTED_FAILURES = 20
# Set by Ray's job supervisor in the environment of a submitted driver.
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


def _dedupe(paths: list[str]) -> list[str]:
    return list(dict.fromkeys(tidy(p) for p in paths))


def find_inputs(spec: str | os.PathLike) -> list[str]:
    """The videos ``spec`` names, as absolute paths (manifest URIs kept).

    ``spec`` is a folder (searched recursively for video extensions, sorted),
    a manifest (``.txt`` one path per line, ``.csv``/``.parquet`` with a
    ``path`` column; its order is kept), a glob (``'videos/**/*.mp4'``,
    sorted) or one video file. Duplicates are dropped, first one kept.

    Raises:
        JobError: ``spec`` names nothing, or no video.
    """
    spec = os.fspath(spec)
    if is_uri(spec):
        try:
            paths = read_manifest(spec) if is_manifest(spec) else list_uri(spec, VIDEO_EXTENSIONS)
        except ConfigError as err:
            raise JobError(f"input {redact(spec)!r}: {err.allowed}") from None
        if not paths:
            raise JobError(f"no video files found under {redact(spec)!r}")
        return _dedupe(paths)
    if os.path.isdir(spec):
        paths = [os.path.abspath(p) for p in find_videos(spec)]
        if not paths:
            raise JobError(f"no video files found under {spec!r}")
        return _dedupe(paths)
    if os.path.isfile(spec):
        if is_manifest(spec):
            paths = read_manifest(spec)
            if not paths:
                raise JobError(f"manifest {spec!r} lists no videos")
            return _dedupe(paths)
        return [os.path.abspath(spec)]
    if any(ch in spec for ch in GLOB_CHARACTERS):
        matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not matches:
            raise JobError(f"no files match {spec!r}")
        return _dedupe([os.path.abspath(p) for p in matches])
    raise JobError(
        f"input {spec!r} does not exist; IN is a folder, a manifest "
        f"({', '.join(MANIFEST_SUFFIXES)}) or a glob"
    )


def resolve_output(output: str | os.PathLike) -> str:
    """A local folder as an absolute path (created), or a URI as given.

    Raises:
        JobError: the folder cannot be made, or the URI's filesystem cannot
            be reached.
    """
    output = os.fspath(output)
    if "://" in output:
        import pyarrow.fs as pafs

        try:
            pafs.FileSystem.from_uri(output)
        except Exception as err:  # pyarrow raises several types for bad URIs
            raise JobError(f"output {output!r}: {' '.join(str(err).split())}") from None
        return output
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise JobError(f"output {output!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise JobError(f"output {output!r}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise JobError(f"output {output!r}: permission denied")
    return path


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
    is contained (see :mod:`cps_ray.pipeline.isolation`)."""
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
        help=f"videos per Parquet shard ({DEFAULT_ROWS_PER_SHARD})",
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
        help="with --resume: decode again the inputs that failed for reasons a rerun may "
        "cure (timeouts, crashed decoders, remote I/O); not-a-video failures stay",
    )
    add_address_option(parser)
    add_isolation_options(parser)
    add_config_options(parser)


# --- Ray --------------------------------------------------------------------------


def check_address(address: str | None) -> None:
    if address is not None and address.lower().startswith(("http://", "https://")):
        raise JobError(
            f"--address {address!r} is a dashboard (job submission) address; use the "
            "cluster's address (HOST:6379, auto, ray://HOST:10001), or submit the job: "
            f"ray job submit --address {address} --working-dir . -- python jobs/preprocess.py ..."
        )


def connect_ray(address: str | None = None) -> None:
    """Join Ray: the process's Ray if it has one already; else ``address``;
    else ``$RAY_ADDRESS`` (set in submitted jobs); else a new local Ray."""
    import ray

    if ray.is_initialized():
        return
    check_address(address)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # Never join some other cluster of this machine by accident.
        address = "local"
    ray.init(address=address)


# --- preprocess ---------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessPlan:
    """What a run will do: ``todo`` are the inputs not in ``output`` yet;
    ``written`` is what the output held when the run was planned."""

    inputs: tuple[str, ...]
    todo: tuple[str, ...]
    output: str
    resume: bool
    written: WrittenOutput
    retry: tuple[str, ...] = ()  # failed inputs decoded again (--retry-failed)

    @property
    def skipped(self) -> int:
        return len(self.inputs) - len(self.todo)

    @property
    def nothing_to_write(self) -> bool:
        """Every input is in the output, and its manifest and errors table
        already describe it (a killed run may have left them out)."""
        manifest = self.written.manifest
        return (
            not self.todo
            and manifest is not None
            and self.written.has_errors_file
            and manifest.get("shards") == list(self.written.shards)
            and manifest.get("failed") == len(self.written.error_paths)
        )


def _check_same_config(manifest: dict[str, Any] | None, config: PatchStreamConfig) -> None:
    written = (manifest or {}).get("config") or {}
    changed = [
        f"{field}={written[field]!r} there, {getattr(config, field)!r} now"
        for field in OUTPUT_FIELDS
        if field in written and written[field] != getattr(config, field)
    ]
    if changed:
        raise JobError(
            "--resume needs the settings the output was written with: "
            + "; ".join(changed)
            + " (use the same flags, or a new OUT)"
        )


def plan_preprocess(
    input_spec: str | os.PathLike, output: str | os.PathLike, config: PatchStreamConfig,
    *, resume: bool = False, retry_failed: bool = False,
) -> PreprocessPlan:  # fmt: skip
    """Find the inputs, check the output, leave out what it already holds.

    Raises:
        JobError: no inputs; an unusable output; an output that already
            holds a run without ``resume``; ``resume`` with other settings.
    """
    inputs = find_inputs(input_spec)
    out = resolve_output(output)
    try:
        written = read_output(out)
    except OSError as err:
        raise JobError(f"output {os.fspath(output)!r}: cannot read it ({err})") from None
    if not resume:
        if not written.is_empty:
            raise JobError(
                f"output {os.fspath(output)!r} already holds a preprocessing run "
                f"({len(written.shards)} shards); pass --resume to add to it, or choose "
                "another OUT"
            )
        return PreprocessPlan(tuple(inputs), tuple(inputs), out, resume, written)
    try:
        check_energy_rule(written.manifest, os.fspath(output))
    except EnergyRuleError as err:
        raise JobError(f"--resume: {err}") from None
    _check_same_config(written.manifest, config)
    done = written.done_paths
    retry = set()
    if retry_failed:
        pairs = zip(written.error_paths, written.error_reasons)
        retry = {path for path, reason in pairs if is_transient(reason)}
    todo = [p for p in inputs if row_path(p) not in done or row_path(p) in retry]
    retried = tuple(row_path(p) for p in todo if row_path(p) in retry)
    return PreprocessPlan(tuple(inputs), tuple(todo), out, resume, written, retried)


def run_preprocess(
    input_spec: str | os.PathLike,
    output: str | os.PathLike,
    config: PatchStreamConfig,
    *,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    resume: bool = False,
    retry_failed: bool = False,
    address: str | None = None,
    log=print,
    **pool_options: Any,
) -> dict[str, Any]:
    """Preprocess the videos ``input_spec`` names into shards under ``output``.

    Ray is joined (see :func:`connect_ray`) only when there is something to
    do. Returns the manifest :func:`~cps_ray.write_shards` wrote. A resume
    with nothing to do writes nothing: it returns the output's manifest with
    this run's ``inputs``, ``skipped`` and an empty ``run``. A video that
    fails is a row of the errors table, never an exception.
    """
    check_address(address)
    if retry_failed and not resume:
        raise JobError("--retry-failed needs --resume: it decodes again what a run failed on")
    with output_lock(OutputRoot(resolve_output(output))):
        return _run_preprocess(input_spec, output, config, rows_per_shard, resume,
                               retry_failed, address, log, pool_options)  # fmt: skip


def _run_preprocess(input_spec, output, config, rows_per_shard, resume, retry_failed, address,
                    log, pool_options) -> dict[str, Any]:  # fmt: skip
    plan = plan_preprocess(input_spec, output, config, resume=resume, retry_failed=retry_failed)
    log(
        f"preprocess: {len(plan.inputs)} inputs, {plan.skipped} already in the output "
        f"(skipped), {len(plan.todo)} to process -> {plan.output}"
        + (f", {len(plan.retry)} of them failed before and are retried" if plan.retry else "")
    )
    if plan.written.temporaries:
        log(
            f"preprocess: {len(plan.written.temporaries)} half-written files of a killed run "
            "will be deleted (never part of the output)"
        )
    # A killed run's provisional manifest ("complete": false) and leftovers are redone.
    finished = plan.nothing_to_write and plan.written.manifest.get("complete", True)
    if finished and not plan.written.temporaries:
        log("preprocess: nothing to do; the output is left as it is")
        return {
            **plan.written.manifest,
            "inputs": len(plan.inputs),
            "skipped": plan.skipped,
            "run": {"ok": 0, "failed": 0, "new_shards": []},
            "seconds": 0.0,
        }
    ds = None
    if plan.todo:
        connect_ray(address)
        from .pipeline.dataset import patch_dataset

        ds = patch_dataset(list(plan.todo), config, **pool_options)
    return write_shards(
        ds,
        plan.output,
        rows_per_shard=rows_per_shard,
        config=config,
        resume=resume,
        skipped=plan.skipped,
        retry=plan.retry,
    )


def summarize_preprocess(manifest: dict[str, Any], output: str) -> str:
    """The lines a run prints at its end: counts, new shards, failures."""
    run = manifest["run"]
    lines = [
        f"preprocess: this run: {run['ok']} ok, {run['failed']} failed, "
        f"{manifest['skipped']} skipped, {len(run['new_shards'])} new shards "
        f"in {manifest['seconds']:.1f} s",
        f"preprocess: output holds {manifest['ok']} ok in {len(manifest['shards'])} shards "
        f"and {manifest['failed']} failed in {manifest['errors']}: {output}",
    ]
    return "\n".join(lines)


def _new_failures(output: str, count: int) -> list[tuple[str, str]]:
    if count == 0:
        return []
    return read_errors(output)[-count:][:MAX_LISTED_FAILURES]


def preprocess_from_args(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Run :func:`run_preprocess` with the options of :func:`add_preprocess_options`."""
    _warn_relative_in_job("IN", args.input)
    _warn_relative_in_job("OUT", args.output)
    config = config_from_args(args)
    started = time.perf_counter()
    manifest = run_preprocess(
        args.input,
        args.output,
        config,
        rows_per_shard=args.rows_per_shard,
        resume=args.resume,
        retry_failed=args.retry_failed,
        address=args.address,
        log=log,
        **isolation_from_args(args),
    )
    output = args.output if "://" in args.output else os.path.abspath(args.output)
    for path, reason in _new_failures(output, manifest["run"]["failed"]):
        log(f"failed: {reason}" if path in reason else f"failed: {path}: {reason}")
    log(summarize_preprocess(manifest, output))
    log(f"preprocess: wall time {time.perf_counter() - started:.1f} s")
    return manifest


def build_preprocess_parser(prog: str = "preprocess.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Videos -> Parquet shards of patch tokens, an errors table and a manifest. "
            "Runs under 'ray job submit', on a cluster given by --address, or alone "
            "(a local Ray). A video that fails goes to the errors table; the exit "
            "status is non-zero only when the job itself fails."
        ),
    )
    add_preprocess_options(parser, positional=False)
    return parser


def preprocess_main(argv: list[str] | None = None, prog: str = "preprocess.py") -> int:
    """``jobs/preprocess.py``: 0 when the job ran (failed videos included),
    2 for a job that cannot run as asked (one line on stderr)."""
    args = build_preprocess_parser(prog).parse_args(argv)
    return run_entry_point(prog, preprocess_from_args, args)


def run_entry_point(prog: str, run, args: argparse.Namespace) -> int:
    """Run a job's ``run(args)``: 0 when it ran, 2 with one line on stderr
    when it cannot run as asked (a ``CpsRayError``)."""
    try:
        run(args)
    except CpsRayError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0
