"""Crash and hang isolation: a worker's per-video work runs in a child process.

A native crash in a decoder (a segfault or an abort in FFmpeg or NVDEC)
kills the process it happens in, and a native hang blocks it forever. With
``isolation="process"`` (the default) the work runs in child processes the
worker owns, started by the standard library's ``forkserver``: one server
per worker process imports the heavy modules once
(``set_forkserver_preload``) and forks each child from that state, so a
child, and a child replacing one that crashed, starts in milliseconds.

- a child that dies on a video is replaced and the video tried again, at most
  ``max_attempts`` times in all; then the video is an error row naming the
  signal (kind ``crashed``);
- a video that takes longer than ``decode_timeout_s`` (plus a grace period
  for the decoder's own, cooperative check) has its child killed and is an
  error row (kind ``timeout``); it is not retried;
- a child that cannot be started again during a run (its imports failing
  under memory pressure) makes the video an error row, and the next video
  starts a fresh child after a growing pause: a run never ends on it (only
  the first start, before any video, raises :class:`IsolationError`);
- a child exits as soon as its owner is gone, and the fork server with it:
  no process outlives the worker that started it.

``isolation="none"`` runs the work in the worker itself: no per-video cost,
but a crash takes the worker down (a Ray actor is then restarted, with
bounded task retries).

As with every ``multiprocessing`` start method but ``fork``, a script whose
top level calls ``local_stream`` must guard it with ``if __name__ ==
"__main__":`` (the children import the script's module).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .._devices import fake_environment
from .._rows import failure
from ..errors import ConfigError, IsolationError, printable_path

ISOLATION_MODES = ("process", "none")
DEFAULT_ISOLATION = "process"
DEFAULT_MAX_ATTEMPTS = 2
# Importing the decoders and warming the kernels, on a busy node.
STARTUP_TIMEOUT_S = 300.0
# The decoder checks its own deadline between frames and says so in a clearer
# error; the child is killed only if it has not answered this much later.
MAX_GRACE_S = 5.0
# A child that cannot be started again: the next start waits 1, 2, 4... s.
START_BACKOFF_S = 1.0
MAX_START_BACKOFF_S = 60.0

_context_lock = threading.Lock()


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


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def child_context(preload: tuple[str, ...]):
    """The ``multiprocessing`` context children start from: the fork server
    (Linux), preloading ``preload`` (and Ray, inside a Ray worker: a child
    imports the worker's main module, which imports Ray); elsewhere spawn."""
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    with _context_lock:
        modules = list(preload) + (["ray"] if "ray" in sys.modules else [])
        # Takes effect when the server starts: the first worker's list holds.
        context.set_forkserver_preload(modules)
    return context


def _child_main(conn, make_target, env: dict[str, str], owner: int) -> None:
    """A child's life: its owner's environment, a target built once, then one
    item at a time until ``None`` or a closed connection."""
    os.environ.clear()
    os.environ.update(env)
    # A child starts no process of its own. Numba takes a multiprocessing
    # lock for its thread pool's start when the start method is a fork
    # ("forkserver" counts): registered with the owner's resource tracker and
    # never released by a child that is killed, it is reported as leaked.
    multiprocessing.set_start_method("spawn", force=True)
    _exit_with(owner)
    try:
        target = make_target()
    except Exception as err:  # an import failing under memory pressure, say
        conn.send(("failed", failure(err)))
        return
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            item = None
        if item is None:
            # Nothing to flush: skip the interpreter's teardown of the decoders.
            os._exit(0)
        try:
            answer = ("ok", target(item))
        except Exception as err:
            answer = ("raised", failure(err))
        conn.send(answer)


def _exit_with(owner: int, interval_s: float = 0.5) -> None:
    """Exit as soon as ``owner`` or this child's parent (the fork server) is
    gone, even while the main thread is stuck in native code."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(interval_s)

    threading.Thread(target=watch, name="cps_ray-owner-watch", daemon=True).start()


class IsolatedWorker:
    """Runs ``target(item)`` in a child process, where ``target =
    make_target()`` was built once per child. One caller at a time.

    :meth:`run` returns ``(True, result)``, or ``(False, (reason, kind))``
    when the target raised, the child died ``max_attempts`` times, timed out
    or could not start.
    """

    def __init__(self, make_target: Callable[[], Callable[[Any], Any]], *,
                 timeout_s: float | None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 preload: tuple[str, ...] = ()):  # fmt: skip
        check_isolation("process", max_attempts)
        self.make_target = make_target
        self.preload = tuple(preload)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._proc = None
        self._conn = None
        self._ready = False
        # Children this worker had to replace, by cause (for tests and logs).
        self.restarts = {"crashed": 0, "timed_out": 0, "start_failed": 0}
        self.start_backoff_s = START_BACKOFF_S
        self._failed_starts = 0  # in a row; the next start waits for them

    @property
    def pid(self) -> int | None:
        """The current child's pid, if one is running."""
        return self._proc.pid if self._proc is not None else None

    def spawn(self) -> None:
        """Start a child (without waiting for it to be ready)."""
        if self._proc is not None:
            return
        context = child_context(self.preload)
        env = {**os.environ, **fake_environment()}
        ours, theirs = context.Pipe()
        proc = context.Process(target=_child_main, args=(theirs, self.make_target, env,
                                                        os.getpid()), daemon=True)  # fmt: skip
        try:
            proc.start()
        except Exception as err:  # the target cannot be pickled, say
            ours.close()
            raise IsolationError(
                f"a decoder process cannot start: {type(err).__name__}: {err}"
            ) from None
        finally:
            theirs.close()
        self._proc, self._conn = proc, ours

    def start(self) -> None:
        """Start the child and wait until its target is built."""
        self.spawn()
        try:
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
            raise IsolationError(f"a decoder process could not start: {value[0]}")
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
        proc.join(timeout=10)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        return proc.exitcode

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
        """Stop the child."""
        self._stop(kill=False)

    def __del__(self) -> None:
        try:
            self._stop(kill=True)
        except Exception:
            pass

    def run(self, item: Any) -> tuple[bool, Any]:
        deaths: list[str] = []
        limit = hard_timeout(self.timeout_s)
        name = printable_path(str(item))
        for _ in range(self.max_attempts):
            try:
                self._restart()
            except IsolationError as err:
                self.restarts["start_failed"] += 1
                return False, (f"{name}: {' '.join(str(err).split())}", "crashed")
            conn = self._conn
            try:
                conn.send(item)
                if not conn.poll(limit):
                    self._stop(kill=True)
                    self.restarts["timed_out"] += 1
                    return False, (
                        f"{name}: timed out: no result after {limit:g} s (decode_timeout_s="
                        f"{self.timeout_s:g}); its decoder process was killed",
                        "timeout",
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
            f"({', '.join(deaths)})",
            "crashed",
        )


class IsolatedPool:
    """``size`` :class:`IsolatedWorker` children shared by threads: each call
    takes a free child for the duration of one item."""

    def __init__(self, make_target, size: int, *, timeout_s, max_attempts, preload=()):
        import queue

        self.workers = [
            IsolatedWorker(
                make_target, timeout_s=timeout_s, max_attempts=max_attempts, preload=preload
            )  # fmt: skip
            for _ in range(size)
        ]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for worker in self.workers:
            self._free.put(worker)

    def start(self) -> None:
        """Start every child; their warm-ups overlap."""
        try:
            for worker in self.workers:
                worker.spawn()
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
    ``run(item) -> (ok, value)``; an exception is ``(False, (reason, kind))``,
    a crash takes the process down."""

    def __init__(self, make_target: Callable[[], Callable[[Any], Any]]):
        self.target = make_target()

    def run(self, item: Any) -> tuple[bool, Any]:
        try:
            return True, self.target(item)
        except Exception as err:
            return False, failure(err)

    def close(self) -> None:
        pass


def contained(in_process: Callable[[], Callable[[Any], Any]],
              in_child: Callable[[], Callable[[Any], Any]], *, isolation: str,
              timeout_s: float | None, max_attempts: int, size: int = 1,
              preload: tuple[str, ...] = ()) -> InProcess | IsolatedPool:  # fmt: skip
    """The one place per-video work is isolated: a runner whose ``run(item)``
    returns ``(True, result)`` or ``(False, (reason, kind))``.

    ``isolation="process"``: ``size`` children, each built by ``in_child``
    (started now; the first start raises :class:`IsolationError`);
    ``"none"``: one target built by ``in_process``, shared by the caller's
    threads.
    """
    check_isolation(isolation, max_attempts)
    if isolation == "none":
        return InProcess(in_process)
    pool = IsolatedPool(in_child, size, timeout_s=timeout_s, max_attempts=max_attempts,
                        preload=preload)  # fmt: skip
    pool.start()
    return pool
