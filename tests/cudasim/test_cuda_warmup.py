"""Workers warm the CUDA kernels when they start, in Numba's simulator (a GPU
node is injected): the first video does not compile them."""

from __future__ import annotations

import pytest

from cps_ray import PatchStreamConfig
from cps_ray._devices import override_cuda_device_count

CFG = PatchStreamConfig(
    sequence_length=2, input_size=28, patch_size=14, k_keep=4, decode_backend="cpu"
)


@pytest.fixture
def cuda(monkeypatch):
    from cps_ray._kernels import cuda

    monkeypatch.setattr(cuda, "warm_devices", set())
    # What launches is the subject, not the result: 16 simulated threads per
    # block start far faster than 256 Python threads (tests/cudasim checks
    # that results do not depend on it).
    monkeypatch.setattr(cuda, "THREADS_PER_BLOCK", 16)
    return cuda


def test_warmup_runs_every_kernel_once_per_device(cuda, monkeypatch):
    launches = []
    launch = cuda._launch
    # _launch(frames, warp, energies, flat, kept, table, patches, p, k, chosen, stream)
    monkeypatch.setattr(
        cuda, "_launch", lambda *a: (launches.append((str(a[6].dtype), a[9])), launch(*a))
    )
    cuda.warmup(0)
    cuda.warmup(0)
    # uint8, the int16 (bf16/fp16) and int32 (fp32) bit tables, and the
    # baselines' chosen indices: every specialisation a real call compiles
    assert launches == [("uint8", False), ("int16", False), ("int32", False), ("int16", True)]
    assert cuda.warm_devices == {0}


@pytest.mark.parametrize("process_backend, warm", [("gpu", {0}), ("cpu", set())])
def test_a_video_core_warms_the_kernel_it_will_run(cuda, process_backend, warm):
    from cps_ray._core import VideoCore

    with override_cuda_device_count(1):
        VideoCore(PatchStreamConfig(**{**CFG.__dict__, "process_backend": process_backend}))
    assert cuda.warm_devices == warm


def test_a_gpu_select_stage_warms_when_its_actor_starts(cuda):
    from cps_ray.pipeline._stages import SelectStage

    with override_cuda_device_count(1):
        SelectStage(PatchStreamConfig(**{**CFG.__dict__, "process_backend": "gpu"}))
    assert cuda.warm_devices == {0}
