"""One line of Ray's own log, dropped from a job's stderr.

Ray Data hands every actor of a ``map_batches`` pool an object reference in
its constructor (ray-project/ray#57733), and Ray's core worker logs, at
error level and for every pool, that such an actor "has constructor
arguments in the object store and max_restarts > 0" (ray#53727). Nothing
is wrong: the reference lives as long as the dataset. Turning actor restarts
off would silence it and lose the restarts, and the line comes from Ray's
C++ logging, which Python's ``logging`` never sees.

:func:`drop_ray_53727` therefore filters this process's file descriptor 2: a
thread copies what is written there to the real stderr, line by line, less
the lines that name that issue. The job entry points (``cps-ray
preprocess``, ``jobs/*.py``, ``cps-ray demo --job``) call it, and so does
:func:`cps_ray.patch_dataset` in the process that builds a pipeline (a
user's own script or notebook): the driver creates the pool actors, so the
line is written there. ``CPS_RAY_KEEP_RAY_LOG=1`` turns it off. At exit the
descriptor is put back (unless something else has replaced it since, as
pytest's capture does) and the thread drained, so nothing written before (a
traceback included) is lost.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

MARKER = b"ray-project/ray/issues/53727"
_installed = False


def _pump(read_fd: int, original_fd: int) -> None:
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            chunk = pipe.read(1 << 16)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if MARKER not in line)
            if kept:
                os.write(original_fd, kept)
    if pending and MARKER not in pending:
        os.write(original_fd, pending)


def drop_ray_53727() -> None:
    """Filter the ray#53727 line out of this process's stderr (once)."""
    global _installed
    if _installed or os.environ.get("CPS_RAY_KEEP_RAY_LOG", "0") not in ("", "0"):
        return
    _installed = True
    sys.stderr.flush()
    try:
        original = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    ours = os.fstat(write_fd)
    os.close(write_fd)
    thread = threading.Thread(target=_pump, args=(read_fd, original), daemon=True,
                              name="cps_ray-stderr")  # fmt: skip
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        try:
            now = os.fstat(2)
        except OSError:
            return
        if (now.st_dev, now.st_ino) != (ours.st_dev, ours.st_ino):
            return  # fd 2 was replaced since: leave it to whoever did
        # Closing the pipe's last write end (fd 2) lets the thread drain and stop;
        # a child process still holding it only delays this by the timeout.
        os.dup2(original, 2)
        thread.join(timeout=2.0)

    atexit.register(restore)
