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

A result crosses without the pipe (Linux): each worker holds a memory file
(``memfd``) that its child maps too; the child writes the result's arrays
there (pickle protocol 5's out-of-band buffers) and the pipe carries only the
rest: a row of patches sent through the pipe cost a quarter of decoding a
small clip (``docs/pipeline.md``). The children of
:func:`contained` do not re-run their owner's main module (a Ray worker's
main imports Ray; a user's script would start again): their targets live in
cps_ray, whose modules the fork server preloads.

``isolation="none"`` runs the work in the worker itself: no per-video cost,
but a crash takes the worker down (a Ray actor is then restarted, with
bounded task retries).

"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
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
# The result buffer's first size: a row or the frames of 16 frames at 224
# (2.4 MB each) fit; it grows to the largest result.
RESULT_BUFFER_BYTES = 8 * 2**20
_ALIGN = 64  # each array of a result starts on a cache line
# The name of the children that skip the main module (_skip_main_for_our_children).
CHILD_NAME = "cps_ray-isolated"

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
    (Linux), preloading ``preload``; elsewhere spawn."""
    _skip_main_for_our_children()
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    with _context_lock:
        # Takes effect when the server starts: the first worker's list holds.
        context.set_forkserver_preload(list(preload))
    return context


def _skip_main_for_our_children() -> None:
    """Make :mod:`multiprocessing` start the processes named ``CHILD_NAME``
    without re-running the owner's main module; other processes keep the
    standard behaviour. A child's target lives in cps_ray, never in
    ``__main__``; re-running the main module made each fork server inside a
    Ray worker import Ray, and a user's script without an ``if __name__ ==
    "__main__":`` guard start itself again."""
    from multiprocessing import spawn

    with _context_lock:
        if getattr(spawn.get_preparation_data, "_cps_ray", False):
            return
        standard = spawn.get_preparation_data

        def _preparation_data(name):
            data = standard(name)
            if name == CHILD_NAME:
                data.pop("init_main_from_path", None)
                data.pop("init_main_from_name", None)
            return data

        _preparation_data._cps_ray = True
        spawn.get_preparation_data = _preparation_data


class ResultBuffer:
    """A memory file the owner and its child both map: the child writes a
    result's arrays into it and sends the rest of the result through the
    pipe (:meth:`write`), the owner rebuilds the result from both
    (:meth:`read`, which copies the arrays out: the next result reuses the
    file). Linux only; :meth:`create` returns ``None`` elsewhere."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.map = mmap.mmap(fd, size)

    @classmethod
    def create(cls, size: int = RESULT_BUFFER_BYTES) -> ResultBuffer | None:
        if not hasattr(os, "memfd_create") or not sys.platform.startswith("linux"):
            return None
        fd = os.memfd_create("cps_ray-results", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    def __reduce__(self):
        from multiprocessing import reduction

        # As a Connection crosses to a child: the descriptor travels with it.
        return _attach_buffer, (reduction.DupFd(self.fd), self.size)

    def _ensure(self, size: int) -> None:
        if size <= self.size:
            return
        self.map.close()
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        self.size, self.map = size, mmap.mmap(self.fd, size)

    def write(self, result: Any) -> tuple[bytes, list[tuple[int, int]], int]:
        """(child) ``result``'s arrays into the file; returns what the pipe carries."""
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
        views = [b.raw() for b in buffers]
        spans, end = [], 0
        for view in views:
            spans.append((end, view.nbytes))
            end += -(-view.nbytes // _ALIGN) * _ALIGN
        self._ensure(end)
        for (start, length), view in zip(spans, views):
            self.map[start : start + length] = view
        return data, spans, self.size

    def read(self, message: tuple[bytes, list[tuple[int, int]], int]) -> Any:
        """(owner) The result :meth:`write` sent, its arrays copied out of the file."""
        data, spans, size = message
        self._ensure(size)
        import numpy as np

        end = max((start + length for start, length in spans), default=0)
        # One copy into memory the result owns (writable). np.empty, unlike a
        # bytearray, neither zeroes it nor faults fresh pages in each time.
        owned = np.empty(end, np.uint8)
        owned[:] = np.frombuffer(self.map, np.uint8, end)
        whole = memoryview(owned)
        return pickle.loads(data, buffers=[whole[s : s + n] for s, n in spans])

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def _attach_buffer(dupfd, size: int) -> ResultBuffer:
    return ResultBuffer(dupfd.detach(), size)


def _child_main(conn, make_target, env: dict[str, str], owner: int,
                results: ResultBuffer | None = None) -> None:  # fmt: skip
    """A child's life: its owner's environment, a target built once, then one
    item at a time until ``None`` or a closed connection. Results go through
    ``results`` where the owner gave one."""
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
            value = target(item)
            answer = ("ok", value) if results is None else ("shared", results.write(value))
        except Exception as err:
            answer = ("raised", failure(err))
        conn.send(answer)
        value = answer = None  # free the result before the next item


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
    ``import_main=False``: the child does not re-run the owner's main module
    (``make_target`` must not live there).

    :meth:`run` returns ``(True, result)``, or ``(False, (reason, kind))``
    when the target raised, the child died ``max_attempts`` times, timed out
    or could not start.
    """

    def __init__(self, make_target: Callable[[], Callable[[Any], Any]], *,
                 timeout_s: float | None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 preload: tuple[str, ...] = (), import_main: bool = True):  # fmt: skip
        check_isolation("process", max_attempts)
        self.make_target = make_target
        self.preload = tuple(preload)
        self.import_main = import_main
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._proc = None
        self._conn = None
        self._ready = False
        self._results = ResultBuffer.create()
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
        name = None if self.import_main else CHILD_NAME
        proc = context.Process(target=_child_main, name=name, daemon=True,
                               args=(theirs, self.make_target, env, os.getpid(),
                                     self._results))  # fmt: skip
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
        if self._results is not None:
            self._results.close()
            self._results = None

    def __del__(self) -> None:
        try:
            self._stop(kill=True)
            if self._results is not None:
                self._results.close()
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
            if kind == "shared":
                return True, self._results.read(value)
            return kind == "ok", value
        return False, (
            f"{name}: the decoder process died on each of {len(deaths)} attempts "
            f"({', '.join(deaths)})",
            "crashed",
        )


class IsolatedPool:
    """``size`` :class:`IsolatedWorker` children shared by threads: each call
    takes a free child for the duration of one item."""

    def __init__(self, make_target, size: int, *, timeout_s, max_attempts, preload=(),
                 import_main: bool = True):  # fmt: skip
        import queue

        self.workers = [
            IsolatedWorker(
                make_target,
                timeout_s=timeout_s,
                max_attempts=max_attempts,
                preload=preload,
                import_main=import_main,
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
                        preload=preload, import_main=False)  # fmt: skip
    pool.start()
    return pool
