import os

import numpy as np
import pytest
import torch

from cps_ray import ConfigError, CpsRayError, select_patches
from cps_ray._devices import override_cuda_device_count
from cps_ray._kernels import reference
from cps_ray.errors import DeviceUnavailableError


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize(
    "dtype, torch_dtype",
    [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)],
)
def test_outputs_follow_design(frames, dtype, torch_dtype):
    patches, fields, scores = select_patches(frames, patch_size=7, k_keep=20, output_dtype=dtype)
    assert patches.shape == (20, 3, 7, 7) and patches.dtype == torch_dtype
    assert patches.device.type == "cpu"
    assert fields.shape == (20, 3) and fields.dtype == torch.int32
    assert scores.shape == (20,) and scores.dtype == torch.float32
    assert float(patches.min()) >= 0.0 and float(patches.max()) <= 1.0

    ref_u8, ref_flat, ref_e = reference.select(frames, 7, 20)
    g = 4
    flat = fields[:, 0].long() * g * g + fields[:, 1].long() * g + fields[:, 2].long()
    assert flat.tolist() == ref_flat.tolist()
    assert flat.tolist() == sorted(flat.tolist())  # ascending flat index
    expected_scores = (ref_e.astype(np.float64) / (3 * 49 * 49)).astype(np.float32)
    assert np.array_equal(scores.numpy(), expected_scores)
    expected = (torch.from_numpy(ref_u8).float() / 255).to(torch_dtype)
    assert torch.equal(patches, expected)
    # patches[i] is frames[t, :, r*p:(r+1)*p, c*p:(c+1)*p] / 255
    t, r, c = fields[3].tolist()
    window = torch.from_numpy(frames[t, :, r * 7 : (r + 1) * 7, c * 7 : (c + 1) * 7]).float() / 255
    assert torch.equal(patches[3], window.to(torch_dtype))


def test_numpy_and_torch_inputs_agree(frames):
    a = select_patches(frames, patch_size=7, k_keep=30)
    b = select_patches(torch.from_numpy(frames), patch_size=7, k_keep=30)
    # the same values through a non-contiguous view
    view = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 1, 3, 2))).transpose(2, 3)
    assert not view.is_contiguous()
    c = select_patches(view, patch_size=7, k_keep=30)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)


def test_scores_are_mean_squared_residual_against_grey_on_first_frame():
    frames = np.full((1, 3, 4, 4), 128, np.uint8)
    frames[0, :, :2, :2] = np.array([[118, 128], [138, 148]], np.uint8)
    _, fields, scores = select_patches(frames, patch_size=2, k_keep=1)
    assert fields.tolist() == [[0, 0, 0]]
    # residuals -10, 0, 10, 20 against grey: mean square (100 + 0 + 100 + 400) / 4
    assert scores.tolist() == [150.0]


def test_scores_are_mean_squared_residual_after():
    frames = np.full((2, 3, 4, 4), 128, np.uint8)  # a grey frame 0 scores nothing
    frames[1, 0, 2:, 2:] = 134  # one channel of patch (1, 1, 1) moves by 6
    _, fields, scores = select_patches(frames, patch_size=2, k_keep=1)
    assert fields.tolist() == [[1, 1, 1]]
    # E = n * 4 * 36, score = E / (3 n^2) = 4 * 36 / (3 * 4) = 12
    assert scores.tolist() == [12.0]


@pytest.mark.parametrize(
    "bad, field",
    [
        (np.zeros((2, 3, 8, 8), np.float32), "frames"),
        (np.zeros((2, 1, 8, 8), np.uint8), "frames"),
        (np.zeros((2, 3, 8, 6), np.uint8), "frames"),
        (np.zeros((3, 8, 8), np.uint8), "frames"),
    ],
)
def test_bad_frames(bad, field):
    with pytest.raises(ConfigError) as info:
        select_patches(bad, patch_size=4, k_keep=1)
    assert info.value.field == field and "uint8 [T, 3, S, S]" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"patch_size": 3}, "patch_size"),
        ({"k_keep": 0}, "k_keep"),
        ({"k_keep": 9}, "k_keep"),
        ({"output_dtype": "int8"}, "output_dtype"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_arguments(kwargs, field):
    args = {"patch_size": 4, "k_keep": 2, **kwargs}
    with pytest.raises(ConfigError) as info:
        select_patches(np.zeros((2, 3, 8, 8), np.uint8), **args)
    assert info.value.field == field


def test_gpu_backend_without_cuda_is_an_error(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    with override_cuda_device_count(0):
        with pytest.raises(DeviceUnavailableError, match="backend='gpu'") as info:
            select_patches(np.zeros((2, 3, 8, 8), np.uint8), patch_size=4, k_keep=2, backend="gpu")
    assert isinstance(info.value, CpsRayError)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_conversion_table_is_correctly_rounded(dtype):
    """Every byte v maps to the dtype value nearest v / 255 (ties to even),
    checked with exact rationals against both neighbours."""
    from fractions import Fraction

    from cps_ray._convert import bits_table, torch_dtype, unit_table

    table = unit_table(dtype)
    torch_dtype = torch_dtype(dtype)
    assert table.dtype == torch_dtype and table.shape == (256,)
    assert torch.equal(table.view(torch.int16 if dtype != "fp32" else torch.int32),
                       torch.from_numpy(bits_table(dtype).copy()))  # fmt: skip
    for v in range(256):
        exact = Fraction(v, 255)
        got = table[v]
        err = abs(Fraction(float(got)) - exact)
        for direction in (2.0, -1.0):
            neighbour = torch.nextafter(got, torch.tensor(direction, dtype=torch_dtype))
            assert err <= abs(Fraction(float(neighbour)) - exact), (v, dtype)
    assert float(table[0]) == 0.0 and float(table[255]) == 1.0


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_patches_are_the_table_entries(frames, dtype):
    from cps_ray._convert import convert, unit_table

    patches, fields, _ = select_patches(frames, patch_size=7, k_keep=25, output_dtype=dtype)
    u8, _, _ = reference.select(frames, 7, 25)
    assert torch.equal(patches, unit_table(dtype)[torch.from_numpy(u8).long()])
    assert torch.equal(patches, convert(torch.from_numpy(u8), dtype))


def _flat(fields, g):
    return (fields[:, 0].long() * g * g + fields[:, 1].long() * g + fields[:, 2].long()).tolist()


def test_random_baseline_is_seeded_and_reports_energies(frames):
    a = select_patches(frames, patch_size=7, k_keep=20, selection="random", seed=3)
    b = select_patches(frames, patch_size=7, k_keep=20, selection="random", seed=3)
    c = select_patches(frames, patch_size=7, k_keep=20, selection="random", seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    flat_a, flat_c = _flat(a[1], 4), _flat(c[1], 4)
    assert flat_a != flat_c
    assert flat_a == sorted(set(flat_a)) and len(flat_a) == 20
    energies = reference.patch_energies(frames, 7)
    expected = (energies[flat_a].astype(np.float64) / (3 * 49 * 49)).astype(np.float32)
    assert np.array_equal(a[2].numpy(), expected)
    # not the energy choice: random-k almost surely differs from the top-k
    assert flat_a != reference.top_k(energies, 20).tolist()


def test_uniform_baseline_is_a_rolling_grid(frames):
    _, fields, _ = select_patches(frames, patch_size=7, k_keep=8, selection="uniform")
    per_frame = np.bincount(fields[:, 0].numpy(), minlength=4)
    assert per_frame.tolist() == [2, 2, 2, 2]
    positions = [set(map(tuple, fields[fields[:, 0] == t][:, 1:].tolist())) for t in range(4)]
    assert all(a != b for a, b in zip(positions, positions[1:]))  # the grid moves on
    # over the frames every position gets refreshed at least as often as the grid allows
    seen = set().union(*positions)
    assert len(seen) == 8


def test_video_seed_depends_on_path_and_selection_seed():
    from cps_ray._baselines import video_seed

    assert video_seed("a.mp4", 0) == video_seed("a.mp4", 0)
    assert len({video_seed("a.mp4", 0), video_seed("b.mp4", 0), video_seed("a.mp4", 1)}) == 3
    # stable across processes and releases: a fixed hash, not Python's hash()
    assert video_seed("a.mp4", 0) == int.from_bytes(
        __import__("hashlib").blake2b(b"0\x00a.mp4", digest_size=8).digest(), "little"
    )


def test_bad_selection_is_an_error():
    with pytest.raises(ConfigError) as info:
        select_patches(np.zeros((2, 3, 8, 8), np.uint8), patch_size=4, k_keep=2, selection="topk")
    assert info.value.field == "selection" and "'energy', 'random', 'uniform'" in str(info.value)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("selection", ["energy", "random"])
def test_numpy_selection_has_the_bits_of_select_patches(frames, dtype, selection):
    """``select_on_cpu`` (what a Ray select actor runs, without torch) keeps
    the same patches, fields and scores, bit for bit, as a row keeps them."""
    from cps_ray._rows import patches_to_numpy
    from cps_ray._select import select_on_cpu

    args = dict(patch_size=7, k_keep=25, output_dtype=dtype, selection=selection, seed=3)
    patches, fields, scores, motion = select_on_cpu(frames, **args)
    want = select_patches(frames, return_motion=True, **args)
    want_patches = patches_to_numpy(want[0])
    assert patches.dtype == want_patches.dtype and patches.tobytes() == want_patches.tobytes()
    assert np.array_equal(fields, want[1].numpy()) and fields.dtype == np.int32
    assert scores.tobytes() == want[2].numpy().tobytes()
    assert motion.dtype == np.float32 and motion.tobytes() == want[3].numpy().tobytes()
    with pytest.raises(ConfigError, match="patch_size"):
        select_on_cpu(frames, patch_size=5, k_keep=3)


def test_a_select_stage_on_the_cpu_never_imports_torch(tmp_path):
    """A Ray select actor selecting on the CPU runs without torch (about 2 s
    of import and 300 MiB less per actor); checked in a fresh interpreter."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from cps_ray._config import PatchStreamConfig
from cps_ray.pipeline._stages import SelectStage

stage = SelectStage(PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=3))
frames = np.random.default_rng(0).integers(0, 256, (1, 2, 3, 28, 28), dtype=np.uint8)
batch = {"path": np.array(["a.mp4"], dtype=object), "frames": frames,
         "frame_indices": np.zeros((1, 2), np.int64), "timestamps": np.zeros((1, 2)),
         "stream_index": np.zeros(1, np.int64),
         "decode_backend": np.array(["cpu"], dtype=object),
         "device_fallback": np.array([""], dtype=object), "error": np.array([""], dtype=object)}
out = stage(batch)
assert out["error"][0] is None and out["patches"].dtype == np.uint16, out
print("torch" in sys.modules)
"""
    env = {**os.environ, "CPS_RAY_FAKE_CUDA_DEVICES": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]


def test_the_error_row_filter_before_training_never_imports_torch():
    """``without_error_rows``'s filter runs as a Ray task in a worker that needs
    no torch; checked in a fresh interpreter, as that worker imports it."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from cps_ray.pipeline import without_error_rows
from cps_ray.pipeline._train import ErrorRowLog as FailureLog, _ok_rows

class Log:  # the FailureLog actor's handle, called in this process
    def __init__(self):
        self.log = FailureLog()
        self.add = self
    def remote(self, paths, reasons):
        self.log.add(paths, reasons)

log = Log()
batch = {"path": np.array(["a.mp4", "b.mp4"], dtype=object),
         "error": np.array([None, "b.mp4: not a video"], dtype=object),
         "meta_scores": np.ones((2, 3), np.float32)}
kept = _ok_rows(batch, log)
assert kept["path"].tolist() == ["a.mp4"] and kept["meta_scores"].shape == (1, 3), kept
assert log.log.failures() == {"b.mp4": "b.mp4: not a video"}
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
