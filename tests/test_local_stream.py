import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cps_ray import ConfigError, PatchStreamConfig, local_stream, patch_stream, row_patches
from cps_ray._devices import override_cuda_device_count, override_nvdec_problem
from cps_ray._rows import ROW_COLUMNS
from cps_ray.errors import DeviceUnavailableError

CFG = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10)
GOOD = ["h264.mp4", "vp9.webm", "mpeg2.mpg", "short5.mp4"]
BAD = ["broken/empty.mp4", "broken/text.mp4", "broken/missing.mp4", "broken/folder.mp4"]


def _paths(media, names):
    return [str(media[n]) for n in names]


def test_one_row_per_input_in_order_with_error_rows(media):
    names = [GOOD[0], BAD[0], GOOD[1], BAD[1], GOOD[2], BAD[2], GOOD[3], BAD[3]]
    rows = list(local_stream(_paths(media, names), CFG, num_workers=2))
    assert [r["path"] for r in rows] == _paths(media, names)
    for name, row in zip(names, rows):
        assert set(row) == set(ROW_COLUMNS)
        if name.startswith("broken/"):
            assert row["error"] and "\n" not in row["error"]
            assert row["error"].startswith(str(media[name]))
            # one schema for every row: zero-filled placeholders
            assert row["patches"].shape == (10, 3, 14, 14) and not row["patches"].any()
            assert row["frame_indices"].tolist() == [-1] * 4
        else:
            assert row["error"] is None
            assert row["patches"].shape == (10, 3, 14, 14)
            assert row["meta_fields"].dtype == np.int32 and row["meta_fields"].shape == (10, 3)
            assert row["meta_scores"].dtype == np.float32
            assert row["frame_indices"].dtype == np.int64 and row["frame_indices"].shape == (4,)
            assert row["timestamps"].dtype == np.float64
            assert (row["decode_backend"], row["process_backend"]) == ("cpu", "cpu")


@pytest.mark.parametrize(
    "dtype, selection",
    [("bf16", "energy"), ("fp16", "energy"), ("fp32", "energy"), ("bf16", "random"),
     ("fp32", "uniform")],
)  # fmt: skip
def test_rows_equal_patch_stream_bit_for_bit(media, dtype, selection):
    cfg = PatchStreamConfig(
        sequence_length=4, input_size=28, patch_size=14, k_keep=10, output_dtype=dtype,
        selection=selection,
    )  # fmt: skip
    (row,) = local_stream([str(media["hevc.mkv"])], cfg, num_workers=1)
    with patch_stream(
        PatchStreamConfig(**{**cfg.__dict__, "video_path": str(media["hevc.mkv"])})
    ) as s:
        restored = row_patches(row)
        assert restored.dtype == s.patches.dtype
        assert torch.equal(restored.view(torch.uint8), s.patches.view(torch.uint8))
        fields, scores = s.metadata_tensors
        assert np.array_equal(row["meta_fields"], fields.numpy())
        assert np.array_equal(row["meta_scores"], scores.numpy())


def test_worker_counts_give_the_same_rows(media):
    paths = _paths(media, GOOD * 2)
    one = list(local_stream(paths, CFG, num_workers=1))
    two = list(local_stream(paths, CFG, num_workers=2))
    for a, b in zip(one, two):
        assert a["path"] == b["path"]
        assert np.array_equal(a["patches"], b["patches"])
        assert np.array_equal(a["meta_fields"], b["meta_fields"])


def test_manifests(media, tmp_path):
    paths = _paths(media, GOOD[:2] + BAD[:1])
    text = tmp_path / "list.txt"
    text.write_text("# videos\n" + "\n".join(paths) + "\n\n")
    table = tmp_path / "list.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([[p, i] for i, p in enumerate(paths)])
    parquet = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": paths}), parquet)
    for manifest in (text, table, parquet):
        rows = list(local_stream(str(manifest), CFG, num_workers=2))
        assert [r["path"] for r in rows] == paths
        assert [r["error"] is None for r in rows] == [True, True, False]


def test_relative_manifest_entries_resolve_against_the_manifest(media, tmp_path):
    folder = media["h264.mp4"].parent
    manifest = folder / "rel.txt"
    manifest.write_text("h264.mp4\n")
    (row,) = local_stream(str(manifest), CFG)
    assert row["error"] is None and row["path"] == str(folder / "h264.mp4")


def test_manifest_without_path_column(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("file\na.mp4\n")
    with pytest.raises(ConfigError, match="'path' column"):
        list(local_stream(str(bad), CFG))


def test_bad_arguments(media):
    with pytest.raises(ConfigError, match="video_path"):
        local_stream([], PatchStreamConfig(video_path="x.mp4"))
    with pytest.raises(ConfigError, match="num_workers"):
        local_stream([], CFG, num_workers=0)
    with pytest.raises(ConfigError, match="does not exist; pass a list of video paths"):
        local_stream(str(media["h264.mp4"]) + ".gone", CFG)
    with override_cuda_device_count(0):
        with pytest.raises(DeviceUnavailableError):
            local_stream([str(media["h264.mp4"])], PatchStreamConfig(decode_backend="gpu"))


def test_auto_is_recorded_on_rows(media):
    with override_cuda_device_count(0):
        (row,) = local_stream([str(media["h264.mp4"])], CFG)
    assert (row["decode_backend"], row["process_backend"]) == ("cpu", "cpu")


def test_empty_input_list():
    assert list(local_stream([], CFG)) == []


def test_random_selection_is_seeded_per_video(media):
    """The random baseline: reproducible for a path and selection_seed, other
    patches for another seed, and the same format as energy rows."""
    paths = [str(media["h264.mp4"]), str(media["vp9.webm"])]

    def fields(**options):
        cfg = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10,
                                **options)  # fmt: skip
        return [row["meta_fields"].tolist() for row in local_stream(paths, cfg, num_workers=1)]

    random0 = fields(selection="random")
    assert fields(selection="random") == random0
    assert fields(selection="random", selection_seed=1) != random0
    assert random0[0] != random0[1]  # seeded per video, not one pattern for all
    assert fields(selection="energy") != random0


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_auto_fallback_is_recorded_on_rows_also_from_isolated_children(media, isolation):
    """A GPU node whose torchcodec cannot decode on CUDA (injected): auto
    decodes on the CPU and every row says why. The injected answers reach
    the isolated children, which resolve auto on their own."""
    paths = [str(media["h264.mp4"]), str(media["broken/empty.mp4"])]
    with override_cuda_device_count(1), override_nvdec_problem("no NVDEC on this node"):
        good, bad = local_stream(paths, CFG, num_workers=1, isolation=isolation)
    assert good["error"] is None and bad["error"]
    for row in (good, bad):
        assert (row["decode_backend"], row["process_backend"]) == ("cpu", "cpu")
        assert row["device_fallback"] == "no NVDEC on this node"
    (plain,) = local_stream(paths[:1], CFG, num_workers=1, isolation=isolation)
    assert plain["device_fallback"] is None
