import dataclasses

import pytest

from cps_ray import ConfigError, CpsRayError, DecodeConfig, PatchStreamConfig, resolve_backends
from cps_ray._devices import fake_environment, override_cuda_device_count, override_nvdec_problem
from cps_ray.errors import DeviceUnavailableError, NvdecUnavailableError


def test_defaults_follow_design():
    d = DecodeConfig()
    assert (d.video_path, d.sequence_length, d.decode_backend, d.decode_device_id) == (
        None,
        16,
        "auto",
        0,
    )
    assert (d.uniform_strategy, d.input_size) == ("auto", None)
    p = PatchStreamConfig()
    assert (p.input_size, p.process_backend, p.process_device_id) == (224, "auto", 0)
    assert (p.patch_size, p.k_keep, p.output_dtype) == (14, 2048, "bf16")
    assert (p.selection, p.selection_seed) == ("energy", 0)
    assert isinstance(p, DecodeConfig)


def test_frozen():
    cfg = PatchStreamConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k_keep = 3


@pytest.mark.parametrize("cls", [DecodeConfig, PatchStreamConfig])
@pytest.mark.parametrize("old", ["backend", "device_id"])
def test_removed_fields_raise_type_error(cls, old):
    with pytest.raises(TypeError, match=old):
        cls(**{old: "cpu" if old == "backend" else 0})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"decode_backend": "cuda"}, "decode_backend"),
        ({"process_backend": "tpu"}, "process_backend"),
        ({"output_dtype": "fp64"}, "output_dtype"),
        ({"uniform_strategy": "random"}, "uniform_strategy"),
        ({"decode_device_id": -1}, "decode_device_id"),
        ({"process_device_id": -2}, "process_device_id"),
        ({"sequence_length": 0}, "sequence_length"),
        ({"sequence_length": 2.5}, "sequence_length"),
        ({"input_size": 225}, "input_size"),
        ({"k_keep": 0}, "k_keep"),
        ({"k_keep": 16 * 256 + 1}, "k_keep"),
        ({"patch_size": 0}, "patch_size"),
        ({"input_size": None}, "input_size"),
        ({"selection": "topk"}, "selection"),
        ({"selection_seed": -1}, "selection_seed"),
        ({"selection_seed": "7"}, "selection_seed"),
    ],
)
def test_bad_values_name_field_value_and_allowed(kwargs, field):
    with pytest.raises(ConfigError) as info:
        PatchStreamConfig(**kwargs)
    err = info.value
    assert isinstance(err, CpsRayError) and isinstance(err, ValueError)
    assert err.field == field
    value = next(iter(kwargs.values()))
    assert repr(value) in str(err)
    assert str(err).startswith(f"Invalid {field}")


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="Supported values are 'auto', 'cpu', 'gpu'"):
        DecodeConfig(decode_backend="cuda")


def test_k_keep_bounds_inclusive():
    assert PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=8).k_keep == 8
    with pytest.raises(ConfigError, match="between 1 and"):
        PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=9)


def test_auto_resolves_to_cpu_without_cuda():
    with override_cuda_device_count(0):
        r = resolve_backends(PatchStreamConfig())
    assert (r.decode_backend, r.decode_device, r.process_backend, r.process_device) == (
        "cpu",
        "cpu",
        "cpu",
        "cpu",
    )


def test_auto_resolves_to_gpu_with_cuda_and_process_follows():
    with override_cuda_device_count(2):
        r = resolve_backends(PatchStreamConfig(decode_device_id=1, process_device_id=0))
        assert (r.decode_backend, r.decode_device) == ("gpu", "cuda:1")
        assert (r.process_backend, r.process_device) == ("gpu", "cuda:0")
        mixed = resolve_backends(PatchStreamConfig(decode_backend="cpu"))
        assert (mixed.decode_backend, mixed.process_backend) == ("cpu", "cpu")
        split = resolve_backends(PatchStreamConfig(decode_backend="gpu", process_backend="cpu"))
        assert (split.decode_backend, split.process_backend) == ("gpu", "cpu")


def test_explicit_gpu_without_cuda_names_field_and_node():
    with override_cuda_device_count(0):
        with pytest.raises(DeviceUnavailableError) as info:
            resolve_backends(PatchStreamConfig(decode_backend="gpu"))
        assert "decode_backend='gpu'" in str(info.value)
        assert "no CUDA device" in str(info.value)
        with pytest.raises(DeviceUnavailableError, match="process_backend='gpu'"):
            resolve_backends(PatchStreamConfig(decode_backend="cpu", process_backend="gpu"))


def test_device_id_beyond_node_is_an_error():
    with override_cuda_device_count(1):
        with pytest.raises(DeviceUnavailableError, match="decode_device_id=3.*ids 0..0"):
            resolve_backends(DecodeConfig(decode_backend="gpu", decode_device_id=3))
        with pytest.raises(DeviceUnavailableError, match="process_device_id=1"):
            resolve_backends(PatchStreamConfig(process_backend="gpu", process_device_id=1))


NO_TORCHCODEC_CUDA = "torchcodec 0.13.0 cannot decode on cuda:0 (Unsupported device: cuda:0)"


def test_auto_falls_back_to_cpu_when_torchcodec_cannot_decode_on_cuda():
    with override_cuda_device_count(1), override_nvdec_problem(NO_TORCHCODEC_CUDA):
        r = resolve_backends(PatchStreamConfig())
    assert (r.decode_backend, r.decode_device) == ("cpu", "cpu")
    assert (r.process_backend, r.process_device) == ("cpu", "cpu")  # follows decode
    assert r.decode_fallback == NO_TORCHCODEC_CUDA
    with override_cuda_device_count(1), override_nvdec_problem(None):
        r = resolve_backends(PatchStreamConfig())
    assert (r.decode_backend, r.decode_fallback) == ("gpu", None)


def test_explicit_gpu_names_what_torchcodec_lacks():
    with override_cuda_device_count(1), override_nvdec_problem(NO_TORCHCODEC_CUDA):
        with pytest.raises(NvdecUnavailableError) as info:
            resolve_backends(DecodeConfig(decode_backend="gpu"))
        # the process stage does not need torchcodec
        split = resolve_backends(PatchStreamConfig(decode_backend="cpu", process_backend="gpu"))
    assert isinstance(info.value, DeviceUnavailableError)
    message = str(info.value)
    assert "decode_backend='gpu'" in message and NO_TORCHCODEC_CUDA in message
    assert "constraints-gpu.txt" in message
    assert (split.decode_backend, split.process_backend, split.decode_fallback) == (
        "cpu",
        "gpu",
        None,
    )


def test_injected_answers_reach_child_processes():
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json; from cps_ray import resolve_backends, PatchStreamConfig; "
        "r = resolve_backends(PatchStreamConfig()); "
        "print(json.dumps([r.decode_backend, r.decode_fallback]))"
    )
    with override_cuda_device_count(1), override_nvdec_problem("no NVDEC here"):
        env = {**os.environ, **fake_environment()}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == ["cpu", "no NVDEC here"]


def test_the_probe_names_what_is_missing_on_a_node_without_cuda_torchcodec():
    """The real probe, with nothing injected, on this machine's torchcodec."""
    import torch

    from cps_ray import _devices as devices

    if torch.cuda.is_available():
        pytest.skip("this node has CUDA: tests/test_gpu.py checks the probe passes")
    problem = devices._probe_torchcodec_cuda(0)
    assert problem is not None and problem.startswith("torchcodec ")
    assert "cuda:0" in problem and ".cpp" not in problem


def test_every_error_class_is_public_and_a_cps_ray_error():
    import inspect

    import cps_ray
    from cps_ray import errors

    classes = {
        n for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)
    }
    assert classes <= set(cps_ray.__all__)
    assert all(issubclass(getattr(cps_ray, n), cps_ray.CpsRayError) for n in classes)
