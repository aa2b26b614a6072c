"""patch_dataset on one local Ray (num_cpus=2)."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pools import ONE_ACTOR

from cps_ray import ConfigError, PatchStreamConfig, local_stream, patch_dataset, row_patches
from cps_ray.errors import DeviceUnavailableError
from cps_ray.pipeline import plan_pipeline
from cps_ray.pipeline._dataset import DEFAULT_DECODE_GPU_SHARE

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


# The default plan on two CPUs (two fused actors), and the split plan (two
# decode actors and a select actor).
@pytest.mark.parametrize(
    "dtype, selection, pools", [("bf16", "energy", {}), ("fp16", "random", {"fuse": False})]
)
def test_rows_equal_local_stream_bit_for_bit(ray_session, media, dtype, selection, pools):
    cfg = PatchStreamConfig(
        sequence_length=4, input_size=28, patch_size=14, k_keep=10, output_dtype=dtype,
        selection=selection, selection_seed=3,
    )  # fmt: skip
    rows = patch_dataset(_paths(media), cfg, **pools).take_all()
    local = list(local_stream(_paths(media), cfg, num_workers=2))
    assert [r["path"] for r in rows] == _paths(media)  # order preserved
    for a, b in zip(rows, local):
        _assert_rows_equal(a, b)
    ok = [r for r in rows if r["error"] is None]
    assert len(ok) == 5
    restored = row_patches(ok[0])
    assert str(restored.dtype) == {"bf16": "torch.bfloat16", "fp16": "torch.float16"}[dtype]
    # every input is a row, and errors name the file
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {str(media["broken/text.mp4"]), str(media["broken/missing.mp4"])}
    assert "file not found" in errors[str(media["broken/missing.mp4"])]
    assert all(r["decode_backend"] == "cpu" and r["process_backend"] == "cpu" for r in rows)


@pytest.mark.slow(seconds=11)
def test_inputs_as_manifest_and_dataset(ray_session, media, tmp_path):
    paths = _paths(media, ["h264.mp4", "vp9.webm", "broken/empty.mp4"])
    manifest = tmp_path / "videos.parquet"
    pq.write_table(pa.table({"path": paths, "label": [1, 2, 3]}), manifest)
    from_ds = ray_session.data.from_items([{"path": p, "other": 1} for p in paths])
    for inputs in (str(manifest), from_ds):  # a text manifest: test_manifests
        rows = patch_dataset(inputs, CFG, **ONE_ACTOR).take_all()
        assert sorted(r["path"] for r in rows) == sorted(paths)
        assert sum(r["error"] is not None for r in rows) == 1


def test_dataset_without_path_column(ray_session):
    ds = ray_session.data.from_items([{"file": "a.mp4"}])
    with pytest.raises(ConfigError, match="'path' column"):
        patch_dataset(ds, CFG)


def test_unknown_pool_option(ray_session):
    with pytest.raises(TypeError, match="decode_poool"):
        patch_dataset(["a.mp4"], CFG, decode_poool=2)


def test_plan_cpu_cluster_fuses_one_actor_per_cpu():
    plan = plan_pipeline(CFG, {"CPU": 2.0})
    assert plan.fused
    (fused,) = plan.stages
    assert (fused.num_cpus, fused.num_gpus, fused.pool) == (1.0, 0.0, 2)
    assert plan_pipeline(CFG, {"CPU": 16.0}).stages[0].pool == 16
    assert plan_pipeline(CFG, {"CPU": 2.0}, reserve_cpus=0.5).stages[0].pool == 1
    assert plan_pipeline(CFG, {"CPU": 8.0}, decode_num_cpus=2.0).stages[0].pool == 4


@pytest.mark.parametrize("options", [{"fuse": False}, {"select_pool": 1}, {"select_num_cpus": 0.5}])
def test_plan_cpu_cluster_split_when_asked_fits_two_cores(options):
    """fuse=False, or a select option, asks for a select pool of its own."""
    plan = plan_pipeline(CFG, {"CPU": 2.0}, **options)
    decode, select = plan.stages
    assert not plan.fused
    assert (decode.num_gpus, select.num_gpus) == (0.0, 0.0)
    assert decode.pool == 2 and select.pool == 1
    assert decode.num_cpus * decode.pool + select.num_cpus * select.pool <= 2.0


def test_plan_gpu_cluster_auto_fuses_on_one_device():
    plan = plan_pipeline(CFG, {"CPU": 16.0, "GPU": 2.0})
    assert plan.fused
    (fused,) = plan.stages
    # several decode actors per GPU (8: a Hopper has 7 NVDEC engines), one CPU each
    assert fused.num_gpus == DEFAULT_DECODE_GPU_SHARE == 1 / 8 and fused.pool == 16
    assert plan_pipeline(CFG, {"CPU": 4.0, "GPU": 2.0}).stages[0].pool == 4


def test_plan_split_backends():
    cfg = replace(CFG, decode_backend="cpu", process_backend="gpu")
    decode, select = plan_pipeline(cfg, {"CPU": 8.0, "GPU": 1.0}).stages
    assert decode.num_gpus == 0 and select.num_gpus > 0
    gpu_cpu = replace(CFG, decode_backend="gpu", process_backend="cpu")
    decode, select = plan_pipeline(gpu_cpu, {"CPU": 8.0, "GPU": 1.0}).stages
    assert decode.num_gpus == DEFAULT_DECODE_GPU_SHARE and select.num_gpus == 0
    assert decode.pool == 8
    with pytest.raises(DeviceUnavailableError, match="declares no GPU"):
        plan_pipeline(gpu_cpu, {"CPU": 8.0})
    # gpu -> gpu on two devices, and gpu -> gpu split on request
    two = replace(CFG, decode_backend="gpu", process_backend="gpu", process_device_id=1)
    assert not plan_pipeline(two, {"CPU": 8.0, "GPU": 2.0}).fused
    assert not plan_pipeline(CFG, {"CPU": 8.0, "GPU": 1.0}, fuse=False).fused


@pytest.mark.slow(seconds=11)
def test_training_batches_and_shards(ray_session, media, tmp_path):
    """One dataset run feeds a training loop; a second writes shards."""
    import json

    import torch

    from cps_ray import OutputPathError, TrainingBatches, write_shards
    from cps_ray.pipeline import shard_dataset

    paths = _paths(media)
    ds = patch_dataset(paths, CFG, **ONE_ACTOR)
    feed = TrainingBatches(ds, batch_size=2)
    batches = list(feed)
    assert [len(b["path"]) for b in batches] == [2, 2, 1]
    assert feed.skipped == 2 and len(feed.skipped_paths) == 2
    first = batches[0]
    assert first["patches"].shape == (2, 10, 3, 14, 14)
    assert first["patches"].dtype == torch.bfloat16
    assert first["meta_fields"].shape == (2, 10, 3) and first["meta_fields"].dtype == torch.int32
    assert first["meta_scores"].shape == (2, 10) and first["meta_scores"].device.type == "cpu"

    out = tmp_path / "shards_out"
    manifest = write_shards(
        patch_dataset(paths, CFG, **ONE_ACTOR), str(out), rows_per_shard=2, config=CFG
    )
    assert (manifest["inputs"], manifest["ok"], manifest["failed"]) == (7, 5, 2)
    assert sum(s["rows"] for s in manifest["shards"]) == 5
    assert sorted(s["file"] for s in manifest["shards"]) == sorted(
        f"shards/{p.name}" for p in (out / "shards").glob("shard-*.parquet")
    )
    assert json.loads((out / "manifest.json").read_text())["ok"] == 5
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert sorted(e["path"] for e in errors) == sorted(
        [str(media["broken/text.mp4"]), str(media["broken/missing.mp4"])]
    )
    assert not list(out.rglob("*.tmp-*"))
    # shards restore bit-exactly (bf16 included) and match the training batches
    back = shard_dataset(out).take_all()
    by_path = {r["path"]: r for r in back}
    assert len(by_path) == 5
    for batch in batches:
        for i, path in enumerate(batch["path"]):
            restored = row_patches(by_path[path])
            assert torch.equal(restored.view(torch.int16), batch["patches"][i].view(torch.int16))
    with pytest.raises(OutputPathError, match="holds no manifest.json"):
        shard_dataset(out / "shards")


def test_collate_for_iter_torch_batches(ray_session, media):
    from cps_ray import collate_patches

    paths = _paths(media, ["h264.mp4", "broken/empty.mp4", "vp9.webm"])
    ds = patch_dataset(paths, CFG, **ONE_ACTOR)
    sizes = [
        len(b["path"]) for b in ds.iter_torch_batches(batch_size=3, collate_fn=collate_patches)
    ]
    assert sizes == [2]


@pytest.mark.parametrize("pools", ["fused", "split"])
def test_a_file_name_that_is_not_utf8_is_decoded(ray_session, media, tmp_path, pools):
    """Such a name reaches the decoders as an open file and the rows as a
    valid UTF-8 string with its odd bytes escaped; never a crash."""
    import os
    import shutil

    odd = os.fsdecode(bytes(tmp_path) + b"/caf\xe9 \xff.mp4")
    shutil.copy(media["h264.mp4"], odd)
    shown = str(tmp_path) + "/caf\\xe9 \\xff.mp4"
    rows = patch_dataset(
        [odd, str(media["h264.mp4"])], CFG, fuse=pools == "fused", decode_pool=1
    ).take_all()
    local = list(local_stream([odd], CFG, num_workers=1))
    assert [r["path"] for r in rows] == [shown, str(media["h264.mp4"])]
    assert rows[0]["error"] is None and local[0]["path"] == shown
    _assert_rows_equal({**rows[0], "path": ""}, {**rows[1], "path": ""})
    pa.array([r["path"] for r in rows], pa.string())  # Arrow takes it


USER_SCRIPT = """
import sys
from cps_ray import PatchStreamConfig, patch_dataset

cfg = PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=4)
rows = patch_dataset(sys.argv[1:], cfg, fuse=True, decode_pool=1).take_all()  # ONE_ACTOR
print([r["error"] for r in rows])
"""


def test_a_script_calling_patch_dataset_shows_no_ray_53727_line(attached_env, ray_session, media):
    """Ray's core worker logs ray#53727 in the process that creates the pool
    actors: a user's own script. patch_dataset drops exactly that line from
    the script's stderr; Ray's log file of that driver still holds it."""
    driver = subprocess.Popen(
        [sys.executable, "-c", USER_SCRIPT, str(media["h264.mp4"])], env=attached_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "[None]"
    assert "53727" not in err
    assert "Starting execution of Dataset" in err  # Ray's other lines stay
    logs = Path(ray_session._private.worker._global_node.get_logs_dir_path())
    (log,) = logs.glob(f"python-core-driver-*_{driver.pid}.log")
    assert "ray-project/ray/issues/53727" in log.read_text(errors="replace")
