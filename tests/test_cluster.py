"""Placement on a simulated two-node cluster with a declared GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow(seconds=45)
def test_stages_land_where_the_config_says_and_reserved_gpus_stay_free(media):
    paths = [str(media["h264.mp4"]), str(media["vp9.webm"]), str(media["broken/empty.mp4"])]
    script = Path(__file__).with_name("cluster_check.py")
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    # The head's dashboard serves the State API the script asks at the end;
    # on a busy host it may take more than Ray's 60 s to register.
    env["RAY_DASHBOARD_STARTUP_TIMEOUT_S"] = "240"
    proc = subprocess.run(
        [sys.executable, str(script), *paths], capture_output=True, text=True, timeout=420, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    gpu_node = seen["gpu_node"]

    # auto resolves on each actor's own node, from the GPUs Ray gave it
    node, decode, process = seen["auto_on_gpu_actor"]
    assert (node, decode, process) == (gpu_node, "gpu", "gpu")
    node, decode, process = seen["auto_on_cpu_actor"]
    assert (decode, process) == ("cpu", "cpu")

    # cpu -> gpu: the gpu stage runs only on the GPU node, and rows record it
    gpu_selects = [node for node, wants_gpu in seen["actors"]["SelectStage"] if wants_gpu]
    assert gpu_selects and set(gpu_selects) == {gpu_node}
    rows = {r[0]: r[1:] for r in seen["rows"]}
    assert len(rows) == 3
    assert rows[paths[0]][:3] == ["cpu", "gpu", None]
    assert rows[paths[1]][:3] == ["cpu", "gpu", None]
    assert "empty file" in rows[paths[2]][2]
    # the CUDA kernel (simulated) selects exactly what the CPU kernel selects
    assert seen["same_as_cpu"]

    # The GPU reserved for other work (Ray Train workers: reserve_gpus=1): the
    # auto pipeline (cpu -> cpu: one fused pool) asks for no GPU and resolves
    # auto to the CPU.
    assert not any(wants_gpu for _, wants_gpu in seen["actors"]["DecodeStage"])
    assert seen["actors"]["FusedStage"]
    assert not any(wants_gpu for _, wants_gpu in seen["actors"]["FusedStage"])
    reserved = {r[0]: r[1:] for r in seen["reserved_rows"]}
    assert [reserved[p][:3] for p in paths[:2]] == [["cpu", "cpu", None]] * 2
    assert "empty file" in reserved[paths[2]][2]
