"""The child process of :class:`cps_ray.pipeline._isolation.IsolatedWorker`.

``python -m cps_ray.pipeline._isolated_child FD``: FD is this end of a
socket pair. The first message is the pickled ``make_target``; the child
answers ``("ready", None)`` once ``make_target()`` built its target, then
for each item ``("ok", target(item))`` or ``("raised", reason)``. ``None``
or a closed socket ends it.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from multiprocessing.connection import Connection


def main(fd: int) -> None:
    from ._isolation import watch_parent
    from ._rows import error_reason

    watch_parent(os.getppid())
    conn = Connection(socket.socket(fileno=fd).detach())
    try:
        make_target = pickle.loads(conn.recv_bytes())
        target = make_target()
    except Exception as err:
        conn.send(("failed", error_reason(err)))
        return
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            item = None
        if item is None:
            # Nothing to flush: skip the interpreter's teardown of torch,
            # Numba and FFmpeg, which takes about a second.
            os._exit(0)
        try:
            answer = ("ok", target(item))
        except Exception as err:
            answer = ("raised", error_reason(err))
        conn.send(answer)


if __name__ == "__main__":
    main(int(sys.argv[1]))
