from __future__ import annotations

import os
import shutil

import pytest
from media import make_media


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests skip without CUDA, or fail with CPS_RAY_REQUIRE_GPU=1."""
    from cps_ray.devices import cuda_device_count

    if cuda_device_count() > 0:
        return
    if os.environ.get("CPS_RAY_REQUIRE_GPU", "0") not in ("", "0"):
        return  # let them run and fail loudly
    skip = pytest.mark.skip(reason="needs a CUDA device (set CPS_RAY_REQUIRE_GPU=1 to fail)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    # CPS_RAY_TEST_MEDIA: a folder made beforehand (scripts/gpu_session.sh
    # carries one to GPU machines, which have no ffmpeg CLI).
    premade = os.environ.get("CPS_RAY_TEST_MEDIA")
    if premade:
        from pathlib import Path

        return make_media(Path(premade))
    if shutil.which("ffmpeg") is None:
        pytest.fail("the ffmpeg CLI is needed to make test media (make setup installs it)")
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, sized to this machine."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",  # never attach to a head another process started
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
