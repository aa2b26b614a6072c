"""Crash and hang isolation with real process deaths and real hangs.

The test-only switches of :mod:`cps_ray._faults` make decoding a chosen file
kill its process with SIGSEGV or block forever; everything else is the real
decoder, the real child processes and the real Ray.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
from local_ray_head import psutil
from pools import ONE_ACTOR

from cps_ray import IsolationError, PatchStreamConfig, local_stream, patch_dataset
from cps_ray._core import VideoCore
from cps_ray._faults import CRASH_ENV, HANG_ENV, SLOW_ENV
from cps_ray.pipeline._isolation import IsolatedPool, IsolatedWorker
from cps_ray.pipeline._worker import CORE_PRELOAD

CFG = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10)
GOOD = ["h264.mp4", "vp9.webm", "mpeg2.mpg", "short5.mp4", "rot90.mp4", "hevc.mkv"]


def _assert_same_rows(rows, expected):
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)
            else:
                assert got[key] == value, key


@pytest.fixture(scope="module")
def clean_rows(media):
    """Rows of the good videos from threads of this process (no isolation)."""
    paths = [str(media[n]) for n in GOOD]
    return {r["path"]: r for r in local_stream(paths, CFG, num_workers=2, isolation="none")}


def _row_target(config):
    return VideoCore(config).row


def test_worker_survives_crash_and_hang(media, monkeypatch):
    monkeypatch.setenv(CRASH_ENV, "vp9.webm")
    monkeypatch.setenv(HANG_ENV, "vp8.webm")
    # The decoder's own deadline stays long; the child is killed at 3 + 3 s.
    worker = IsolatedWorker(
        functools.partial(_row_target, CFG), timeout_s=3.0, max_attempts=3, preload=CORE_PRELOAD
    )
    try:
        ok, row = worker.run(str(media["h264.mp4"]))
        assert ok and row["error"] is None
        first_child = worker.pid

        ok, (reason, kind) = worker.run(str(media["vp9.webm"]))
        assert not ok and kind == "crashed"
        assert reason.startswith(str(media["vp9.webm"]) + ": ")
        assert "died on each of 3 attempts" in reason and "SIGSEGV" in reason
        assert "\n" not in reason
        assert worker.restarts["crashed"] == 3

        ok, (reason, kind) = worker.run(str(media["vp8.webm"]))
        assert not ok and kind == "timeout"
        assert "timed out" in reason and "decode_timeout_s=3" in reason
        assert worker.restarts["timed_out"] == 1

        # The next video gets a fresh child and the same row as before.
        ok, row = worker.run(str(media["h264.mp4"]))
        assert ok and row["error"] is None and worker.pid != first_child
    finally:
        worker.close()
    assert worker.pid is None


def test_child_killed_mid_video_is_retried(media, monkeypatch, clean_rows):
    """A child killed from outside while it works (an OOM kill, say) costs an
    attempt, not the video."""
    monkeypatch.setenv(HANG_ENV, "")
    path = str(media["hevc.mkv"])
    worker = IsolatedWorker(
        functools.partial(_row_target, CFG), timeout_s=60, max_attempts=2, preload=CORE_PRELOAD
    )
    try:
        worker.start()
        victim = worker.pid
        # Kill it once the video is under way: SIGKILL at a random point of
        # the decode is what an OOM killer does.
        killer = threading.Timer(0.05, os.kill, (victim, signal.SIGKILL))
        killer.start()
        ok, row = worker.run(path)
        killer.join()
    finally:
        worker.close()
    assert ok, row
    assert worker.restarts["crashed"] in (0, 1)  # 0 when the video beat the timer
    _assert_same_rows([row], [clean_rows[path]])


def test_workers_load_the_decoders_before_their_first_video():
    """PyAV was imported by the first video, inside its decode_timeout_s: on
    a loaded host a fresh child's first good video timed out. A worker's core
    loads the decoders when it is built, and the fork server preloads them."""
    code = """
import sys
from cps_ray import PatchStreamConfig
from cps_ray._core import VideoCore
from cps_ray._devices import DECODER_MODULES

assert not any(m in sys.modules for m in DECODER_MODULES)
VideoCore(PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=3))
print(all(m in sys.modules for m in DECODER_MODULES), "torchcodec" in sys.modules,
      "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    # A CPU worker loads PyAV, and neither torchcodec (the GPU's decoder) nor torch.
    assert done.stdout.split() == ["True", "False", "False"]
    from cps_ray._devices import DECODER_MODULES

    assert set(DECODER_MODULES) <= set(CORE_PRELOAD)


def test_child_that_cannot_start_stops_the_run():
    worker = IsolatedWorker(_Unpicklable(), timeout_s=5, max_attempts=1)
    with pytest.raises(IsolationError, match="cannot start: .*cannot pickle this factory"):
        worker.start()
    assert worker.pid is None
    worker = IsolatedWorker(functools.partial(_raise, "no decoder here"), timeout_s=5)
    with pytest.raises(IsolationError, match="could not start: .*no decoder here"):
        worker.start()


def _arrays(item):
    """A child's target: ``item`` bytes of arrays, and a non-contiguous view."""
    big = np.arange(item, dtype=np.uint8)
    return {"big": big.reshape(-1, 16), "strided": big[::3], "n": item}


def _array_target():
    return _arrays


def test_results_cross_through_a_shared_buffer_that_grows():
    """A result's arrays come back through the worker's memory file, which
    grows to the largest result; each result owns writable arrays."""
    worker = IsolatedWorker(_array_target, timeout_s=30, import_main=False)
    try:
        assert worker._results is not None  # Linux: a memfd
        first_size = worker._results.size
        results = [worker.run(n) for n in (64, 3 * first_size, 1024)]
    finally:
        worker.close()
    assert worker._results is None  # closed with the worker
    for (ok, value), n in zip(results, (64, 3 * first_size, 1024)):
        want = _arrays(n)
        assert ok and value["n"] == n
        for key in ("big", "strided"):
            np.testing.assert_array_equal(value[key], want[key])
            assert value[key].flags.writeable
    assert results[0][1]["big"].sum() == _arrays(64)["big"].sum()  # not overwritten later


def _raise(message):
    raise RuntimeError(message)


def _crashes_or_echoes(item):
    if item == "crash":
        os.abort()
    return item.upper()


def _target_unless(refuse_file):
    """A child's target, unless ``refuse_file`` exists (an import that fails
    under memory pressure, say)."""
    if os.path.exists(refuse_file):
        raise MemoryError("cannot import the decoders now")
    return _crashes_or_echoes


def test_child_that_cannot_restart_costs_a_video_not_the_run(tmp_path):
    refuse = tmp_path / "refuse"
    worker = IsolatedWorker(functools.partial(_target_unless, str(refuse)), timeout_s=30,
                            max_attempts=2)  # fmt: skip
    worker.start_backoff_s = 0.01
    try:
        assert worker.run("a") == (True, "A")
        refuse.touch()  # from now on a new child cannot start
        ok, (reason, kind) = worker.run("crash")
        assert not ok and kind == "crashed"
        assert reason.startswith("crash: a decoder process could not start: ")
        assert "MemoryError: cannot import the decoders now" in reason
        ok, (reason, _) = worker.run("b")  # tried again, after a pause: the video fails alone
        assert not ok and "could not start" in reason
        assert (worker.restarts["crashed"], worker.restarts["start_failed"]) == (1, 2)
        refuse.unlink()
        assert worker.run("c") == (True, "C")  # a fresh child once it can start
    finally:
        worker.close()


def _parent_and_env(name):
    """A child's target: its parent's pid, the variable ``name`` and whether
    ``json`` was imported before the target (in the fork server)."""
    preloaded = "json" in sys.modules
    return lambda _: (os.getppid(), os.environ.get(name), preloaded)


def test_children_fork_from_a_preloaded_server_with_their_owners_environment(monkeypatch):
    """A pool's children fork from the standard library's fork server, which
    imported the preload once; each child takes its owner's environment as
    it was when the child started (the fault switches are read there)."""
    monkeypatch.setenv(HANG_ENV, "first")
    make = functools.partial(_parent_and_env, HANG_ENV)
    pool = IsolatedPool(make, 2, timeout_s=30, max_attempts=1, preload=("json",))
    try:
        pool.start()
        answers = [w.run("x") for w in pool.workers]
        assert answers[0] == answers[1] and answers[0][0]
        server, seen, preloaded = answers[0][1]
        assert server != os.getpid() and psutil.Process(server).ppid() == os.getpid()
        assert seen == "first"
        monkeypatch.setenv(HANG_ENV, "second")
        later = IsolatedWorker(make, timeout_s=30, preload=("json",))
        assert later.run("x") == (True, (server, "second", preloaded))
        later.close()
        assert pool.workers[0].run("y") == (True, (server, "first", preloaded))
    finally:
        pool.close()


def _thread_counts(config):
    """A child's target: whether torch is loaded, and its Numba thread count,
    once its core is built."""
    from cps_ray.pipeline._worker import _child_core

    _child_core(config, 2, None, 1)
    import numba

    return lambda _: ("torch" in sys.modules, numba.get_num_threads())


def test_a_cpu_child_sizes_its_threads_and_never_loads_torch():
    """Children are processes: each takes its share of the cores for Numba
    (pools sized to every core ran 2.4x slower); a CPU child never loads
    torch (2.7 s of import; where a GPU child does, it gets one thread)."""
    from cps_ray._devices import decode_threads

    worker = IsolatedWorker(
        functools.partial(_thread_counts, CFG), timeout_s=60, preload=CORE_PRELOAD
    )
    try:
        ok, counts = worker.run("x")
    finally:
        worker.close()
    assert ok and counts == (False, min(decode_threads(CFG, 2), os.cpu_count()))


def test_server_and_children_exit_with_their_owner(tmp_path):
    """An owner killed outright (an OOM kill of an actor) leaves no fork
    server and no child behind, and a run of isolated children reports no
    leaked semaphore when it ends."""
    code = (
        "import functools, os, sys, time\n"
        "from cps_ray.pipeline._isolation import IsolatedWorker\n"
        "if __name__ == '__main__':\n"
        "    w = IsolatedWorker(functools.partial(os.getpid), timeout_s=30)\n"
        "    w.start()\n"
        "    print(w.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    script = tmp_path / "owner.py"
    script.write_text(code)
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(owner.stdout.readline()))
        server = child.parent()
        assert server.ppid() == owner.pid
    finally:
        owner.kill()
        owner.wait()
    gone, alive = psutil.wait_procs([child, server], timeout=10)
    assert not alive


def test_isolated_rows_leave_no_leaked_semaphore_nor_rerun_the_script(media, tmp_path):
    """A script without a ``__main__`` guard: its children do not run it again."""
    code = (
        "import sys\n"
        "from cps_ray import PatchStreamConfig, local_stream\n"
        "print('top level')\n"
        "cfg = PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=3)\n"
        "rows = list(local_stream(sys.argv[1:], cfg, num_workers=2))\n"
        "print(sum(r['error'] is None for r in rows))\n"
    )
    script = tmp_path / "rows.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script), str(media["h264.mp4"]),
                           str(media["vp9.webm"])], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["top level", "2"] and "leaked" not in done.stderr


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle this factory")


@pytest.mark.slow(seconds=12)
def test_local_stream_contains_crashes_and_hangs(media, monkeypatch, clean_rows):
    monkeypatch.setenv(CRASH_ENV, "vp9.webm")
    monkeypatch.setenv(HANG_ENV, "mpeg2.mpg")
    cfg = replace(CFG, decode_timeout_s=5.0)
    broken = sorted(n for n in media if n.startswith("broken/"))
    paths = [str(media[n]) for n in GOOD + broken]
    rows = list(local_stream(paths, cfg, num_workers=2, max_attempts=2))

    assert [r["path"] for r in rows] == paths  # every input, once, in order
    by_path = {r["path"]: r for r in rows}
    crash = by_path[str(media["vp9.webm"])]["error"]
    assert "died on each of 2 attempts" in crash and "SIGSEGV" in crash
    assert "timed out" in by_path[str(media["mpeg2.mpg"])]["error"]
    assert "empty file" in by_path[str(media["broken/empty.mp4"])]["error"]
    assert "not found" in by_path[str(media["broken/missing.mp4"])]["error"]
    for name in broken:  # each a clear one-line error naming its file
        error = by_path[str(media[name])]["error"]
        assert error.startswith(str(media[name]) + ": ") and "\n" not in error
    survivors = [str(media[n]) for n in GOOD if n not in ("vp9.webm", "mpeg2.mpg")]
    _assert_same_rows([by_path[p] for p in survivors], [clean_rows[p] for p in survivors])


def test_local_stream_process_rows_equal_thread_rows(media, clean_rows):
    paths = [str(media[n]) for n in GOOD]
    rows = list(local_stream(paths, CFG, num_workers=2))
    _assert_same_rows(rows, [clean_rows[p] for p in paths])


# --- Ray ---------------------------------------------------------------------------


def _actor_pids(stage: str) -> list[int]:
    """Pids of the Ray actor processes running ``stage`` (Ray titles its
    worker processes ``ray::<actor class>``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::") and stage in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.slow(seconds=13)
@pytest.mark.parametrize("pools", [{}, {"fuse": False}], ids=["default", "split"])
def test_pipeline_contains_crash_and_hang_and_accounts_for_every_input(
    ray_session, media, clean_rows, pools
):
    """Default plan: the fused actors' children; split: the decode actors'."""
    cfg = replace(CFG, decode_timeout_s=5.0)
    broken = sorted(n for n in media if n.startswith("broken/"))
    names = GOOD + broken
    paths = [str(media[n]) for n in names]
    env = {CRASH_ENV: "vp9.webm", HANG_ENV: "mpeg2.mpg"}
    ds = patch_dataset(
        paths,
        cfg,
        videos_per_block=2,
        runtime_env={"env_vars": env},
        **pools,
    )
    rows = list(ds.iter_rows())

    got = [r["path"] for r in rows]
    assert sorted(got) == sorted(paths) and len(set(got)) == len(paths)
    errors = {r["path"]: r["error"] for r in rows if r["error"] is not None}
    kinds = {r["path"]: r["error_kind"] for r in rows if r["error"] is not None}
    ok = [r for r in rows if r["error"] is None]
    assert len(ok) + len(errors) == len(paths)
    assert kinds[str(media["vp9.webm"])] == "crashed"
    assert kinds[str(media["mpeg2.mpg"])] == "timeout"
    assert kinds[str(media["broken/missing.mp4"])] == "missing"
    assert "SIGSEGV" in errors.pop(str(media["vp9.webm"]))
    assert "timed out" in errors.pop(str(media["mpeg2.mpg"]))
    assert set(errors) == {str(media[n]) for n in broken}, errors
    assert all("\n" not in e and e.startswith(p) for p, e in errors.items())
    _assert_same_rows(ok, [clean_rows[r["path"]] for r in ok])


def test_killed_decode_actor_leaves_identical_rows(ray_session, media, clean_rows):

    paths = [str(media[n]) for n in GOOD] * 3
    # Each video takes 0.25 s more (4.5 s for the 18), and the decode actor is
    # killed 1 s after its process appears, by a thread: not at the first row,
    # which on a busy host came after the decode actor had finished them all
    # (the select actor was still starting).
    slow = {SLOW_ENV: ",".join(GOOD)}
    ds = patch_dataset(
        paths, CFG, videos_per_block=1, decode_pool=1, fuse=False, runtime_env={"env_vars": slow}
    )
    killed: list[int] = []
    done = threading.Event()

    def kill_the_decode_actor():
        while not done.is_set():
            victims = _actor_pids("DecodeStage")
            if victims:
                done.wait(1.0)
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(victims)
                return
            done.wait(0.05)

    killer = threading.Thread(target=kill_the_decode_actor, daemon=True)
    killer.start()
    try:
        rows = list(ds.iter_rows())
    finally:
        done.set()
        killer.join(timeout=10)
    assert killed
    _assert_same_rows(rows, [clean_rows[p] for p in paths])


@pytest.mark.slow(seconds=11)
def test_isolation_none_poison_file_fails_the_run_instead_of_looping(ray_session, media):

    paths = [str(media["h264.mp4"]), str(media["vp9.webm"])]
    ds = patch_dataset(
        paths,
        CFG,
        isolation="none",
        max_attempts=2,
        videos_per_block=1,
        **ONE_ACTOR,  # the fused actor decodes in itself too
        runtime_env={"env_vars": {CRASH_ENV: "vp9.webm"}},
    )
    # Ray would restart the actor and retry its block forever; bounded task
    # retries end the run with an error instead.
    with pytest.raises(Exception, match="(?i)died|actor|crash|unexpected"):
        list(ds.iter_rows())


def test_job_accounts_for_every_input_with_a_crashing_decoder(ray_session, media, tmp_path):
    """The job's output: inputs = ok rows (shards) + error rows, no duplicates."""
    from cps_ray._store import iter_shard_paths, read_errors, read_output
    from cps_ray.jobs import run_preprocess

    broken = sorted(n for n in media if n.startswith("broken/"))
    names = GOOD + broken
    manifest = tmp_path / "inputs.txt"
    manifest.write_text("".join(f"{media[n]}\n" for n in names))
    out = tmp_path / "out"
    result = run_preprocess(
        str(manifest),
        str(out),
        CFG,
        rows_per_shard=2,
        log=lambda line: None,
        videos_per_block=2,
        runtime_env={"env_vars": {CRASH_ENV: "vp9.webm"}},
        **ONE_ACTOR,
    )
    written = read_output(str(out))
    errors = {path: reason for path, reason, _ in read_errors(str(out))}
    in_shards = [p for paths in iter_shard_paths(str(out), written) for p in paths]
    shard_paths = set(in_shards)
    assert len(shard_paths) == len(in_shards)  # no row written twice
    assert len(errors) == written.error_rows
    inputs = {str(media[n]) for n in names}
    assert (result["inputs"], result["ok"], result["failed"]) == (
        len(names),
        len(GOOD) - 1,
        len(broken) + 1,
    )
    assert shard_paths | set(errors) == inputs and not shard_paths & set(errors)
    assert "SIGSEGV" in errors[str(media["vp9.webm"])]
