"""Preprocessing into shards: planning (with resume and ``--retry-failed``),
connecting to Ray, running under the output's lock, and the summaries.

``run_preprocess`` runs the same way in three places: under ``ray job submit``
(the driver joins the job's cluster through ``RAY_ADDRESS``), with
``--address`` (joins that cluster), and alone (starts a local Ray)."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from .._config import PatchStreamConfig
from .._remote import redact
from ..errors import ConfigError, CpsRayError, JobError
from ..pipeline._inputs import is_manifest
from ..pipeline._listing import is_listing
from ..pipeline._lock import output_lock
from ..pipeline._rows import row_path
from ..pipeline._shards import (
    EnergyRuleError,
    OutputRoot,
    WrittenOutput,
    check_energy_rule,
    done_set,
    iter_errors,
    read_output,
    write_shards,
)
from ._inputs import find_inputs, resolve_output
from ._options import (
    DEFAULT_ROWS_PER_SHARD,
    _warn_relative_in_job,
    add_preprocess_options,
    check_address,
    config_from_args,
    pipeline_options_from_args,
)

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
NOTHING_TO_DO = "preprocess: nothing to do; the output is left as it is"
# Failed videos listed at the end of a run; the errors table has them all.
MAX_LISTED_FAILURES = 20

# Failures a later run may cure: deadlines, crashed or killed decoders, remote I/O.
TRANSIENT_REASONS = ("timed out", "the decoder process died", "decoder process was killed",
                     "did not start", "could not start", "died while starting",
                     "remote read failed", "cannot read the file")  # fmt: skip


def is_transient(reason: str) -> bool:
    """Whether an error row's reason is one ``--retry-failed`` decodes again."""
    return any(marker in reason for marker in TRANSIENT_REASONS)


# Set by Ray's job supervisor in the environment of a submitted driver.
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
        """Every input is in the output, and the output is settled: its
        manifest and errors table describe it (a killed run may have left
        them out)."""
        return not self.todo and self.written.is_settled


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

    The inputs are listed in the driver: :func:`run_preprocess` plans this
    way for a glob or one file, and streams a manifest, a folder or a URI
    prefix instead.

    Raises:
        JobError: no inputs; an unusable output; an output that already
            holds a run without ``resume``; ``resume`` with other settings.
    """
    inputs = find_inputs(input_spec)
    out, written = _check_output(output, config, resume)
    if not resume:
        return PreprocessPlan(tuple(inputs), tuple(inputs), out, resume, written)
    retry = set()
    if retry_failed:
        retry = {path for path, reason in iter_errors(out, written) if is_transient(reason)}
    shown = [row_path(p) for p in inputs]
    done = done_set(out, written, exclude=retry).contains(shown)
    todo = [p for p, d in zip(inputs, done) if not d]
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
    if is_manifest(os.fspath(input_spec)) or is_listing(input_spec):
        return _run_streamed(input_spec, output, config, rows_per_shard, resume, retry_failed,
                             address, log, pool_options)  # fmt: skip
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
    if plan.nothing_to_write:
        log(NOTHING_TO_DO)
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
        from ..pipeline._dataset import patch_dataset

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


def _check_output(output, config, resume: bool) -> tuple[str, WrittenOutput]:
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
        return out, written
    try:
        check_energy_rule(written.manifest, os.fspath(output))
    except EnergyRuleError as err:
        raise JobError(f"--resume: {err}") from None
    _check_same_config(written.manifest, config)
    return out, written


def _run_streamed(spec, output, config, rows_per_shard, resume, retry_failed, address, log,
                  pool_options) -> dict[str, Any]:  # fmt: skip
    """A manifest's, folder's or URI prefix's run: Ray Data reads the
    manifest (or a task's listing, see :mod:`cps_ray.pipeline._listing`) as
    the run goes; the driver holds neither its paths nor the output's (see
    :mod:`.admit`)."""
    from ..pipeline._manifests import ManifestSource

    spec = os.fspath(spec)
    shown = redact(spec)
    if is_manifest(spec):
        try:
            source = ManifestSource(spec)
        except ConfigError as err:
            raise JobError(f"input {shown!r}: {err.allowed}") from None
        if source.size == 0:
            raise JobError(f"manifest {shown!r} lists no videos")
        where = f"inputs from {shown}, read as the run goes"
    else:
        where = f"inputs: the videos under {shown}, listed by a task"
    out, written = _check_output(output, config, resume)
    retry = frozenset()
    if retry_failed:
        pairs = iter_errors(out, written)
        retry = frozenset(path for path, reason in pairs if is_transient(reason))
    log(
        f"preprocess: {where}"
        + (", leaving out what the output holds" if resume else "")
        + f" -> {out}"
    )
    if written.temporaries:
        log(
            f"preprocess: {len(written.temporaries)} half-written files of a killed run "
            "will be deleted (never part of the output)"
        )
    connect_ray(address)
    try:
        if is_manifest(spec):
            ds, counts, skipped = _admitted_manifest(spec, out, retry, config, pool_options)
        else:
            ds, counts = _admitted_listing(spec, out, retry, config, pool_options)
            skipped = counts["skipped"]
    except ConfigError as err:
        if err.field != "inputs":
            raise
        raise JobError(f"input {shown!r}: {err.allowed}") from None
    result = write_shards(ds, out, rows_per_shard=rows_per_shard, config=config, resume=resume,
                          skipped=skipped, retry=retry, screened=True)  # fmt: skip
    log(
        f"preprocess: {counts.get('inputs', 0)} inputs, {counts.get('skipped', 0)} already in "
        f"the output (skipped), {counts.get('inputs', 0) - counts.get('skipped', 0)} processed"
        + (
            f", {counts['retried']} of them failed before and were retried"
            if counts.get("retried")
            else ""
        )  # fmt: skip
    )
    if written.is_settled and not retry and result["run"]["ok"] + result["run"]["failed"] == 0:
        log(NOTHING_TO_DO)
    return result


def _admitted_manifest(spec, out, retry, config, pool_options):
    """A manifest's dataset, its blocks screened by an admission actor
    (:mod:`._admit`) as they are read: ``(dataset, counts, skipped)``
    (``skipped`` reads the actor's counts and fills ``counts``)."""
    from ..pipeline._dataset import build_patch_dataset
    from ._admit import admission, admit_block

    actor = admission(out, retry, pool_options.get("runtime_env"))
    ds = build_patch_dataset(spec, config, (admit_block, {"admission": actor}), pool_options)
    counts: dict[str, int] = {}

    def skipped() -> int:
        import ray

        counts.update(ray.get(actor.totals.remote()))
        return counts.get("skipped", 0)

    return ds, counts, skipped


def _admitted_listing(spec, out, retry, config, pool_options):
    """A folder's or URI prefix's dataset: listed by a task, screened by
    another (:func:`~cps_ray.jobs._admit.admit_listing`) before any actor
    starts: ``(dataset or None when nothing is left, counts)``."""
    from ..pipeline._dataset import build_patch_dataset
    from ..pipeline._manifests import list_on_cluster
    from ._admit import admit_listing

    runtime_env = pool_options.get("runtime_env")
    listing = list_on_cluster(spec, runtime_env)
    todo, counts = admit_listing(listing, out, retry, runtime_env)
    if todo.count == 0:
        return None, counts
    return build_patch_dataset(todo, config, None, pool_options), counts


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
    """The first failures of this run (the last ``count`` rows of the errors table)."""
    if count == 0:
        return []
    written = read_output(output)
    start = max(written.error_rows - count, 0)
    return list(itertools.islice(iter_errors(output, written), start, start + MAX_LISTED_FAILURES))


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
        **pipeline_options_from_args(args),
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
