from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from media import make_gpu_media, make_media

# The CPU suite sees no CUDA device, also on a GPU machine, in this process,
# in isolated children and in the session's Ray workers: "auto" resolves to
# cpu everywhere, as the tests expect. `gpu` tests see the real devices.
CPU_VIEW = {"CPS_RAY_FAKE_CUDA_DEVICES": "0"}
# The session's Ray serves no State API (no dashboard). Without an address of
# its own, a State API client in its workers (Ray Train's placement group
# cleaner asks it whether the controller lives) finds the last Ray another
# test started, hears "no such actor" and removes a live run's placement
# group (ray#65447). A port nothing listens on makes the question fail, and
# the cleaner keeps waiting.
NO_API_SERVER = "http://127.0.0.1:9"


def _expected_seconds(item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 10)) if marker else 0.0


def pytest_collection_modifyitems(config, items):
    """Slow tests first, longest first: on pytest-xdist's workers (``make
    test``) the long ones start at once and the short ones fill the gaps.
    ``gpu`` tests skip without CUDA, or fail with CPS_RAY_REQUIRE_GPU=1."""
    items.sort(key=lambda item: -_expected_seconds(item))  # stable: the rest keep their order

    from cps_ray._devices import cuda_device_count

    if cuda_device_count() > 0:
        return
    if os.environ.get("CPS_RAY_REQUIRE_GPU", "0") not in ("", "0"):
        return  # let them run and fail loudly
    skip = pytest.mark.skip(reason="needs a CUDA device (set CPS_RAY_REQUIRE_GPU=1 to fail)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_view_of_cuda(request, monkeypatch):
    """Pin every test not marked ``gpu`` to a node without CUDA (the variable
    reaches child processes; tests inject other counts on top of it)."""
    if "gpu" not in request.keywords:
        for name, value in CPU_VIEW.items():
            monkeypatch.setenv(name, value)
    yield


def _shared_media(tmp_path_factory, name: str, make):
    """``make(folder)`` once per test run: pytest-xdist's workers share the
    run's folder, and the first one to get there makes the files."""
    # CPS_RAY_TEST_MEDIA: a folder made beforehand (scripts/gpu_session.sh
    # carries one to GPU machines, which have no ffmpeg CLI).
    premade = os.environ.get("CPS_RAY_TEST_MEDIA")
    if premade:
        return make(Path(premade) / name)
    if shutil.which("ffmpeg") is None:
        pytest.fail("the ffmpeg CLI is needed to make test media (make setup installs it)")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    run_folder = tmp_path_factory.getbasetemp().parent  # this run's, beside the workers'
    with FileLock(str(run_folder / f"{name}.lock")):
        return make(run_folder / name)


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    return _shared_media(tmp_path_factory, "media", make_media)


@pytest.fixture(scope="session")
def gpu_media(tmp_path_factory):
    """NVDEC-sized media (``media.GPU_MEDIA``), made only where a test asks."""
    return _shared_media(tmp_path_factory, "gpu_media", make_gpu_media)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, sized to this machine, with
    no GPU: Ray is a hard dependency, so a broken install fails here."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never attach to a head another process started
            num_cpus=2,
            num_gpus=0,  # also on a GPU machine: the CPU tests plan without GPUs
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {**CPU_VIEW, "RAY_API_SERVER_ADDRESS": NO_API_SERVER}},
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def attached_env(ray_session):
    """The environment of a driver process that joins the session's Ray (as
    a script run with ``RAY_ADDRESS`` on a cluster does): no Ray of its own
    to start, and Ray already runs."""
    address = ray_session.get_runtime_context().gcs_address
    return {**os.environ, **CPU_VIEW, "RAY_ADDRESS": address, "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="session")
def job_env(attached_env):
    """``job_env(**env_vars)``: the environment of a driver that joins the
    session's Ray as ``ray job submit --runtime-env-json '{"env_vars": ...}'``
    starts one: the variables are in the driver and, through the job's
    runtime env, in every actor and task of its job (the session's Ray
    started without them)."""

    def make(**env_vars: str) -> dict:
        job = {"runtime_env": {"env_vars": {**CPU_VIEW, **env_vars}}}
        return {**attached_env, **env_vars, "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}

    return make
