"""patch_dataset on one local Ray (num_cpus=2)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cps_ray import ConfigError, PatchStreamConfig, local_stream, row_patches
from cps_ray.errors import DeviceUnavailableError
from cps_ray.pipeline.dataset import patch_dataset, plan_pipeline

CFG = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10)
NAMES = [
    "h264.mp4",
    "broken/text.mp4",
    "vp9.webm",
    "mpeg2.mpg",
    "broken/missing.mp4",
    "short5.mp4",
    "rot90.mp4",
]


def _paths(media, names=NAMES):
    return [str(media[n]) for n in names]


def _assert_rows_equal(a, b):
    assert a.keys() == b.keys()
    for key in b:
        if isinstance(b[key], np.ndarray):
            assert a[key].dtype == b[key].dtype, key
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_rows_equal_local_stream_bit_for_bit(ray_session, media, dtype):
    cfg = PatchStreamConfig(
        sequence_length=4, input_size=28, patch_size=14, k_keep=10, output_dtype=dtype
    )
    rows = patch_dataset(_paths(media), cfg).take_all()
    local = list(local_stream(_paths(media), cfg, num_workers=2))
    assert [r["path"] for r in rows] == _paths(media)  # order preserved
    for a, b in zip(rows, local):
        _assert_rows_equal(a, b)
    ok = [r for r in rows if r["error"] is None]
    assert len(ok) == 5
    restored = row_patches(ok[0])
    assert str(restored.dtype) == {"bf16": "torch.bfloat16", "fp16": "torch.float16"}[dtype]


def test_every_input_is_a_row_and_errors_name_the_file(ray_session, media):
    rows = patch_dataset(_paths(media), CFG).take_all()
    assert len(rows) == len(NAMES)
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {str(media["broken/text.mp4"]), str(media["broken/missing.mp4"])}
    assert "file not found" in errors[str(media["broken/missing.mp4"])]
    assert all(r["decode_backend"] == "cpu" and r["process_backend"] == "cpu" for r in rows)


def test_inputs_as_manifest_and_dataset(ray_session, media, tmp_path):
    paths = _paths(media, ["h264.mp4", "vp9.webm", "broken/empty.mp4"])
    manifest = tmp_path / "videos.parquet"
    pq.write_table(pa.table({"path": paths, "label": [1, 2, 3]}), manifest)
    text = tmp_path / "videos.txt"
    text.write_text("\n".join(paths))
    from_ds = ray_session.data.from_items([{"path": p, "other": 1} for p in paths])
    for inputs in (str(manifest), str(text), from_ds):
        rows = patch_dataset(inputs, CFG).take_all()
        assert sorted(r["path"] for r in rows) == sorted(paths)
        assert sum(r["error"] is not None for r in rows) == 1


def test_dataset_without_path_column(ray_session):
    ds = ray_session.data.from_items([{"file": "a.mp4"}])
    with pytest.raises(ConfigError, match="'path' column"):
        patch_dataset(ds, CFG)


def test_unknown_pool_option(ray_session):
    with pytest.raises(TypeError, match="decode_poool"):
        patch_dataset(["a.mp4"], CFG, decode_poool=2)


def test_plan_cpu_cluster_fits_two_cores():
    plan = plan_pipeline(CFG, {"CPU": 2.0})
    decode, select = plan.stages
    assert not plan.fused
    assert (decode.num_gpus, select.num_gpus) == (0.0, 0.0)
    assert decode.pool == 2 and select.pool == 1
    assert decode.num_cpus * decode.pool + select.num_cpus * select.pool <= 2.0


def test_plan_gpu_cluster_auto_fuses_on_one_device():
    plan = plan_pipeline(CFG, {"CPU": 16.0, "GPU": 2.0})
    assert plan.fused
    (fused,) = plan.stages
    assert 0 < fused.num_gpus < 1 and fused.pool == 8


def test_plan_split_backends():
    cfg = PatchStreamConfig(
        sequence_length=4,
        input_size=28,
        patch_size=14,
        k_keep=10,
        decode_backend="cpu",
        process_backend="gpu",
    )
    decode, select = plan_pipeline(cfg, {"CPU": 8.0, "GPU": 1.0}).stages
    assert decode.num_gpus == 0 and select.num_gpus > 0
    gpu_cpu = PatchStreamConfig(
        sequence_length=4,
        input_size=28,
        patch_size=14,
        k_keep=10,
        decode_backend="gpu",
        process_backend="cpu",
    )
    decode, select = plan_pipeline(gpu_cpu, {"CPU": 8.0, "GPU": 1.0}).stages
    assert decode.num_gpus == 0.25 and select.num_gpus == 0
    with pytest.raises(DeviceUnavailableError, match="declares no GPU"):
        plan_pipeline(gpu_cpu, {"CPU": 8.0})
