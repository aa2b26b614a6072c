"""Workers write the shards and the driver commits: every input ends once,
in a shard row or in the errors table, and a run killed at any point then
resumed holds the rows of a run never interrupted, bit for bit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from local_ray_head import psutil, session_processes
from pools import ONE_ACTOR, ONE_ACTOR_ARGS

from cps_ray import OutputNotEmptyError, PatchStreamConfig, write_shards
from cps_ray._store import failures_to_retry, iter_shard_paths, read_errors, read_output
from cps_ray.jobs import preprocess_main, run_preprocess

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--sequence-length", "4", "--input-size", "28", "--patch-size", "14", "--k-keep", "10"]
CFG = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10)
ROW_COLUMNS = ("path", "patches", "meta_fields", "meta_scores", "frame_indices", "timestamps")
# The killed run: good and broken videos, and one the decoder hangs on (a copy
# of a good one, named in CPS_RAY_TEST_HANG_ON), so the kill lands mid-run.
KILLED_RUN_INPUTS = [
    "h264.mp4", "vp8.webm", "mpeg2.mpg", "mpeg4.avi", "broken/text.mp4", "gop1.mp4",
    "short5.mp4", "one_frame.mp4", "broken/empty.mp4", "portrait_64x112.mp4",
    "faststart.mp4", "HANG", "h264_444.mp4", "vfr.mp4",
]  # fmt: skip
HANG_NAME = "stall.mp4"
START_SECONDS = 240


def rows_dataset(paths, errors=None, kinds=None, blocks=None):
    """A Ray dataset of rows as the pipeline makes them (``path``, a value,
    ``error``, ``error_kind``), in ``blocks`` blocks."""
    import ray

    errors = errors or [None] * len(paths)
    kinds = kinds or [("corrupt" if e else None) for e in errors]
    items = [{"path": p, "value": len(p), "error": e, "error_kind": k}
             for p, e, k in zip(paths, errors, kinds)]  # fmt: skip
    return ray.data.from_items(items, override_num_blocks=blocks or max(1, len(paths) // 2))


def _paths_and_errors(n: int, failing=(2, 5)):
    paths = [f"/videos/v{i:02d}.mp4" for i in range(n)]
    errors = [f"{p}: not a video" if i in failing else None for i, p in enumerate(paths)]
    return paths, errors


def _flat_paths(out: Path) -> list[str]:
    return [p for paths in iter_shard_paths(out) for p in paths]


def _row_set(out: Path, columns=("path", "value")) -> list[tuple]:
    rows = []
    for shard in sorted((out / "shards").glob("shard-*.parquet")):
        rows += [tuple(r[c] for c in columns)
                 for r in pq.read_table(shard, columns=list(columns)).to_pylist()]  # fmt: skip
    return sorted(rows)


def test_temporary_files_never_count_and_the_next_run_deletes_them(ray_session, tmp_path):
    out = tmp_path / "out"
    paths, errors = _paths_and_errors(6)
    write_shards(rows_dataset(paths[:3], errors[:3]), out, rows_per_shard=2)
    before = read_output(out)
    assert before.ok_rows == 2 and before.error_rows == 1
    # What a run killed while writing leaves: half files under temporary names.
    leftovers = [
        "shards/shard-0123456789abcdef.parquet.tmp-0badf00d",
        "shards/shard-00007.parquet.tmp-12345678",
        "errors.parquet.tmp-abcdef01",
        "manifest.json.tmp-00000000",
    ]
    for name in leftovers:
        (out / name).write_bytes(b"PAR1 half a shard")
    (out / "shards" / "notes.txt").write_text("not ours")
    seen = read_output(out)
    assert seen.shards == before.shards
    assert list(iter_shard_paths(out, seen)) == list(iter_shard_paths(out, before))
    assert sorted(seen.temporaries) == sorted(leftovers)

    manifest = write_shards(rows_dataset(paths, errors), out, rows_per_shard=2, resume=True)
    assert manifest["skipped"] == 3  # rows the output had are not written again
    assert (manifest["inputs"], manifest["ok"], manifest["failed"]) == (6, 4, 2)
    for name in leftovers:
        assert not (out / name).exists()
    assert (out / "shards" / "notes.txt").exists()  # only our own temporaries go
    assert sorted(_flat_paths(out)) == [p for p, e in zip(paths, errors) if not e]
    assert len(list((out / "shards").glob("*.parquet"))) == len(manifest["shards"])


def test_every_path_is_written_once(ray_session, tmp_path):
    """Duplicated inputs, or a row a retried task gives twice, are written once."""
    out = tmp_path / "out"
    paths, errors = _paths_and_errors(5)
    rows = [0, 1, 1, 2, 3, 2, 4, 0]  # duplicates of good and failed rows
    ds = rows_dataset([paths[i] for i in rows], [errors[i] for i in rows])
    manifest = write_shards(ds, out, rows_per_shard=2)
    written = read_output(out)
    assert sorted(_flat_paths(out)) == [paths[0], paths[1], paths[3], paths[4]]
    assert [p for p, _, _ in read_errors(out)] == [paths[2]] and written.error_rows == 1
    assert manifest["duplicate_rows"] == 3
    assert (manifest["inputs"], manifest["ok"], manifest["failed"]) == (5, 4, 1)
    assert manifest["complete"] is True


def test_write_shards_without_resume_refuses_an_output_that_holds_a_run(ray_session, tmp_path):
    out = tmp_path / "out"
    paths, errors = _paths_and_errors(3)
    write_shards(rows_dataset(paths, errors), out, rows_per_shard=1)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(OutputNotEmptyError, match="already holds a run .* resume=True"):
        write_shards(rows_dataset(paths[:1]), out, rows_per_shard=1)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_interrupted_write_resumed_equals_one_write(ray_session, tmp_path):
    """A run that stops halfway (a failing task: the shards its finished
    writes made stay, nothing is committed); resuming with what is not in
    the output gives the rows and the errors of one uninterrupted write."""
    paths, errors = _paths_and_errors(11, failing=(1, 4, 9))
    clean = tmp_path / "clean"
    write_shards(rows_dataset(paths, errors), clean, rows_per_shard=2, config=CFG)

    def _fail_on(batch, bad):  # nested: Ray's workers get it by value
        if any(p in bad for p in batch["path"]):
            deadline = time.monotonic() + 120
            while not list((out / "shards").glob("shard-*.parquet")):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)  # stop once another block's shard is written
            raise RuntimeError("killed")
        return batch

    out = tmp_path / "out"
    interrupted = rows_dataset(paths, errors, blocks=11).map_batches(
        _fail_on, fn_kwargs={"bad": {paths[8]}}, batch_format="pandas", max_retries=0
    )
    with pytest.raises(Exception, match="killed"):
        write_shards(interrupted, out, rows_per_shard=2, config=CFG)
    killed = read_output(out)
    assert killed.manifest["complete"] is False  # provisional, with the settings
    assert killed.manifest["config"]["k_keep"] == CFG.k_keep
    assert not killed.has_errors_file
    done = set(_flat_paths(out))
    todo = [p for p in paths if p not in done]
    assert 0 < len(todo) < len(paths)  # stopped halfway
    ds = rows_dataset(todo, [errors[paths.index(p)] for p in todo])
    manifest = write_shards(ds, out, rows_per_shard=2, config=CFG, resume=True,
                            skipped=len(paths) - len(todo))  # fmt: skip
    assert _row_set(out) == _row_set(clean)
    assert sorted(read_errors(out)) == sorted(read_errors(clean))
    final = json.loads((clean / "manifest.json").read_text())
    for key in ("ok", "failed", "complete"):
        assert manifest[key] == final[key]
    assert manifest["inputs"] == len(paths) == manifest["ok"] + manifest["failed"]


# --- the job, killed for real ----------------------------------------------------------------


def _kill_session(leader: subprocess.Popen) -> None:
    """SIGKILL the driver's process group and every process of its session
    (the local Ray it started: GCS, raylet, workers, their decoders)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait(timeout=30)
    deadline = time.monotonic() + 30
    while leftovers := session_processes(leader.pid):
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=5)
        assert time.monotonic() < deadline, f"processes outlive the kill: {leftovers}"


def _rows(out: Path) -> list[tuple]:
    """Every shard row as (path, then dtype, shape and bytes of each array
    column), sorted by path."""
    rows = []
    for shard in sorted((out / "shards").glob("shard-*.parquet")):
        for row in pq.read_table(shard, columns=list(ROW_COLUMNS)).to_pylist():
            arrays = [np.asarray(row[c]) for c in ROW_COLUMNS[1:]]
            rows.append((row["path"], *((a.dtype.str, a.shape, a.tobytes()) for a in arrays)))
    return sorted(rows)


def _flat_paths(out: Path) -> list[str]:
    return [p for paths in iter_shard_paths(out) for p in paths]


@pytest.mark.slow(seconds=32)
def test_killed_driver_then_resume_equals_a_clean_run(ray_session, media, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    inputs = []
    for name in KILLED_RUN_INPUTS:
        target = videos / (HANG_NAME if name == "HANG" else name.replace("/", "_"))
        shutil.copy(media["h264.mp4" if name == "HANG" else name], target)
        inputs.append(str(target))
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in inputs))
    args = ["--input", str(listing), "--rows-per-shard", "2", *SMALL]

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CPS_RAY_TEST_HANG_ON=HANG_NAME, RAY_USAGE_STATS_ENABLED="0")
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "preprocess.py"), *args, "--output", str(out)],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        # Meanwhile, the same inputs in one uninterrupted run (on the session's
        # Ray, one fused actor: rows are bit-identical across pool layouts).
        clean = tmp_path / "clean"
        clean_manifest = run_preprocess(listing, clean, CFG, rows_per_shard=2,
                                        log=lambda _: None, **ONE_ACTOR)  # fmt: skip
        deadline = time.monotonic() + START_SECONDS
        while not list((out / "shards").glob("shard-*.parquet")):
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.2)
    finally:
        _kill_session(driver)
    assert not session_processes(driver.pid)
    # Alone (no RAY_ADDRESS) the job started a Ray of its own, and Ray's line
    # about constructor arguments (ray#53727) stayed out of its output.
    killed_log = log_path.read_text(errors="replace")
    assert "Started a local Ray instance" in killed_log
    assert "issues/53727" not in killed_log

    killed = read_output(out)
    assert killed.shards and killed.manifest["complete"] is False
    # A shard being written when the driver died stays a temporary: plant one.
    (out / "shards" / "shard-0000000000000099.parquet.tmp-0badf00d").write_bytes(b"PAR1 half")
    assert read_output(out).shards == killed.shards

    assert preprocess_main([*args, "--output", str(out), "--resume", *ONE_ACTOR_ARGS]) == 0
    printed = capsys.readouterr().out
    skipped = killed.ok_rows
    assert f"preprocess: {len(inputs)} inputs, {skipped} already in the output (skipped)" in printed
    assert "half-written files of a killed run will be deleted" in printed
    assert not list(out.rglob("*.tmp-*"))

    # The resumed output holds the clean run's rows, bit for bit, and its
    # errors (the shards may cut the rows differently).
    assert _rows(out) == _rows(clean)
    assert sorted(read_errors(out)) == sorted(read_errors(clean))
    ok_paths = _flat_paths(out)
    error_paths = pq.read_table(out / "errors.parquet").column("path").to_pylist()
    assert sorted(error_paths) == sorted([str(videos / "broken_text.mp4"),
                                          str(videos / "broken_empty.mp4")])  # fmt: skip
    assert len(ok_paths + error_paths) == len(set(ok_paths + error_paths)) == len(inputs)
    assert set(ok_paths + error_paths) == set(inputs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["duplicate_rows"] == 0
    assert manifest["inputs"] == len(inputs) == manifest["ok"] + manifest["failed"]
    assert manifest["skipped"] == skipped
    for key in ("ok", "failed", "config"):
        assert manifest[key] == clean_manifest[key]


def _lock_file(out: Path, **fields) -> None:
    import socket

    out.mkdir(parents=True, exist_ok=True)
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": "another run",
            "started": time.time(), "refreshed": time.time(), **fields}  # fmt: skip
    (out / ".lock").write_text(json.dumps(lock))


def test_a_second_run_on_the_same_output_is_refused(ray_session, tmp_path):
    from cps_ray import JobError

    out = tmp_path / "out"
    paths, errors = _paths_and_errors(4)
    _lock_file(out)  # a live run: this very process, refreshed just now
    with pytest.raises(JobError, match="is being written by another run"):
        write_shards(rows_dataset(paths, errors), out, rows_per_shard=2, config=CFG)
    assert read_output(out).is_empty
    with pytest.raises(JobError, match="is being written by another run"):
        run_preprocess(tmp_path / "nowhere", out, CFG, log=lambda *a: None)


@pytest.mark.parametrize("leftover", ["stale", "dead process"])
def test_a_killed_runs_lock_does_not_hold_forever(ray_session, tmp_path, leftover):
    out = tmp_path / "out"
    if leftover == "stale":  # another host, no heartbeat for an hour
        _lock_file(out, host="elsewhere", refreshed=time.time() - 3600)
    else:  # this host, a process that has exited
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        _lock_file(out, pid=gone.pid)
    paths, errors = _paths_and_errors(4)
    manifest = write_shards(rows_dataset(paths, errors), out, rows_per_shard=2, config=CFG)
    assert manifest["ok"] == 3 and manifest["failed"] == 1
    assert not (out / ".lock").exists()  # released at the end


def test_retry_failed_decodes_again_only_what_a_rerun_may_cure(ray_session, tmp_path):
    """--retry-failed picks failures by kind (timeout, crashed, remote), not
    by the words of their message."""
    out = tmp_path / "out"
    paths = [f"/videos/v{i:02d}.mp4" for i in range(5)]
    errors = [None, f"{paths[1]}: no result", None, f"{paths[3]}: timed out, or so it says", None]
    kinds = [None, "timeout", None, "corrupt", None]
    write_shards(rows_dataset(paths, errors, kinds), out, rows_per_shard=2, config=CFG)
    retry = failures_to_retry(out)
    assert retry == {paths[1]}
    manifest = write_shards(rows_dataset([paths[1]]), out, rows_per_shard=2, config=CFG,
                            resume=True, retry=retry)  # fmt: skip
    written = read_output(out)
    assert [p for p, _, _ in read_errors(out)] == [paths[3]] and written.error_rows == 1
    assert sorted(_flat_paths(out)) == [paths[0], paths[1], paths[2], paths[4]]
    assert manifest["ok"] == 4 and manifest["failed"] == 1 and manifest["run"]["ok"] == 1
    listed = tmp_path / "inputs.txt"
    listed.write_text("\n".join(paths) + "\n")
    with pytest.raises(Exception, match="--retry-failed needs --resume"):
        run_preprocess(listed, out, CFG, retry_failed=True, log=lambda *a: None)


def test_failures_past_the_memory_limit_wait_in_a_spill_file(ray_session, tmp_path,
                                                             monkeypatch):  # fmt: skip
    """A run's failures beyond FAILURES_IN_MEMORY go to a local file of the
    driver until the errors table is written: the same failures, the file gone."""
    import glob
    import tempfile

    import cps_ray.pipeline._output as shards

    paths, errors = _paths_and_errors(12, failing=(0, 1, 2, 4, 5, 7, 8, 11))
    write_shards(rows_dataset(paths, errors), tmp_path / "kept", rows_per_shard=2)
    spills = os.path.join(tempfile.gettempdir(), "cps_ray-failures-*")
    before = set(glob.glob(spills))
    monkeypatch.setattr(shards, "FAILURES_IN_MEMORY", 3)
    manifest = write_shards(rows_dataset(paths, errors), tmp_path / "spilled", rows_per_shard=2)
    assert manifest["failed"] == 8 and manifest["ok"] == 4
    table = pq.read_table(tmp_path / "spilled" / "errors.parquet")
    assert sorted(table.column("path").to_pylist()) == [p for p, e in zip(paths, errors) if e]
    assert sorted(read_errors(tmp_path / "spilled")) == sorted(read_errors(tmp_path / "kept"))
    assert set(glob.glob(spills)) == before


def test_errors_table_in_row_groups_is_resumed_a_group_at_a_time(ray_session, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """An errors table of several row groups: a resume with --retry-failed
    replaces the retried failures and keeps the others, in order."""
    import cps_ray.pipeline._output as shards

    monkeypatch.setattr(shards, "ERRORS_ROW_GROUP", 3)
    out = tmp_path / "out"
    paths = [f"/videos/v{i:02d}.mp4" for i in range(10)]
    errors = [f"{p}: timed out" if i % 2 else f"{p}: not a video" for i, p in enumerate(paths)]
    kinds = ["timeout" if i % 2 else "corrupt" for i in range(10)]
    errors[0] = kinds[0] = None
    write_shards(rows_dataset(paths, errors, kinds), out, rows_per_shard=4)
    assert pq.ParquetFile(out / "errors.parquet").num_row_groups == 3  # 9 failures
    retry = failures_to_retry(out)  # v01 v03 ... v09
    assert sorted(retry) == paths[1::2]
    retry = sorted(retry)
    again = [None, "timed out again"] + [None] * 3
    manifest = write_shards(rows_dataset(retry, again, [None, "timeout", None, None, None]), out,
                            rows_per_shard=4, resume=True, retry=retry)  # fmt: skip
    kept = [(p, e, k) for p, e, k in zip(paths, errors, kinds) if e and p not in retry]
    got = read_errors(out)
    assert sorted(got[: len(kept)]) == sorted(kept)  # the old ones first, in their order
    assert got[len(kept) :] == [(retry[1], "timed out again", "timeout")]
    assert manifest["failed"] == len(kept) + 1 and manifest["ok"] == 1 + 4
    assert read_output(out).error_rows == manifest["failed"]
