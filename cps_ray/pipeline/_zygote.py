"""Isolated children forked from a preloaded process (Linux).

Starting an isolated child the plain way costs a fresh interpreter that
imports torch, torchcodec and Numba: about 5 s of CPU on a small machine,
paid again for every child of a pool and for every restart after a crash.
A zygote pays it once: it is started the plain way, imports the modules its
children need and loads Numba's serial kernels (nothing more: no CUDA
context, no thread pool, no file opened), then forks a child per request. A fork of it is ready in
milliseconds, and shares its memory until written.

``python -m cps_ray.pipeline._zygote_serve FD`` (:mod:`._zygote_serve`)
talks to its owner over a socket pair (FD is its end):

- the first message is the tuple of modules to import (``module:function``
  also calls the function once: :func:`._zygote_serve.preload`); it answers
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

**One zygote per node in a Ray cluster.** In a Ray worker (its parent is
the raylet) the zygote is shared by every actor of the node whose key is the
same: every decode actor of a pipeline, and of the pipelines after it, forks
its children from one process that imported torch and torchcodec once.
``python -m cps_ray.pipeline._zygote_serve --node NAME ANCHOR IDLE_S MODULES``
detaches itself from the actor that starts it (nobody's child, in a session
of its own: Ray's clean-up of a dead actor's children and process group
spares it), listens on the abstract Unix socket ``NAME``, and serves each
connected owner as above, one request at a time:

- it answers only processes of its own user (``SO_PEERCRED``), and an owner
  sends nothing before it has checked the zygote's user the same way;
- an owner that disconnects (an actor killed, say) has its children killed;
- imports that fail are answered, with the reason, to the owners waiting;
  then it exits, and the next owner starts one again;
- it exits when the raylet (``ANCHOR``) is gone, or after ``IDLE_S`` s
  without an owner; ``CPS_RAY_NODE_ZYGOTE=0`` keeps one zygote per actor.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle

from ..errors import IsolationError

# Read when a video is decoded, never at import: a child takes them from its
# owner, and they do not pick a zygote.
PER_CALL_ENV = (
    "PYTEST_CURRENT_TEST",
    "CPS_RAY_TEST_CRASH_ON",
    "CPS_RAY_TEST_HANG_ON",
    "CPS_RAY_TEST_SLOW_ON",
    "CPS_RAY_FAKE_CUDA_DEVICES",
    "CPS_RAY_FAKE_NVDEC",
)
# Ray's variables too: a zygote never imports ray, and Ray gives each job's
# workers their own (RAY_JOB_ID, the job's runtime env), so with them in the
# key every job joining a warm node would start a zygote of its own (torch,
# torchcodec and Numba imported again: about 7 CPU-s).
PER_CALL_PREFIXES = ("AWS_", "RAY_")
# Zygotes kept per process; one without live children is closed to make room.
MAX_ZYGOTES = 4
POLL_S = 0.5
SERVE_MODULE = "cps_ray.pipeline._zygote_serve"
# A node's zygote holds torch and torchcodec (about 400 MiB, shared with its
# children); it goes after this long without an owner.
NODE_IDLE_S = 300.0


def supported() -> bool:
    """Forking is safe here: Linux (macOS's system libraries are not fork-safe),
    and not switched off by ``CPS_RAY_FORK_CHILDREN=0``."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and os.environ.get("CPS_RAY_FORK_CHILDREN", "1") not in ("", "0")
    )


def node_sharing() -> bool:
    """Children may come from the node's zygote: switched off by
    ``CPS_RAY_NODE_ZYGOTE=0``."""
    return os.environ.get("CPS_RAY_NODE_ZYGOTE", "1") not in ("", "0")


def node_anchor() -> int | None:
    """The raylet's pid when this process is a Ray worker (the raylet starts
    workers as its children), else ``None``: a process of its own."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/comm") as comm:
            return parent if comm.read().strip() == "raylet" else None
    except OSError:
        return None


def spawn_module(
    module: str, sock: socket.socket | None, env: dict[str, str], args: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``python -m MODULE FD`` with ``sock`` as FD (or ``python -m MODULE
    ARGS``) and ``env`` as its whole environment: how a zygote, or a child
    where there is none, starts. Library chatter goes to stderr: the
    caller's stdout may be data."""
    fds = () if sock is None else (sock.fileno(),)
    return subprocess.Popen(
        [sys.executable, "-m", module, *map(str, fds), *args],
        pass_fds=fds,
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


class _Handle:
    """An owner's side of a connection to a zygote. Thread-safe."""

    _conn: Connection

    def _start(self, conn: Connection, hello, startup_timeout_s: float) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.live = 0  # children forked and not yet waited for
        try:
            self._conn.send(hello)
            if not self._conn.poll(startup_timeout_s):
                raise IsolationError(f"a decoder process did not start in {startup_timeout_s:g} s")
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            code = self.close()
            status = "" if code is None else f" (status {code})"
            raise IsolationError(f"a decoder process died while starting{status}") from None
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
                    send_handle(self._conn, handle, 0)
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


class Zygote(_Handle):
    """This process's own zygote, its child."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str], startup_timeout_s: float):
        parent_sock, child_sock = socket.socketpair()
        try:
            self.proc = spawn_module(SERVE_MODULE, child_sock, env)
        finally:
            child_sock.close()
        self._start(Connection(parent_sock.detach()), tuple(preload), startup_timeout_s)

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


def peer(sock: socket.socket) -> tuple[int, int]:
    """``(pid, uid)`` of the process at the other end of a Unix socket."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


def node_name(key: tuple, anchor: int) -> str:
    """The abstract socket a node's zygote for ``key`` listens on."""
    digest = hashlib.sha256(pickle.dumps(key)).hexdigest()[:24]
    return f"cps_ray-zygote-{os.getuid()}-{anchor}-{digest}"


class NodeZygote(_Handle):
    """A connection to the zygote this node's Ray workers share; started
    (detached) by the first owner that finds none."""

    def __init__(self, name: str, anchor: int, preload: tuple[str, ...], env: dict[str, str],
                 startup_timeout_s: float):  # fmt: skip
        sock = self._connect(name)
        if sock is None:
            args = ("--node", name, str(anchor), str(NODE_IDLE_S), ",".join(preload))
            spawn_module(SERVE_MODULE, None, env, args).wait()  # it detaches at once
            deadline = time.monotonic() + min(startup_timeout_s, 30.0)
            while sock is None and time.monotonic() < deadline:
                time.sleep(0.02)
                sock = self._connect(name)
            if sock is None:
                raise IsolationError("the process that starts decoders did not start listening")
        self.pid, uid = peer(sock)
        if uid != os.getuid():
            sock.close()
            raise IsolationError(f"the decoder socket {name!r} belongs to another user ({uid})")
        self._start(Connection(sock.detach()), ("hello",), startup_timeout_s)

    @staticmethod
    def _connect(name: str) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect("\0" + name)
        except OSError:  # nobody listens (yet)
            sock.close()
            return None
        return sock

    @property
    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not self._conn.closed

    def close(self) -> int | None:
        self._conn.close()  # the zygote kills the children still running
        return None


class ForkedChild:
    """What :class:`subprocess.Popen` offers of a child, for one a zygote forked."""

    def __init__(self, zygote: _Handle, pid: int):
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


_zygotes: dict[tuple, _Handle] = {}
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
    """A child serving ``sock``, forked from the zygote for ``preload`` and
    ``env``: the node's in a Ray worker, else this process's (started if
    needed; one found dead is replaced)."""
    cwd = os.getcwd()
    anchor = node_anchor() if node_sharing() else None
    key = (*_key(preload, env, cwd), anchor)
    zygote = _zygote_for(key, anchor, preload, env, startup_timeout_s)
    try:
        return zygote.fork(sock, env, cwd)
    except IsolationError:
        zygote.close()  # killed from outside between two children, say
    # once more, from a fresh zygote
    zygote = _zygote_for(key, anchor, preload, env, startup_timeout_s)
    return zygote.fork(sock, env, cwd)


def _zygote_for(key: tuple, anchor: int | None, preload, env, startup_timeout_s) -> _Handle:
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
            if anchor is None:
                zygote = Zygote(preload, env, startup_timeout_s)
            else:
                name = node_name(key[:-1], anchor)
                zygote = NodeZygote(name, anchor, preload, env, startup_timeout_s)
        _zygotes[key] = zygote  # most recently used last
        return zygote


@atexit.register
def close_all() -> None:
    with _zygotes_lock:
        for zygote in _zygotes.values():
            zygote.close()
        _zygotes.clear()
