"""A local Ray head with token authentication, for the tests that submit jobs.

The head runs ``ray start --head --block`` in a session of its own, on free
ports, in its own temp dir, with its own token file, so it never meets the
test session's Ray. It is stopped by SIGTERM to that command (Ray drains and
stops every process it started), then SIGKILL to anything of its session
still alive. Never ``ray stop``: that stops every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import psutil
except ImportError:  # Ray bundles psutil and puts it on sys.path when imported
    import ray  # noqa: F401

    psutil = importlib.import_module("psutil")

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
START_TIMEOUT_SECONDS = 120
STOP_GRACE_SECONDS = 5
# Ray's client variables of the caller must not leak into the head or the CLI.
CLEARED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@dataclass(frozen=True)
class LocalHead:
    dashboard_url: str  # http://127.0.0.1:PORT, for ray job submit
    gcs_address: str
    token: str
    env: dict[str, str]  # the environment that authenticates: RAY_AUTH_MODE=token + the token
    temp_dir: str
    process: subprocess.Popen

    def request(self, path: str, token: str | None = "own") -> tuple[int, object]:
        """GET the dashboard's ``path``: (status, parsed JSON or text)."""
        request = urllib.request.Request(self.dashboard_url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {self.token if token == 'own' else token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        try:
            return status, json.loads(body)
        except json.JSONDecodeError:
            return status, body


def free_ports(count: int) -> list[int]:
    """Ports the OS has free now, from its ephemeral range (outside the
    10002-19999 range Ray's workers use by default)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def auth_env(token_file: str | os.PathLike) -> dict[str, str]:
    """This environment, with the token of ``token_file`` and ``ray`` of this venv first."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def session_processes(leader_pid: int) -> list[psutil.Process]:
    """The processes of the session ``leader_pid`` leads (this one excepted)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == leader_pid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` (it stops what it started), then to
    every process of its session, then SIGKILL. A test head needs no drain."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_SECONDS)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        leftovers = session_processes(process.pid)
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        psutil.wait_procs(leftovers, timeout=STOP_GRACE_SECONDS)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=STOP_GRACE_SECONDS)


@contextlib.contextmanager
def local_ray_head(token_file: str | os.PathLike, *, num_cpus: int = 2) -> Iterator[LocalHead]:
    """Start a head that requires the token in ``token_file``; stop it on exit."""
    token = Path(token_file).read_text().strip()
    gcs_port, dashboard_port, client_port, agent_port = free_ports(4)
    # A short path: Ray's unix sockets live under it (about 100 characters at most).
    temp_dir = tempfile.mkdtemp(prefix="cpsr-", dir="/tmp")
    env = auth_env(token_file)
    log_path = Path(temp_dir) / "head.log"
    command = [
        RAY, "start", "--head", "--block",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--port={gcs_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = LocalHead(
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        gcs_address=f"127.0.0.1:{gcs_port}",
        token=token,
        env=env,
        temp_dir=temp_dir,
        process=process,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited: {log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if head.request("/api/jobs/")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the head did not come up: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield head
    finally:
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
