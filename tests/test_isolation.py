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
from pathlib import Path

import numpy as np
import pytest
from local_ray_head import psutil
from pools import ONE_ACTOR

from cps_ray import IsolationError, PatchStreamConfig, local_stream, patch_dataset
from cps_ray._faults import CRASH_ENV, HANG_ENV, SLOW_ENV
from cps_ray.pipeline import _zygote
from cps_ray.pipeline._isolation import IsolatedPool, IsolatedWorker
from cps_ray.pipeline._stages import DECODE_PRELOAD
from cps_ray.pipeline._worker import VIDEO_PRELOAD, VideoWorker

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


def test_worker_survives_crash_and_hang(media, monkeypatch):
    monkeypatch.setenv(CRASH_ENV, "vp9.webm")
    monkeypatch.setenv(HANG_ENV, "vp8.webm")
    # The decoder's own deadline stays long; the child is killed at 3 + 3 s.
    worker = IsolatedWorker(
        functools.partial(VideoWorker, CFG), timeout_s=3.0, max_attempts=3, preload=VIDEO_PRELOAD
    )
    try:
        ok, row = worker.run(str(media["h264.mp4"]))
        assert ok and row["error"] is None
        first_child = worker.pid

        ok, reason = worker.run(str(media["vp9.webm"]))
        assert not ok
        assert reason.startswith(str(media["vp9.webm"]) + ": ")
        assert "died on each of 3 attempts" in reason and "SIGSEGV" in reason
        assert "\n" not in reason
        assert worker.restarts["crashed"] == 3

        ok, reason = worker.run(str(media["vp8.webm"]))
        assert not ok and "timed out" in reason and "decode_timeout_s=3" in reason
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
        functools.partial(VideoWorker, CFG), timeout_s=60, max_attempts=2, preload=VIDEO_PRELOAD
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


def test_workers_load_the_decoder_before_their_first_video():
    """PyAV was imported by the first video, inside its decode_timeout_s: on
    a loaded host a fresh child's first good video timed out. A worker loads
    PyAV when it starts, and zygotes preload it; a CPU worker never loads
    torchcodec (the GPU's decoder)."""
    code = """
import sys
from cps_ray import PatchStreamConfig
from cps_ray.pipeline._worker import VideoWorker

assert "av" not in sys.modules
VideoWorker(PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=3))
print(" ".join(m for m in ("torchcodec", "av") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["av"]
    for preload in (VIDEO_PRELOAD, DECODE_PRELOAD):
        assert "av" in preload


def test_child_that_cannot_start_stops_the_run():
    worker = IsolatedWorker(_Unpicklable(), timeout_s=5, max_attempts=1)
    with pytest.raises(IsolationError, match="cannot pickle this factory"):
        worker.start()
    assert worker.pid is None
    worker = IsolatedWorker(functools.partial(_raise, "no decoder here"), timeout_s=5)
    with pytest.raises(IsolationError, match="could not start: .*no decoder here"):
        worker.start()


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
        ok, reason = worker.run("crash")
        assert not ok and reason.startswith("crash: a decoder process could not start: ")
        assert "MemoryError: cannot import the decoders now" in reason
        ok, reason = worker.run("b")  # tried again, after a pause: the video fails alone
        assert not ok and "could not start" in reason
        assert (worker.restarts["crashed"], worker.restarts["start_failed"]) == (1, 2)
        refuse.unlink()
        assert worker.run("c") == (True, "C")  # a fresh child once it can start
    finally:
        worker.close()


def _parent_and_env(name):
    """A child's target: its parent's pid and the variable ``name``."""
    return lambda _: (os.getppid(), os.environ.get(name))


@pytest.mark.skipif(not _zygote.supported(), reason="children are forked on Linux only")
def test_children_fork_from_one_zygote_per_environment(monkeypatch):
    """A pool's children and later workers fork from one preloaded zygote and
    take the caller's per-call variables (and Ray's: a zygote never imports
    ray); another environment gets its own zygote; a zygote that died is
    replaced."""
    monkeypatch.setenv(HANG_ENV, "first")
    make = functools.partial(_parent_and_env, HANG_ENV)
    pool = IsolatedPool(make, 2, timeout_s=30, max_attempts=1, preload=("json",))
    try:
        pool.start()
        answers = [w.run("x") for w in pool.workers]
        assert answers[0] == answers[1] and answers[0][0]
        zygote, seen = answers[0][1]
        assert zygote != os.getpid() and seen == "first"
        monkeypatch.setenv(HANG_ENV, "second")  # read per call: same zygote
        # Ray's own variables (another job's worker on the node): same zygote
        monkeypatch.setenv("RAY_JOB_ID", "02000000")
        later = IsolatedWorker(make, timeout_s=30, preload=("json",))
        assert later.run("x") == (True, (zygote, "second"))
        later.close()
        monkeypatch.setenv("CPS_RAY_TEST_OTHER", "1")  # may change imports: a new zygote
        other = IsolatedWorker(make, timeout_s=30, preload=("json",))
        ok, (other_zygote, _) = other.run("x")
        assert ok and other_zygote != zygote
        other.close()
        os.kill(other_zygote, signal.SIGKILL)
        monkeypatch.delenv("CPS_RAY_TEST_OTHER")
        # the first zygote's children still serve (with the environment they
        # started with); a dead zygote is replaced
        assert pool.workers[0].run("y") == (True, (zygote, "first"))
        monkeypatch.setenv("CPS_RAY_TEST_OTHER", "1")
        again = IsolatedWorker(make, timeout_s=30, preload=("json",))
        ok, (third, _) = again.run("x")
        assert ok and third not in (zygote, other_zygote)
        again.close()
    finally:
        pool.close()


@pytest.mark.skipif(not _zygote.supported(), reason="children are forked on Linux only")
def test_a_fork_of_the_caller_starts_its_own_zygote():
    """A process forked from one that holds a zygote (a DataLoader worker,
    say) never talks to its parent's zygote: it starts its own."""
    code = (
        "import functools, os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_isolation import _parent_and_env\n"
        "from cps_ray.pipeline._isolation import IsolatedWorker\n"
        "make = functools.partial(_parent_and_env, 'HOME')\n"
        "def zygote():\n"
        "    w = IsolatedWorker(make, timeout_s=30, preload=('json',))\n"
        "    ok, (pid, _) = w.run('x')\n"
        "    w.close()\n"
        "    with open(f'/proc/{pid}/stat') as f:\n"
        "        return pid, int(f.read().rsplit(')', 1)[1].split()[1])\n"
        "print(os.getpid(), *zygote(), flush=True)\n"
        "if os.fork() == 0:\n"
        "    print(os.getpid(), *zygote(), flush=True)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (parent, zygote, owner), (child, child_zygote, child_owner) = (
        map(int, line.split()) for line in done.stdout.splitlines()
    )
    assert (owner, child_owner) == (parent, child) and child_zygote != zygote


def _thread_counts(config):
    """A child's target: its torch and Numba thread counts once its worker is built."""
    from cps_ray.pipeline._worker import child_video_worker

    child_video_worker(config, 2)
    import numba
    import torch

    return lambda _: (torch.get_num_threads(), numba.get_num_threads())


def test_a_forked_child_keeps_one_torch_thread(monkeypatch):
    """Numba's warm-up resets OpenMP's thread count in a forked child; the
    child sets torch's back to one after it (two children ran 2.4x slower)."""
    from cps_ray._devices import default_ffmpeg_threads

    worker = IsolatedWorker(
        functools.partial(_thread_counts, CFG), timeout_s=60, preload=VIDEO_PRELOAD
    )
    try:
        ok, counts = worker.run("x")
    finally:
        worker.close()
    assert ok and counts == (1, min(default_ffmpeg_threads(2), os.cpu_count()))


def _kernel_state(config):
    """A child's target: what its zygote loaded of Numba (before the child's
    own warm-up), then a selection with every kernel."""
    from numba.np.ufunc import parallel

    from cps_ray._convert import bits_table
    from cps_ray._kernels import cpu

    loaded = (len(cpu._top_k.signatures), len(cpu._energies.signatures), parallel._is_initialized,
              bits_table.cache_info().currsize)  # fmt: skip
    return lambda frames: (loaded, cpu.select(frames, 14, 5))


@pytest.mark.skipif(not _zygote.supported(), reason="children are forked on Linux only")
def test_children_start_with_the_serial_kernels_loaded_and_no_threads():
    """The zygote loads Numba's serial kernels (its code generator is set up
    once, not in every child) and the three bit tables, never a parallel
    kernel: that starts OpenMP's threads, and GNU OpenMP aborts a child
    forked after it."""
    from cps_ray._kernels import reference

    frames = np.random.default_rng(7).integers(0, 256, (3, 3, 28, 28), dtype=np.uint8)
    worker = IsolatedWorker(
        functools.partial(_kernel_state, CFG), timeout_s=60, preload=VIDEO_PRELOAD
    )
    try:
        ok, (loaded, selected) = worker.run(frames)
    finally:
        worker.close()
    assert ok and loaded == (1, 0, False, 3)
    for got, expected in zip(selected, reference.select(frames, 14, 5)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not _zygote.supported(), reason="children are forked on Linux only")
def test_zygote_and_children_exit_with_their_owner(tmp_path):
    """An owner killed outright (an OOM kill of an actor) leaves no zygote
    and no child behind."""
    code = (
        "import functools, os, sys, time\n"
        "from cps_ray.pipeline._isolation import IsolatedWorker\n"
        "w = IsolatedWorker(functools.partial(os.getpid), timeout_s=30)\n"
        "w.start()\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(owner.stdout.readline()))
        zygote = child.parent()
        assert zygote.ppid() == owner.pid
    finally:
        owner.kill()
        owner.wait()
    gone, alive = psutil.wait_procs([child, zygote], timeout=10)
    assert not alive


@pytest.mark.skipif(not _zygote.supported(), reason="children are forked on Linux only")
def test_actors_of_a_node_fork_their_children_from_one_zygote(ray_session):
    """Every Ray actor of a node forks its isolated children from one
    detached zygote (torch and torchcodec imported once per node, not per
    actor and pipeline); a killed actor's children go, the zygote stays and
    serves the next actor."""
    import ray

    @ray.remote(num_cpus=0)
    class Owner:  # refers to nothing of this module: Ray workers cannot import it
        def __init__(self):
            import functools
            import os

            from cps_ray.pipeline._isolation import IsolatedWorker

            self.worker = IsolatedWorker(functools.partial(os.getpid), timeout_s=30,
                                         preload=("json",))  # fmt: skip
            self.worker.start()

        def child(self):
            import os

            with open(f"/proc/{self.worker.pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            return os.getpid(), self.worker.pid, parent

    first, second = Owner.remote(), Owner.remote()
    (owner_a, child_a, zygote), (owner_b, child_b, zygote_b) = ray.get(
        [first.child.remote(), second.child.remote()]
    )
    assert zygote == zygote_b and child_a != child_b
    server = psutil.Process(zygote)
    assert "--node" in server.cmdline() and server.ppid() not in (owner_a, owner_b)
    ray.kill(first)
    gone, alive = psutil.wait_procs([psutil.Process(child_a)], timeout=20)
    assert not alive and server.is_running()
    third = Owner.remote()
    assert ray.get(third.child.remote())[2] == zygote
    ray.kill(second)
    ray.kill(third)


def _knock_as(uid: int, name: str) -> str:
    """What a process of user ``uid`` gets when it asks the zygote ``name``
    to serve it (forked, then its user changed: no interpreter to start)."""
    import socket
    from multiprocessing.connection import Connection

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        answer = b"refused"
        try:
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect("\0" + name)
            conn = Connection(sock.detach())
            conn.send(("hello",))
            if conn.poll(30):
                answer = repr(conn.recv()).encode()
        except (EOFError, ConnectionError):  # closed on it: refused
            pass
        except BaseException as err:
            answer = repr(err).encode()
        os.write(write, answer)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as answer:
        return answer.read().decode()


@pytest.mark.skipif(not _zygote.supported(), reason="children are forked on Linux only")
def test_a_node_zygote_serves_owners_of_its_user_until_its_raylet_goes(monkeypatch, tmp_path):
    """The node's zygote (what Ray actors share; here a plain process stands
    in for the raylet): a second owner reaches the same one, an owner gone
    takes its children, another user is refused, and the zygote exits with
    the raylet, or after its idle time without an owner."""
    monkeypatch.setattr(_zygote, "NODE_IDLE_S", 1.0)
    env = dict(os.environ)
    raylet = subprocess.Popen(["sleep", "600"])
    name = _zygote.node_name(("test", str(tmp_path)), raylet.pid)
    try:
        first = _zygote.NodeZygote(name, raylet.pid, ("json",), env, 30)
        server = psutil.Process(first.pid)
        mine, theirs = __import__("socket").socketpair()
        child = first.fork(theirs, env, str(tmp_path))
        theirs.close()
        assert psutil.Process(child.pid).ppid() == first.pid != os.getpid()
        second = _zygote.NodeZygote(name, raylet.pid, ("json",), env, 30)
        assert second.pid == first.pid
        first.close()  # an owner gone: its child is killed and reaped
        gone, alive = psutil.wait_procs([psutil.Process(child.pid)], timeout=10)
        assert not alive and server.is_running()
        mine.close()
        if os.getuid() == 0:  # another user's process is never served
            assert _knock_as(65534, name) == "refused"
            assert _knock_as(0, name) == "('ready', None)"  # the check itself works
        raylet.kill()  # an owner is still connected: the raylet decides
        gone, alive = psutil.wait_procs([server], timeout=10)
        assert not alive
        second.close()
    finally:
        raylet.kill()
        raylet.wait()
    raylet = subprocess.Popen(["sleep", "600"])
    try:
        # imports that fail: the owners waiting are told why
        broken = _zygote.node_name(("test", "broken", str(tmp_path)), raylet.pid)
        with pytest.raises(IsolationError, match="could not start: ModuleNotFoundError.*no_such"):
            _zygote.NodeZygote(broken, raylet.pid, ("no_such_module_for_cps",), env, 30)
        idle = _zygote.NodeZygote(name, raylet.pid, ("json",), env, 30)
        server = psutil.Process(idle.pid)
        idle.close()
        gone, alive = psutil.wait_procs([server], timeout=15)
        assert not alive  # 1 s without an owner
    finally:
        raylet.kill()
        raylet.wait()


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
def test_pipeline_contains_crash_and_hang_and_accounts_for_every_input(
    ray_session, media, clean_rows
):

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
    )
    rows = list(ds.iter_rows())

    got = [r["path"] for r in rows]
    assert sorted(got) == sorted(paths) and len(set(got)) == len(paths)
    errors = {r["path"]: r["error"] for r in rows if r["error"] is not None}
    ok = [r for r in rows if r["error"] is None]
    assert len(ok) + len(errors) == len(paths)
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
        paths, CFG, videos_per_block=1, decode_pool=1, runtime_env={"env_vars": slow}
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
    from cps_ray.jobs import run_preprocess
    from cps_ray.pipeline._shards import iter_shard_paths, read_errors, read_output

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
    errors = dict(read_errors(str(out)))
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
