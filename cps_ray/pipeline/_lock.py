"""One run at a time per output: a lock file, ``OUT/.lock``.

A run writes the lock (host, process, a random token, the time) before it
reads or writes anything else, refreshes it every :data:`HEARTBEAT_S`
seconds from a thread, and deletes it at its end. A second run that finds a
live lock is refused with a message naming the holder. A lock whose holder
was killed does not hold forever: on the same host a holder process that no
longer exists frees it at once, and anywhere a lock not refreshed for
:data:`STALE_S` seconds counts as a leftover and is taken over.

Object stores have no create-if-absent here, so two runs that start within
the same instant could both write a lock: each reads the lock back after
writing it and only the run whose token is there goes on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager

from ..errors import JobError

LOCK_FILE = ".lock"
HEARTBEAT_S = 20.0
STALE_S = 120.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(output) -> dict | None:
    if not output.exists(LOCK_FILE):
        return None
    try:
        with output.fs.open_input_stream(output.path(LOCK_FILE)) as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):
        return None  # half written, or deleted meanwhile


def _holder_is_gone(lock: dict) -> bool:
    if time.time() - float(lock.get("refreshed", 0)) > STALE_S:
        return True
    return lock.get("host") == socket.gethostname() and not _alive(int(lock.get("pid", -1)))


@contextmanager
def output_lock(output):
    """Hold ``output``'s lock (an :class:`~cps_ray.pipeline._shards.OutputRoot`)
    for the block. Raises :class:`JobError` when another live run holds it."""
    held = _HELD.get(output.given)
    if held is not None:  # this process already holds it (run_preprocess -> write_shards)
        yield
        return
    current = _read(output)
    if current is not None and not _holder_is_gone(current):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(current["started"])))
        raise JobError(
            f"output {output.given!r} is being written by another run (host "
            f"{current.get('host')}, pid {current.get('pid')}, since {since}); wait for it "
            f"to end. A killed run's lock expires {STALE_S:g} s after its last heartbeat."
        )
    token = uuid.uuid4().hex
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
            "started": time.time(), "refreshed": time.time()}  # fmt: skip
    output.fs.create_dir(output.root or "/", recursive=True)
    output.write_bytes(LOCK_FILE, json.dumps(lock).encode())
    back = _read(output)
    if back is None or back.get("token") != token:
        raise JobError(f"output {output.given!r}: another run took its lock at the same time")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            lock["refreshed"] = time.time()
            try:
                output.write_bytes(LOCK_FILE, json.dumps(lock).encode())
            except OSError:
                pass  # the next beat tries again; the run itself reports write failures

    beat = threading.Thread(target=heartbeat, name="cps_ray-output-lock", daemon=True)
    beat.start()
    _HELD[output.given] = token
    try:
        yield
    finally:
        _HELD.pop(output.given, None)
        stop.set()
        beat.join(timeout=5)
        current = _read(output)
        if current is not None and current.get("token") == token:
            try:
                output.delete(LOCK_FILE)
            except OSError:
                pass


_HELD: dict[str, str] = {}
