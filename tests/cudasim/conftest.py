"""The CUDA kernels under Numba's simulator.

Run with ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim``: the
variable must be set before numba is imported, so this folder cannot turn the
simulator on by itself, and without the variable every test here skips.
"""

from __future__ import annotations

import os

import pytest

SIMULATING = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
_HERE = __import__("pathlib").Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if SIMULATING:
        return
    skip = pytest.mark.skip(
        reason="CUDA simulator tests: run with NUMBA_ENABLE_CUDASIM=1 set before numba is imported"
    )
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(skip)
