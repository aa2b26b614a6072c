"""Crash and hang isolation: each worker decodes in a child process.

A native crash in a decoder (a segfault or an abort in FFmpeg or NVDEC)
kills the process it happens in, and a native hang blocks it forever. In a
thread of ``local_stream`` that is the whole stream; in a Ray actor it is the
actor, which Ray restarts and whose task it retries without limit, so one
poison file would loop. With ``isolation="process"`` (the default) the
per-video work runs in a child process the worker owns:

- a child that dies on a video is replaced and the video tried again, at most
  ``max_attempts`` times in all; then the video is an error row naming the
  signal, and the next video gets a fresh child;
- a video that takes longer than ``decode_timeout_s`` (plus a grace period
  for the decoder's own, cooperative check) has its child killed and is an
  error row; it is not retried, a hang is rarely transient;
- a child that cannot be started again during a run (its imports failing
  under memory pressure, a start-up timeout) makes the video an error row,
  and the next video starts a fresh child after a growing pause: a run never
  ends on it (only the first start, before any video, raises);
- a child notices when its parent is gone and exits, so a killed actor
  leaves no decoder behind.

The child talks over a socket pair (not ``multiprocessing``, which would
re-import the parent's ``__main__``, a Ray worker's included). On Linux it
is forked from a zygote (:mod:`._zygote`) that imported torch, torchcodec
and Numba once for every child of this process (in a Ray worker: of every
actor of the node), so a pool of children, the next actor and a restart
after a crash cost milliseconds, not an interpreter's imports;
elsewhere it is a plain ``python -m`` process. It builds its worker once
(kernel warm-up), then serves one path at a time; a result crosses as one
pickled message (a 2.4 MB row at the default sizes, about a millisecond).

``isolation="none"`` runs the work in the worker itself: no per-video cost,
but a crash takes the worker down. In the pipeline its actors then get
bounded task retries, so a poison file fails the run instead of looping.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .._devices import fake_environment
from ..errors import ConfigError, IsolationError, printable_path
from . import _zygote

ISOLATION_MODES = ("process", "none")
DEFAULT_ISOLATION = "process"
DEFAULT_MAX_ATTEMPTS = 2
# Importing torch, torchcodec and numba and warming the kernels, on a busy node.
STARTUP_TIMEOUT_S = 300.0
# The decoder checks its own deadline between frames and says so in a clearer
# error; the child is killed only if it has not answered this much later.
MAX_GRACE_S = 5.0
CHILD_MODULE = "cps_ray.pipeline._isolated_child"
# A child that cannot be started again (its imports failing under memory
# pressure, a start-up timeout): the video is an error row, and the next
# start waits 1, 2, 4... s, at most 60 s, until a start succeeds.
START_BACKOFF_S = 1.0
MAX_START_BACKOFF_S = 60.0


def check_isolation(isolation: object, max_attempts: object) -> None:
    if isolation not in ISOLATION_MODES:
        raise ConfigError(
            "isolation", isolation, "Supported values are " + ", ".join(map(repr, ISOLATION_MODES))
        )
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError("max_attempts", max_attempts, "It must be an int >= 1.")


def hard_timeout(timeout_s: float | None) -> float | None:
    """When a child that has not answered is killed: ``timeout_s`` plus grace."""
    if timeout_s is None:
        return None
    return timeout_s + min(MAX_GRACE_S, timeout_s)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class IsolatedWorker:
    """Runs ``target(item)`` in a child process, where ``target = make_target()``
    was built once per child. Not thread-safe: one caller at a time.

    :meth:`run` returns ``(True, result)``, or ``(False, reason)`` when the
    target raised, the child died ``max_attempts`` times, or it timed out.
    """

    def __init__(
        self,
        make_target: Callable[[], Callable[[Any], Any]],
        *,
        timeout_s: float | None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        preload: tuple[str, ...] = (),
    ):
        check_isolation("process", max_attempts)
        self.make_target = make_target
        # Modules the child needs, imported once by the zygote it forks from.
        self.preload = tuple(preload)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._ready = False
        # Children this worker had to replace, by cause (for tests and logs).
        self.restarts = {"crashed": 0, "timed_out": 0, "start_failed": 0}
        self.start_backoff_s = START_BACKOFF_S
        self._failed_starts = 0  # in a row; the next start waits for them

    # -- child lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the child now (otherwise the first :meth:`run` does)."""
        if self._proc is None:
            self._spawn()
        if not self._ready:
            self._await_ready()

    def _spawn(self) -> None:
        try:
            self._factory = pickle.dumps(self.make_target)
        except Exception as err:
            raise IsolationError(
                f"the worker cannot be sent to a child process: {type(err).__name__}: {err}"
            ) from None
        env = dict(os.environ)
        # The child imports what this process imports, from the same places
        # (a Ray worker's working_dir is on sys.path, not in PYTHONPATH).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        # Injected CUDA and NVDEC answers (tests, simulated clusters) hold in
        # the child too.
        env.update(fake_environment())
        parent_sock, child_sock = socket.socketpair()
        try:
            if _zygote.supported():
                self._proc = _zygote.fork_child(self.preload, env, child_sock, STARTUP_TIMEOUT_S)
            else:
                self._proc = _zygote.spawn_module(CHILD_MODULE, child_sock, env)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())

    def _await_ready(self) -> None:
        try:
            self._conn.send_bytes(self._factory)
            if not self._conn.poll(STARTUP_TIMEOUT_S):
                raise IsolationError(f"a decoder process did not start in {STARTUP_TIMEOUT_S:g} s")
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            code = self._stop(kill=True)
            raise IsolationError(
                f"a decoder process died while starting ({describe_exit(code)})"
            ) from None
        except IsolationError:
            self._stop(kill=True)
            raise
        if kind != "ready":
            self._stop(kill=True)
            raise IsolationError(f"a decoder process could not start: {value}")
        self._ready = True

    def _stop(self, kill: bool) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready = False
        if conn is not None:
            if not kill:
                try:
                    conn.send(None)
                except OSError:
                    pass
            conn.close()
        if proc is None:
            return None
        if kill:
            proc.kill()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _restart(self) -> None:
        """:meth:`start`, after a pause that grows with the starts that failed in a row."""
        if self._proc is not None and self._ready:
            return
        if self._failed_starts:
            pause = self.start_backoff_s * 2 ** (self._failed_starts - 1)
            time.sleep(min(pause, MAX_START_BACKOFF_S))
        try:
            self.start()
        except IsolationError:
            self._failed_starts += 1
            raise
        self._failed_starts = 0

    def close(self) -> None:
        """Stop the child (it is also stopped when this process exits)."""
        self._stop(kill=False)

    def __del__(self) -> None:
        try:
            self._stop(kill=True)
        except Exception:
            pass

    @property
    def pid(self) -> int | None:
        """The current child's pid, if one is running."""
        return self._proc.pid if self._proc is not None else None

    # -- work ---------------------------------------------------------------------

    def run(self, item: Any) -> tuple[bool, Any]:
        deaths: list[str] = []
        limit = hard_timeout(self.timeout_s)
        name = printable_path(str(item))
        for _ in range(self.max_attempts):
            try:
                self._restart()
            except IsolationError as err:
                self.restarts["start_failed"] += 1
                return False, f"{name}: {' '.join(str(err).split())}"
            conn = self._conn
            try:
                conn.send(item)
                if not conn.poll(limit):
                    self._stop(kill=True)
                    self.restarts["timed_out"] += 1
                    return False, (
                        f"{name}: timed out: no result after {limit:g} s (decode_timeout_s="
                        f"{self.timeout_s:g}); its decoder process was killed"
                    )
                kind, value = conn.recv()
            except (EOFError, OSError):
                code = self._stop(kill=True)
                self.restarts["crashed"] += 1
                deaths.append(describe_exit(code))
                continue
            return kind == "ok", value
        return False, (
            f"{name}: the decoder process died on each of {len(deaths)} attempts "
            f"({', '.join(deaths)})"
        )


class IsolatedPool:
    """``size`` :class:`IsolatedWorker` children shared by threads: each call
    takes a free child for the duration of one item."""

    def __init__(self, make_target, size: int, *, timeout_s, max_attempts, preload=()):
        import queue

        self.workers = [
            IsolatedWorker(
                make_target, timeout_s=timeout_s, max_attempts=max_attempts, preload=preload
            )
            for _ in range(size)
        ]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for worker in self.workers:
            self._free.put(worker)

    def start(self) -> None:
        """Start every child, in parallel: their warm-ups overlap."""
        for worker in self.workers:
            if worker.pid is None:
                worker._spawn()
        try:
            for worker in self.workers:
                worker.start()
        except IsolationError:
            self.close()
            raise

    def run(self, item: Any) -> tuple[bool, Any]:
        worker = self._free.get()
        try:
            return worker.run(item)
        finally:
            self._free.put(worker)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


class InProcess:
    """``isolation="none"``: the target runs in this process, behind the same
    ``run(item) -> (ok, value)`` as :class:`IsolatedPool`; an exception is
    ``(False, reason)``, a crash takes the process down."""

    def __init__(self, make_target: Callable[[], Callable[[Any], Any]]):
        self.target = make_target()

    def run(self, item: Any) -> tuple[bool, Any]:
        from ._rows import error_reason

        try:
            return True, self.target(item)
        except Exception as err:
            return False, error_reason(err)

    def close(self) -> None:
        pass


def contained(
    in_process: Callable[[], Callable[[Any], Any]],
    in_child: Callable[[], Callable[[Any], Any]],
    *,
    isolation: str,
    timeout_s: float | None,
    max_attempts: int,
    size: int = 1,
    preload: tuple[str, ...] = (),
) -> InProcess | IsolatedPool:
    """The one place per-video work is isolated, for every caller: a runner
    whose ``run(item)`` returns ``(True, result)`` or ``(False, reason)``.

    ``isolation="process"``: ``size`` children, each built by ``in_child``
    (started now; the first start raises :class:`IsolationError`);
    ``"none"``: one target built by ``in_process``, shared by the caller's
    threads.
    """
    check_isolation(isolation, max_attempts)
    if isolation == "none":
        return InProcess(in_process)
    pool = IsolatedPool(
        in_child, size, timeout_s=timeout_s, max_attempts=max_attempts, preload=preload
    )
    pool.start()
    return pool


def watch_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """In a child: exit as soon as the parent is gone (re-parented), even
    while the main thread is stuck in native code."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(interval_s)

    threading.Thread(target=watch, name="cps_ray-parent-watch", daemon=True).start()
