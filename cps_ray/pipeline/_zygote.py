"""Isolated children forked from a preloaded process (Linux).

Starting an isolated child the plain way costs a fresh interpreter that
imports torch, torchcodec and Numba: about 5 s of CPU on a small machine,
paid again for every child of a pool and for every restart after a crash.
A zygote pays it once: it is started the plain way, imports the modules its
children need (nothing more: no CUDA context, no thread pool, no file
opened), then forks a child per request. A fork of it is ready in
milliseconds, and shares its memory until written.

``python -m cps_ray.pipeline._zygote FD`` talks to its owner over a socket
pair (FD is its end):

- the first message is the tuple of modules to import; it answers
  ``("ready", None)`` or ``("failed", reason)``;
- ``("fork", env, cwd)`` followed by a socket passed as a file descriptor:
  it forks a child that takes ``env`` as its whole environment and ``cwd``
  as its folder, then serves that socket exactly as
  :mod:`._isolated_child` does; the answer is ``("forked", pid)``;
- ``("wait", pid, timeout)``: the child's exit status once it has exited
  (``Popen.returncode``'s convention), or ``None`` after ``timeout`` s.

The zygote reaps a child only when asked, so the owner may signal a pid
until it has waited for it. It exits when its owner is gone or closes the
socket; its children notice it is gone (their parent) and exit too.

Which zygote a child comes from is keyed by the modules it preloads and by
the environment, less the variables cps_ray reads when a video is decoded
(:data:`PER_CALL_ENV`), which each child takes from its owner.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

from ..errors import IsolationError

# Read when a video is decoded, never at import: a child takes them from its
# owner, and they do not pick a zygote.
PER_CALL_ENV = (
    "PYTEST_CURRENT_TEST",
    "CPS_RAY_TEST_CRASH_ON",
    "CPS_RAY_TEST_HANG_ON",
    "CPS_RAY_FAKE_CUDA_DEVICES",
    "CPS_RAY_FAKE_NVDEC",
)
PER_CALL_PREFIXES = ("AWS_",)
# Zygotes kept per process; one without live children is closed to make room.
MAX_ZYGOTES = 4
_POLL_S = 0.5


def supported() -> bool:
    """Forking is safe here: Linux (macOS's system libraries are not fork-safe),
    and not switched off by ``CPS_RAY_FORK_CHILDREN=0``."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and os.environ.get("CPS_RAY_FORK_CHILDREN", "1") not in ("", "0")
    )


def spawn_module(module: str, sock: socket.socket, env: dict[str, str]) -> subprocess.Popen:
    """``python -m MODULE FD`` with ``sock`` as FD and ``env`` as its whole
    environment: how a zygote, or a child where there is none, starts.
    Library chatter goes to stderr: the caller's stdout may be data."""
    return subprocess.Popen(
        [sys.executable, "-m", module, str(sock.fileno())],
        pass_fds=(sock.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=sys.__stderr__.fileno() if sys.__stderr__ else subprocess.DEVNULL,
        env=env,
        close_fds=True,
    )


def _key(preload: tuple[str, ...], env: dict[str, str], cwd: str) -> tuple:
    kept = tuple(
        sorted(
            (k, v)
            for k, v in env.items()
            if k not in PER_CALL_ENV and not k.startswith(PER_CALL_PREFIXES)
        )
    )
    return preload, kept, cwd, sys.executable


class Zygote:
    """The owner's handle on one zygote. Thread-safe."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str], startup_timeout_s: float):
        parent_sock, child_sock = socket.socketpair()
        try:
            self.proc = spawn_module(__name__, child_sock, env)
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._lock = threading.Lock()
        self.live = 0  # children forked and not yet waited for
        try:
            self._conn.send(tuple(preload))
            if not self._conn.poll(startup_timeout_s):
                raise IsolationError(f"a decoder process did not start in {startup_timeout_s:g} s")
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            code = self.close()
            raise IsolationError(f"a decoder process died while starting (status {code})") from None
        except IsolationError:
            self.close()
            raise
        if kind != "ready":
            self.close()
            raise IsolationError(f"a decoder process could not start: {value}")

    def _ask(self, message, handle: int | None = None):
        with self._lock:
            try:
                self._conn.send(message)
                if handle is not None:
                    send_handle(self._conn, handle, self.proc.pid)
                return self._conn.recv()[1]
            except (EOFError, OSError):
                raise IsolationError("the process that starts decoders is gone") from None

    def fork(self, sock: socket.socket, env: dict[str, str], cwd: str) -> ForkedChild:
        pid = self._ask(("fork", env, cwd), sock.fileno())
        with self._lock:
            self.live += 1
        return ForkedChild(self, pid)

    def wait(self, pid: int, timeout: float | None) -> int | None:
        try:
            code = self._ask(("wait", pid, timeout))
        except IsolationError:
            return None  # gone with its zygote; the status is lost
        if code is not None:
            with self._lock:
                self.live -= 1
        return code

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> int | None:
        self._conn.close()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class ForkedChild:
    """What :class:`subprocess.Popen` offers of a child, for one a zygote forked."""

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            code = self.zygote.wait(self.pid, timeout)
            if code is None and timeout is not None and self.zygote.alive:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            self.returncode = code
        return self.returncode


_zygotes: dict[tuple, Zygote] = {}
_zygotes_lock = threading.Lock()


def _forget_inherited() -> None:
    """In a fork of this process (a DataLoader worker, say): the parent's
    zygotes stay the parent's; this process starts its own when it needs one."""
    global _zygotes, _zygotes_lock
    _zygotes, _zygotes_lock = {}, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


def fork_child(
    preload: tuple[str, ...], env: dict[str, str], sock: socket.socket, startup_timeout_s: float
) -> ForkedChild:
    """A child serving ``sock``, forked from this process's zygote for
    ``preload`` and ``env`` (started if needed; one found dead is replaced)."""
    cwd = os.getcwd()
    zygote = _zygote_for(_key(preload, env, cwd), preload, env, startup_timeout_s)
    try:
        return zygote.fork(sock, env, cwd)
    except IsolationError:
        zygote.close()  # killed from outside between two children, say
    # once more, from a fresh zygote
    zygote = _zygote_for(_key(preload, env, cwd), preload, env, startup_timeout_s)
    return zygote.fork(sock, env, cwd)


def _zygote_for(key: tuple, preload, env, startup_timeout_s: float) -> Zygote:
    with _zygotes_lock:
        zygote = _zygotes.pop(key, None)
        if zygote is not None and not zygote.alive:
            zygote = None
        if zygote is None:
            for old_key, old in list(_zygotes.items()):
                if len(_zygotes) < MAX_ZYGOTES:
                    break
                if old.live <= 0:  # oldest first
                    del _zygotes[old_key]
                    old.close()
            zygote = Zygote(preload, env, startup_timeout_s)
        _zygotes[key] = zygote  # most recently used last
        return zygote


@atexit.register
def close_all() -> None:
    with _zygotes_lock:
        for zygote in _zygotes.values():
            zygote.close()
        _zygotes.clear()


# -- the zygote's side ---------------------------------------------------------------


def _wait(pid: int, timeout: float | None) -> int | None:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _child(conn: Connection, fd: int, env: dict[str, str], cwd: str) -> None:
    conn.close()
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
    except OSError:
        pass
    from . import _isolated_child

    try:
        _isolated_child.main(fd)
    finally:
        os._exit(0)


def main(fd: int) -> None:
    owner = os.getppid()
    conn = Connection(socket.socket(fileno=fd).detach())
    try:
        for name in conn.recv():
            importlib.import_module(name)
    except Exception as err:  # an import failing under memory pressure, say
        conn.send(("failed", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", None))
    while os.getppid() == owner:
        if not conn.poll(_POLL_S):
            continue
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "fork":
            _, env, cwd = message
            child_fd = recv_handle(conn)
            pid = os.fork()
            if pid == 0:
                _child(conn, child_fd, env, cwd)
            os.close(child_fd)
            conn.send(("forked", pid))
        elif message[0] == "wait":
            conn.send(("waited", _wait(message[1], message[2])))
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
