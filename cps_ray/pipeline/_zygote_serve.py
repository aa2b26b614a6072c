"""The zygote's side of :mod:`._zygote`: ``python -m
cps_ray.pipeline._zygote_serve FD`` serves one owner over a socket pair;
``... --node NAME ANCHOR IDLE_S MODULES`` is a node's zygote, serving every
owner of its user that connects to the abstract socket ``NAME``.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle

from ._zygote import POLL_S, peer


def preload(entries) -> None:
    """Import each ``"module"``; for ``"module:function"`` also call
    ``function()`` once, here, so that every child forked after it starts
    with its work done (never anything that starts threads: a fork copies
    only the thread that forks)."""
    for entry in entries:
        module, _, function = entry.partition(":")
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()


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


def _child(inherited, fd: int, env: dict[str, str], cwd: str) -> None:
    for handle in inherited:  # the zygote's sockets are not the child's
        handle.close()
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
        preload(conn.recv())
    except Exception as err:  # an import failing under memory pressure, say
        conn.send(("failed", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", None))
    while os.getppid() == owner:
        if not conn.poll(POLL_S):
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
                _child([conn], child_fd, env, cwd)
            os.close(child_fd)
            conn.send(("forked", pid))
        elif message[0] == "wait":
            conn.send(("waited", _wait(message[1], message[2])))
    os._exit(0)


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (``/proc/PID/stat``), to tell it from a reused
    pid; ``None`` once it has exited (a zombie its parent has not reaped
    has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


class _NodeServer:
    """The node zygote's loop: owners connect, each asks as over a socket
    pair; one request at a time, a wait answered when its child has exited."""

    def __init__(self, listener: socket.socket, anchor: int, idle_s: float):
        self.listener, self.anchor, self.idle_s = listener, anchor, idle_s
        self.anchor_started = _start_time(anchor) or "gone"
        self.owners: dict[Connection, set[int]] = {}  # owner -> its unwaited children
        self.waits: dict[Connection, tuple[int, float]] = {}  # owner -> (pid, deadline)
        self.doomed: set[int] = set()  # children of gone owners, killed, to reap

    def serve(self) -> None:
        last_owner = checked = time.monotonic()
        while True:
            now = time.monotonic()
            if self.owners:
                last_owner = now
            elif now - last_owner > self.idle_s:
                break
            if now - checked > POLL_S:
                checked = now
                if _start_time(self.anchor) != self.anchor_started:
                    break  # the raylet is gone: so is this node's Ray
            for ready in wait([self.listener, *self.owners], 0.01 if self.waits else POLL_S):
                if ready is self.listener:
                    self._accept()
                else:
                    self._answer(ready)
            self._answer_waits()
            self.doomed = {pid for pid in self.doomed if _wait(pid, 0) is None}
        for owner in list(self.owners):
            self._drop(owner)

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        if peer(sock)[1] != os.getuid():
            sock.close()  # another user's process: never served
            return
        self.owners[Connection(sock.detach())] = set()

    def _drop(self, owner: Connection) -> None:
        for pid in self.owners.pop(owner, ()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.doomed.add(pid)
        self.waits.pop(owner, None)
        owner.close()

    def _answer(self, owner: Connection) -> None:
        try:
            message = owner.recv()
            if message[0] == "hello":
                owner.send(("ready", None))
            elif message[0] == "fork":
                _, env, cwd = message
                child_fd = recv_handle(owner)
                pid = os.fork()
                if pid == 0:
                    _child([self.listener, *self.owners], child_fd, env, cwd)
                os.close(child_fd)
                self.owners[owner].add(pid)
                owner.send(("forked", pid))
            elif message[0] == "wait":
                _, pid, timeout = message
                if pid not in self.owners[owner]:
                    owner.send(("waited", None))  # not this owner's child
                else:
                    deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
                    self.waits[owner] = (pid, deadline)
        except (EOFError, OSError):
            self._drop(owner)  # gone (an actor killed, say): so are its children

    def _answer_waits(self) -> None:
        now = time.monotonic()
        for owner, (pid, deadline) in list(self.waits.items()):
            code = _wait(pid, 0)
            if code is None and now < deadline:
                continue
            del self.waits[owner]
            if code is not None:
                self.owners[owner].discard(pid)
            try:
                owner.send(("waited", code))
            except OSError:
                self._drop(owner)


def serve_node(name: str, anchor: int, idle_s: float, modules: tuple[str, ...]) -> None:
    """The node's zygote: detach, claim ``name``, :func:`preload` ``modules``, serve."""
    if os.fork() > 0:
        os._exit(0)  # the starting owner waits for this
    # Nobody's child, in a session of its own: Ray kills a dead actor's
    # children and its process group, and this zygote serves the next actors.
    os.setsid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + name)
    except OSError:
        os._exit(0)  # another owner started it first: that one serves
    listener.listen(64)
    try:
        preload(modules)
    except Exception as err:  # an import failing under memory pressure, say
        _refuse_waiting_owners(listener, f"{type(err).__name__}: {err}")
        os._exit(1)  # the next owner starts a zygote again
    _NodeServer(listener, anchor, idle_s).serve()
    os._exit(0)


def _refuse_waiting_owners(listener: socket.socket, reason: str, grace_s: float = 2.0) -> None:
    """The imports failed: tell the owners that connected meanwhile why."""
    listener.settimeout(grace_s)
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:  # nobody else within the grace period
            return
        if peer(sock)[1] != os.getuid():
            sock.close()
            continue
        owner = Connection(sock.detach())
        try:
            if owner.poll(grace_s):
                owner.recv()  # its hello
                owner.send(("failed", reason))
        except (EOFError, OSError):
            pass
        owner.close()


if __name__ == "__main__":
    if sys.argv[1] == "--node":
        name, anchor, idle_s, modules = sys.argv[2:6]
        serve_node(name, int(anchor), float(idle_s), tuple(filter(None, modules.split(","))))
    else:
        main(int(sys.argv[1]))
