"""Manifests read in chunks by one parser (``cps_ray.pipeline._inputs``),
streamed by Ray Data, and the ledger and digest sets resume checks against
(``cps_ray.pipeline._output``)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pools import ONE_ACTOR

from cps_ray import ConfigError, PatchStreamConfig
from cps_ray._store import PathSet
from cps_ray.pipeline._inputs import Manifest, input_paths
from cps_ray.pipeline._output import Ledger

CFG = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=6)


def _read(manifest: Manifest) -> list[str]:
    """Every path of every chunk, in chunk order (what the read tasks read)."""
    return [p for chunk in manifest.chunks() for p in manifest.read(chunk)]


TEXT = (
    "# a comment\n"
    "a.mp4\n"
    "\n"
    "  spaced name.mp4  \r\n"
    "/abs/b.mp4\n"
    "sub/./c.mp4\n"
    "s3://bucket/d.mp4\n"
    "caf\u00e9/\u65e5\u672c.mp4\n"
    + "".join(f"long/{'x' * (i % 40)}{i}.mp4\n" for i in range(200))
    + "last-without-newline.mp4"
)  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1000, 2**20])
def test_text_manifest_cut_in_byte_ranges_reads_every_line_once(tmp_path, chunk):
    manifest = tmp_path / "list.txt"
    manifest.write_text(TEXT, encoding="utf-8")
    source = Manifest(manifest, chunk_bytes=chunk)
    assert len(source.chunks()) == -(-manifest.stat().st_size // chunk)
    got = _read(source)
    assert got == input_paths(str(manifest))
    assert got[0] == str(tmp_path / "a.mp4") and got[3] == str(tmp_path / "sub" / "c.mp4")
    assert len(got) == 6 + 200 + 1


def test_text_manifest_that_is_not_utf8_keeps_its_bytes(tmp_path):
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(b"/videos/caf\xe9.mp4\n/videos/ok.mp4\n")
    got = _read(Manifest(manifest, chunk_bytes=5))
    assert got == [b"/videos/caf\xe9.mp4".decode("utf-8", "surrogateescape"), "/videos/ok.mp4"]


def test_csv_manifest_streams_quoted_fields_with_newlines(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text('label,path\n1,a.mp4\n2,"odd\nname.mp4"\n3,\n4,/abs/c.mp4\n')
    source = Manifest(manifest)
    assert _read(source) == input_paths(str(manifest))
    assert _read(source) == [str(tmp_path / "a.mp4"), str(tmp_path / "odd\nname.mp4"), "/abs/c.mp4"]


def test_parquet_manifest_one_task_per_row_group(tmp_path):
    manifest = tmp_path / "list.parquet"
    paths = [f"/videos/{i:04d}.mp4" for i in range(1000)]
    pq.write_table(pa.table({"path": paths, "n": list(range(1000))}), manifest, row_group_size=300)
    source = Manifest(manifest)
    assert len(source.chunks()) == 4 and source.estimated_rows == 1000
    assert _read(source) == paths


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("list.csv", "file\na.mp4\n", "needs a 'path' column; it has \\['file'\\]"),
        ("missing.txt", None, "must be an existing file"),
    ],
)
def test_bad_manifests_are_refused_before_any_read(tmp_path, name, content, message):
    manifest = tmp_path / name
    if content is not None:
        manifest.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Manifest(manifest)


def test_a_uri_manifest_is_known_by_its_name_not_its_options():
    from cps_ray.pipeline._inputs import is_manifest

    assert is_manifest("s3://bucket/lists/videos.parquet?endpoint_override=h:9000&scheme=http")
    assert is_manifest("/data/list.TXT") and not is_manifest("s3://bucket/a.mp4?x=list.txt")


def test_parquet_manifest_without_path_column(tmp_path):
    manifest = tmp_path / "list.parquet"
    pq.write_table(pa.table({"file": ["a.mp4"]}), manifest)
    with pytest.raises(ConfigError, match="Parquet manifest needs a 'path' column"):
        Manifest(manifest)


def test_a_short_manifest_still_gives_every_decode_actor_work(tmp_path):
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"/v/{'n' * 90}{i}.mp4\n" for i in range(14)))
    assert Manifest(manifest).estimated_rows == 14  # counted, not guessed from bytes


def test_a_block_screened_again_after_a_retry_is_not_lost(tmp_path):
    """A read task that fails after the ledger answered is run again by Ray:
    its block must get the same paths through, counted once; so must a
    write task's claim."""
    ledger = Ledger(str(tmp_path / "out"), frozenset())
    block = pa.table({"path": ["/v/a.mp4", "/v/b.mp4", "/v/a.mp4"]})
    first = ledger.admit(block)
    assert first.column("path").to_pylist() == ["/v/a.mp4", "/v/b.mp4"]
    assert ledger.admit(block).equals(first)  # the retried task's block
    totals = ledger.totals()
    assert (totals["inputs"], totals["skipped"], totals["retried"]) == (2, 0, 0)
    # A later block naming them again is screened as before.
    later = ledger.admit(pa.table({"path": ["/v/b.mp4", "/v/c.mp4"]}))
    assert later.column("path").to_pylist() == ["/v/c.mp4"]
    assert ledger.totals()["inputs"] == 3
    # Claims: one path, one row; a claim asked again gets the same answer.
    assert ledger.claim(["/v/a.mp4", "/v/b.mp4", "/v/a.mp4"]) == [True, True, False]
    assert ledger.claim(["/v/a.mp4", "/v/b.mp4", "/v/a.mp4"]) == [True, True, False]
    assert ledger.claim(["/v/b.mp4", "/v/c.mp4"]) == [False, True]
    assert ledger.totals()["duplicates"] == 2


def test_pathset_membership_across_merges():
    paths = [f"/videos/{i}.mp4" for i in range(20000)]
    seen = PathSet()
    assert all(seen.add_new(paths[:12000]))
    fresh = seen.add_new(paths[10000:] + ["/videos/0.mp4", "/videos/x.mp4", "/videos/x.mp4"])
    assert fresh == [False] * 2000 + [True] * 8000 + [False, True, False]
    assert len(seen) == 20001
    assert seen.contains(paths[::997]) == [True] * len(paths[::997])
    assert seen.contains(["/videos/20000.mp4", "/videos/-1.mp4"]) == [False, False]
    assert "/videos/19999.mp4" in seen and "/elsewhere/1.mp4" not in seen


def test_patch_dataset_streams_a_manifest_with_missing_files(ray_session, media, tmp_path):
    from cps_ray import patch_dataset

    good = [str(media["h264.mp4"]), str(media["vp9.webm"])]
    missing = [str(tmp_path / f"gone-{i:04d}.mp4") for i in range(300)]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join([good[0], *missing, good[1]]) + "\n")
    rows = patch_dataset(str(manifest), CFG, videos_per_block=4, **ONE_ACTOR).take_all()
    assert [r["path"] for r in rows] == [good[0], *missing, good[1]]  # order kept
    assert rows[0]["error"] is None and rows[-1]["error"] is None
    assert all(r["error"] == f"{p}: file not found" for r, p in zip(rows[1:-1], missing))


@pytest.mark.slow(seconds=12)
def test_streamed_job_never_lists_the_manifest_in_the_driver(ray_session, media, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """A manifest job: repeated spellings of one input are one input, what the
    output holds is skipped on --resume, and the driver never lists the paths."""
    import json

    import cps_ray.jobs._preprocess
    from cps_ray.jobs import run_preprocess

    def refuse(*args, **kwargs):
        raise AssertionError("the driver listed the manifest")

    monkeypatch.setattr(cps_ray.jobs._preprocess, "input_paths", refuse)
    monkeypatch.setattr(cps_ray.jobs._preprocess, "_in_memory", refuse)
    folder = media["h264.mp4"].parent
    first = tmp_path / "first.txt"
    first.write_text(f"{folder}/h264.mp4\n{folder}/./h264.mp4\n{folder}//broken/text.mp4\n")
    out = tmp_path / "out"
    lines = []
    manifest = run_preprocess(first, out, CFG, rows_per_shard=1, log=lines.append, **ONE_ACTOR)
    assert (manifest["inputs"], manifest["ok"], manifest["failed"]) == (2, 1, 1)
    assert manifest["duplicate_rows"] == 0 and manifest["skipped"] == 0
    assert "read as the run goes" in lines[0]
    assert "preprocess: 2 inputs, 0 already in the output (skipped), 2 processed" in lines

    second = tmp_path / "second.txt"
    second.write_text(f"{folder}/vp9.webm\n{folder}/h264.mp4\n{folder}/broken/text.mp4\n")
    manifest = run_preprocess(second, out, CFG, rows_per_shard=1, resume=True,
                              log=lines.append, **ONE_ACTOR)  # fmt: skip
    assert (manifest["inputs"], manifest["skipped"]) == (3, 2)
    assert (manifest["ok"], manifest["failed"], manifest["run"]["ok"]) == (2, 1, 1)
    written = json.loads((out / "manifest.json").read_text())
    assert written["complete"] is True and written["skipped"] == 2


def _video_folder(media, root):
    """A folder of two videos (one nested, one with a name that is not
    UTF-8), a file that is not a video and one that is not named like one."""
    import os
    import shutil

    (root / "nested").mkdir(parents=True)
    shutil.copy(media["h264.mp4"], root / "b.mp4")
    shutil.copy(media["vp9.webm"], os.fsdecode(bytes(root / "nested") + b"/caf\xe9.webm"))
    shutil.copy(media["broken/text.mp4"], root / "nested" / "text.mp4")
    (root / "notes.txt").write_text("not an input")
    return root


def test_patch_dataset_lists_a_folder_in_a_task(ray_session, media, tmp_path, monkeypatch):
    """A folder is listed by a task whose table stays in the object store."""
    import cps_ray.pipeline._inputs
    from cps_ray import local_stream, patch_dataset

    folder = _video_folder(media, tmp_path / "videos")
    expected = [r["path"] for r in local_stream(str(folder), CFG, num_workers=1)]
    assert len(expected) == 3 and expected == sorted(expected)

    def refuse(*args, **kwargs):
        raise AssertionError("the driver listed the folder")

    # In the driver a folder is never listed: the task runs in a Ray worker.
    monkeypatch.setattr(cps_ray.pipeline._inputs, "input_paths", refuse)
    monkeypatch.setattr(cps_ray.pipeline._inputs, "LISTING_ROWS_PER_TASK", 2)
    rows = patch_dataset(str(folder), CFG, **ONE_ACTOR).take_all()
    assert [r["path"] for r in rows] == expected  # two read tasks, in order
    assert [r["error"] is None for r in rows] == [True, True, False]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no video files under it"):
        patch_dataset(str(tmp_path / "empty"), CFG)


@pytest.mark.slow(seconds=10)
def test_folder_job_is_listed_off_the_driver_and_resumes(ray_session, media, tmp_path,
                                                          monkeypatch):  # fmt: skip
    """A folder's job: the driver never lists it; a resume with nothing new
    builds no pipeline (the listing is screened against the output in a
    task) and leaves the output as it is; a new video is the only one
    decoded; an empty folder is refused and leaves the output untouched."""
    import shutil

    import cps_ray.jobs._preprocess
    import cps_ray.pipeline._dataset
    from cps_ray.jobs import JobError, run_preprocess

    def refuse(*args, **kwargs):
        raise AssertionError("the driver listed the folder")

    monkeypatch.setattr(cps_ray.jobs._preprocess, "input_paths", refuse)
    monkeypatch.setattr(cps_ray.jobs._preprocess, "_in_memory", refuse)
    folder = _video_folder(media, tmp_path / "videos")
    out = tmp_path / "out"
    lines = []
    manifest = run_preprocess(folder, out, CFG, rows_per_shard=1, log=lines.append, **ONE_ACTOR)
    assert (manifest["inputs"], manifest["ok"], manifest["failed"]) == (3, 2, 1)
    assert "listed by a task" in lines[0]

    def snapshot():
        return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    before = snapshot()
    lines.clear()

    def no_pipeline(*args, **kwargs):
        raise AssertionError("a resume with nothing new built a pipeline")

    with monkeypatch.context() as patched:
        patched.setattr(cps_ray.pipeline._dataset, "build_patch_dataset", no_pipeline)
        again = run_preprocess(folder, out, CFG, rows_per_shard=1, resume=True,
                               log=lines.append)  # fmt: skip
    assert (again["inputs"], again["skipped"], again["run"]["ok"]) == (3, 3, 0)
    assert "preprocess: 3 inputs, 3 already in the output (skipped), 0 processed" in lines
    assert "preprocess: nothing to do; the output is left as it is" in lines
    assert snapshot() == before

    shutil.copy(media["h264.mp4"], folder / "a.mp4")
    third = run_preprocess(folder, out, CFG, rows_per_shard=1, resume=True, log=lines.append,
                           **ONE_ACTOR)  # fmt: skip
    assert (third["inputs"], third["skipped"], third["run"]["ok"]) == (4, 3, 1)
    assert len(third["shards"]) == 3 and third["shards"][-1]["file"].startswith("shards/shard-")

    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="no video files under it"):
        run_preprocess(tmp_path / "empty", tmp_path / "out2", CFG)
    assert not any((tmp_path / "out2").iterdir())
