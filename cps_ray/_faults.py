"""Test-only fault injection: make decoding chosen files crash or hang.

The crash-isolation and timeout paths of ``local_stream``, the pipeline and
the job are tested against real process deaths and real hangs, not mocks.
Set in the environment of the process that decodes (Ray actors and isolated
workers inherit it, or pass it in a ``runtime_env``):

- ``CPS_RAY_TEST_CRASH_ON``: comma-separated file names (basenames); decoding
  one of them kills the decoding process with SIGSEGV, as a native crash in
  FFmpeg would.
- ``CPS_RAY_TEST_HANG_ON``: the same, but the decoder blocks forever.
- ``CPS_RAY_TEST_SLOW_ON``: the same, but the decoder first sleeps
  :data:`SLOW_S` (keeps a worker busy long enough to be killed mid-run).

Both are read on every call and cost one dictionary lookup when unset.
"""

from __future__ import annotations

import os
import signal
import time

CRASH_ENV = "CPS_RAY_TEST_CRASH_ON"
HANG_ENV = "CPS_RAY_TEST_HANG_ON"
SLOW_ENV = "CPS_RAY_TEST_SLOW_ON"
SLOW_S = 0.25


def _chosen(env: str, path: str) -> bool:
    names = os.environ.get(env)
    if not names:
        return False
    return os.path.basename(path) in {n.strip() for n in names.split(",") if n.strip()}


def inject(path: str) -> None:
    """Crash, hang or pause here if the environment chose ``path``."""
    if _chosen(CRASH_ENV, path):
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(60)  # the signal is delivered before this returns
    if _chosen(HANG_ENV, path):
        while True:
            time.sleep(3600)
    if _chosen(SLOW_ENV, path):
        time.sleep(SLOW_S)
