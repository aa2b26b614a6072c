"""Preprocessing into shards: check the output, leave out what it holds,
join Ray, run the pipeline into the output's writers, summarise.

``run_preprocess`` runs the same way under ``ray job submit`` (the driver
joins the job's cluster through ``RAY_ADDRESS``), with ``--address`` (joins
that cluster), and alone (starts a local Ray). The driver never holds a
patch: the workers write the shards (:mod:`cps_ray.pipeline._output`).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Any

from .._config import PatchStreamConfig
from .._remote import redact
from .._rows import row_path
from .._store import (
    OutputRoot,
    WrittenOutput,
    check_resumable,
    done_set,
    energy_rule,
    failures_to_retry,
    iter_errors,
    output_lock,
    read_output,
)
from ..errors import ConfigError, CpsRayError, EnergyRuleError, JobError
from ..pipeline._inputs import input_paths, input_spec, list_on_cluster, tidy
from ..pipeline._output import (
    DEFAULT_ROWS_PER_SHARD,
    admit_block,
    screen_listing,
    start_ledger,
    write_shards,
)
from ._options import (
    _warn_relative_in_job,
    add_preprocess_options,
    check_address,
    config_from_args,
    pipeline_options_from_args,
)

# Settings an output's rows depend on: a resume must use the same.
OUTPUT_FIELDS = ("sequence_length", "input_size", "patch_size", "k_keep", "output_dtype",
                 "uniform_strategy", "selection", "selection_seed", "motion")  # fmt: skip
NOTHING_TO_DO = "preprocess: nothing to do; the output is left as it is"
# Failed videos listed at the end of a run; the errors table has them all.
MAX_LISTED_FAILURES = 20


def connect_ray(address: str | None = None) -> None:
    """Join Ray: the process's Ray if it has one already; else ``address``;
    else ``$RAY_ADDRESS`` (set in submitted jobs); else a new local Ray."""
    import ray

    if ray.is_initialized():
        return
    check_address(address)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"  # never join some other cluster of this machine by accident
    ray.init(address=address)


def find_inputs(spec: str | os.PathLike) -> list[str]:
    """The videos ``spec`` names (a folder or URI prefix, a manifest, a glob
    or one file), duplicates dropped (the first one kept), in memory.

    Raises:
        JobError: ``spec`` names nothing, or no video.
    """
    try:
        paths = input_paths(os.fspath(spec))
    except ConfigError as err:
        raise JobError(f"input {redact(os.fspath(spec))!r}: {err.allowed}") from None
    if not paths:
        raise JobError(f"input {redact(os.fspath(spec))!r}: the manifest lists no videos")
    return list(dict.fromkeys(tidy(p) for p in paths))


def resolve_output(output: str | os.PathLike) -> str:
    """A local folder as an absolute path (created), or a URI as given.

    Raises:
        JobError: the folder cannot be made, or the URI's filesystem cannot be reached.
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


def _check_output(out: str, given, config, resume: bool) -> WrittenOutput:
    try:
        written = read_output(out)
    except OSError as err:
        raise JobError(f"output {os.fspath(given)!r}: cannot read it ({err})") from None
    if not resume:
        if not written.is_empty:
            raise JobError(
                f"output {os.fspath(given)!r} already holds a preprocessing run "
                f"({len(written.shards)} shards); pass --resume to add to it, or choose "
                "another OUT"
            )
        return written
    try:
        check_resumable(written.manifest, os.fspath(given), energy_rule(config))
    except EnergyRuleError as err:
        raise JobError(f"--resume: {err}") from None
    settings = (written.manifest or {}).get("config") or {}
    changed = [
        f"{field}={settings[field]!r} there, {getattr(config, field)!r} now"
        for field in OUTPUT_FIELDS
        if field in settings and settings[field] != getattr(config, field)
    ]
    if changed:
        raise JobError("--resume needs the settings the output was written with: "
                       + "; ".join(changed) + " (use the same flags, or a new OUT)")  # fmt: skip
    return written


def run_preprocess(input_spec_: str | os.PathLike, output: str | os.PathLike,
                   config: PatchStreamConfig, *, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                   resume: bool = False, retry_failed: bool = False, address: str | None = None,
                   log=print, **pool_options: Any) -> dict[str, Any]:  # fmt: skip
    """Preprocess the videos ``input_spec_`` names into shards under ``output``.

    A manifest, a folder or a URI prefix is streamed (Ray Data reads it as
    the run goes, a ledger actor screens it); a glob or one file is listed
    here. Ray is joined only when there is something to do. Returns the
    manifest. A video that fails is a row of the errors table, never an
    exception; ``retry_failed`` (with ``resume``) decodes again the failures
    a rerun may cure (kinds ``timeout``, ``crashed``, ``remote``).
    """
    check_address(address)
    if retry_failed and not resume:
        raise JobError("--retry-failed needs --resume: it decodes again what a run failed on")
    out = resolve_output(output)
    shown = redact(os.fspath(input_spec_))
    with output_lock(OutputRoot(out)):
        try:
            spec = input_spec(os.fspath(input_spec_))
        except ConfigError as err:
            raise JobError(f"input {shown!r}: {err.allowed}") from None
        written = _check_output(out, output, config, resume)
        retry = failures_to_retry(out, written=written) if retry_failed else frozenset()
        if written.temporaries:
            log(f"preprocess: {len(written.temporaries)} half-written files of a killed run "
                "will be deleted (never part of the output)")  # fmt: skip
        job = _Job(spec, out, written, config, resume, retry, rows_per_shard, address, log,
                   pool_options)  # fmt: skip
        try:
            return job.run()
        except ConfigError as err:
            if err.field != "inputs":
                raise
            raise JobError(f"input {shown!r}: {err.allowed}") from None


class _Job:
    def __init__(self, spec, out, written, config, resume, retry, rows_per_shard, address, log,
                 pool_options):  # fmt: skip
        self.spec, self.out, self.written, self.config = spec, out, written, config
        self.resume, self.retry, self.rows_per_shard = resume, retry, rows_per_shard
        self.address, self.log, self.pool_options = address, log, pool_options

    def write(self, ds, skipped, ledger=None) -> dict[str, Any]:
        return write_shards(ds, self.out, rows_per_shard=self.rows_per_shard, config=self.config,
                            resume=self.resume, skipped=skipped, retry=self.retry, ledger=ledger,
                            runtime_env=self.pool_options.get("runtime_env"))  # fmt: skip

    def run(self) -> dict[str, Any]:
        if self.spec.kind in ("manifest", "folder"):
            return self.streamed()
        inputs = _in_memory(self.spec)
        todo, retried = inputs, ()
        if self.resume:
            shown = [row_path(p) for p in inputs]
            done = done_set(self.out, self.written, exclude=self.retry).contains(shown)
            todo = [p for p, d in zip(inputs, done) if not d]
            retried = [p for p in todo if row_path(p) in self.retry]
        self.log(
            f"preprocess: {len(inputs)} inputs, {len(inputs) - len(todo)} already in the "
            f"output (skipped), {len(todo)} to process -> {self.out}"
            + (f", {len(retried)} of them failed before and are retried" if retried else "")
        )
        if not todo and self.written.is_settled:
            self.log(NOTHING_TO_DO)
            return {**self.written.manifest, "inputs": len(inputs),
                    "skipped": len(inputs), "run": {"ok": 0, "failed": 0, "new_shards": []},
                    "seconds": 0.0}  # fmt: skip
        ds = None
        ledger = None
        if todo:
            connect_ray(self.address)
            from ..pipeline._dataset import patch_dataset

            ds = patch_dataset(todo, self.config, **self.pool_options)
            ledger = start_ledger(self.out, self.retry, screen=False,
                                  runtime_env=self.pool_options.get("runtime_env"))  # fmt: skip
        return self.write(ds, len(inputs) - len(todo), ledger)

    def streamed(self) -> dict[str, Any]:
        """A manifest's, folder's or URI prefix's run: the driver holds neither
        its paths nor the output's."""
        from ..pipeline._dataset import build_patch_dataset
        from ..pipeline._inputs import Manifest

        spec, runtime_env = self.spec, self.pool_options.get("runtime_env")
        shown = redact(spec.value)
        if spec.kind == "manifest":
            if Manifest(spec.value).size == 0:
                raise JobError(f"manifest {shown!r} lists no videos")
            where = f"inputs from {shown}, read as the run goes"
        else:
            where = f"inputs: the videos under {shown}, listed by a task"
        leaving = ", leaving out what the output holds" if self.resume else ""
        self.log(f"preprocess: {where}{leaving} -> {self.out}")
        connect_ray(self.address)
        screen = self.resume and spec.kind == "manifest"  # a listing is screened in a task
        ledger = start_ledger(self.out, self.retry, screen=screen, runtime_env=runtime_env)
        if spec.kind == "manifest":
            ds = build_patch_dataset(spec.value, self.config, (admit_block, {"ledger": ledger}),
                                     self.pool_options)  # fmt: skip
            totals: dict[str, Any] = {}

            def skipped() -> int:
                import ray

                totals.update(ray.get(ledger.totals.remote()))
                return totals.get("skipped", 0)

            result = self.write(ds, skipped, ledger)
        else:
            listing = list_on_cluster(spec.value, runtime_env)
            totals = {"inputs": listing.count, "skipped": 0}
            if self.resume:
                listing, totals = screen_listing(listing, self.out, self.retry, runtime_env)
            ds = None
            if listing.count:
                ds = build_patch_dataset(listing, self.config, None, self.pool_options)
            result = self.write(ds, totals["skipped"], ledger)
        inputs, skipped_ = totals.get("inputs", 0), totals.get("skipped", 0)
        self.log(f"preprocess: {inputs} inputs, {skipped_} already in the output (skipped), "
                 f"{inputs - skipped_} processed"
                 + (f", {totals['retried']} of them failed before and were retried"
                    if totals.get("retried") else ""))  # fmt: skip
        run = result["run"]
        if self.written.is_settled and not self.retry and run["ok"] + run["failed"] == 0:
            self.log(NOTHING_TO_DO)
        return result


def _in_memory(spec) -> list[str]:
    """The in-memory inputs of a ``paths`` or ``dataset`` spec, duplicates dropped."""
    from ..pipeline._inputs import dataset_paths

    paths = spec.value if spec.kind == "paths" else dataset_paths(spec.value)
    if not paths:
        raise JobError("the inputs name no video")
    return list(dict.fromkeys(tidy(p) for p in paths))


def summarize_preprocess(manifest: dict[str, Any], output: str) -> str:
    """The lines a run prints at its end: counts, new shards, failures."""
    run = manifest["run"]
    return "\n".join([
        f"preprocess: this run: {run['ok']} ok, {run['failed']} failed, "
        f"{manifest['skipped']} skipped, {len(run['new_shards'])} new shards "
        f"in {manifest['seconds']:.1f} s",
        f"preprocess: output holds {manifest['ok']} ok in {len(manifest['shards'])} shards "
        f"and {manifest['failed']} failed in {manifest['errors']}: {output}",
    ])  # fmt: skip


def _new_failures(output: str, count: int) -> list[tuple[str, str, str]]:
    """The first failures of this run (the last ``count`` rows of the errors table)."""
    if count == 0:
        return []
    written = read_output(output)
    start = max(written.error_rows - count, 0)
    return list(itertools.islice(iter_errors(output, written), start, start + MAX_LISTED_FAILURES))


def preprocess_from_args(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Run :func:`run_preprocess` with the options of ``add_preprocess_options``."""
    _warn_relative_in_job("IN", args.input)
    _warn_relative_in_job("OUT", args.output)
    config = config_from_args(args)
    started = time.perf_counter()
    manifest = run_preprocess(
        args.input, args.output, config, rows_per_shard=args.rows_per_shard,
        resume=args.resume, retry_failed=args.retry_failed, address=args.address, log=log,
        **pipeline_options_from_args(args),
    )  # fmt: skip
    output = args.output if "://" in args.output else os.path.abspath(args.output)
    for path, reason, kind in _new_failures(output, manifest["run"]["failed"]):
        shown = reason if path in reason else f"{path}: {reason}"
        log(f"failed ({kind}): {shown}")
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
