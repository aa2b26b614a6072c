"""Videos in an object store: a real S3-compatible server (moto's standalone
``moto_server``) on 127.0.0.1, reached through the AWS environment variables
as a user's job would be."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pools import ONE_ACTOR, ONE_ACTOR_ARGS

from cps_ray import PatchStreamConfig, local_stream

CFG = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=6)
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One ``moto_server`` process; its objects live in its memory."""

    def __init__(self):
        # The one installed beside this Python (the test extra), not another
        # environment's on PATH.
        binary = os.path.join(os.path.dirname(sys.executable), "moto_server")
        if not os.path.exists(binary):
            binary = shutil.which("moto_server") or binary
        if not os.path.exists(binary):
            pytest.skip("moto_server is not installed (pip install 'moto[server]')")
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start")

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint, allow_bucket_creation=True,
            access_key="testing", secret_key="testing", region="us-east-1",
        )  # fmt: skip

    def upload(self, local: Path, key: str) -> str:
        fs = self.filesystem()
        fs.create_dir(key.split("/", 1)[0])
        with fs.open_output_stream(key) as out:
            out.write(local.read_bytes())
        return f"s3://{key}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    saved = {k: os.environ.get(k) for k in _AWS}
    os.environ.update(
        AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED")  # fmt: skip


def _same_rows(a: dict, b: dict) -> None:
    assert a["error"] is None and b["error"] is None
    for column in ("patches", "meta_fields", "meta_scores", "frame_indices", "timestamps"):
        np.testing.assert_array_equal(a[column], b[column])


def test_local_stream_reads_videos_from_s3(s3, media):
    names = ["h264.mp4", "hevc.mkv", "vp9.webm"]
    uris = [s3.upload(media[n], f"videos/in/{n}") for n in names]
    remote = list(local_stream(uris, CFG, num_workers=2))
    local = list(local_stream([str(media[n]) for n in names], CFG, num_workers=2))
    assert [r["path"] for r in remote] == uris
    for a, b in zip(remote, local):
        _same_rows(a, b)


def test_remote_failures_are_error_rows_naming_the_uri(s3, media):
    good = s3.upload(media["h264.mp4"], "videos/fail/ok.mp4")
    s3.upload(media["broken/text.mp4"], "videos/fail/text.mp4")
    secret = "s3://videos/fail/ok.mp4?secret_key=hunter2&access_key=AKIAXX"
    inputs = [good, "s3://videos/fail/missing.mp4", "s3://no-such-bucket/a.mp4",
              "s3://videos/fail", "s3://videos/fail/text.mp4", secret]  # fmt: skip
    rows = list(local_stream(inputs, CFG, num_workers=2))
    assert len(rows) == len(inputs)
    errors = [r["error"] for r in rows]
    assert errors[0] is None
    assert errors[1] == "s3://videos/fail/missing.mp4: object not found"
    assert errors[2] == "s3://no-such-bucket/a.mp4: object not found"
    assert errors[3].startswith("s3://videos/fail: is a folder")
    assert errors[4].startswith("s3://videos/fail/text.mp4: ") and "not a video" in errors[4]
    # credentials in a URI never reach a row
    assert "hunter2" not in rows[5]["path"] and "AKIAXX" not in rows[5]["path"]
    assert "REDACTED" in rows[5]["path"]
    assert all("hunter2" not in (e or "") for e in errors)


@pytest.mark.slow(seconds=24)
def test_a_server_that_is_gone_gives_error_rows_after_bounded_tries(media):
    server = S3Server()
    env = dict(os.environ, AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    uri = server.upload(media["h264.mp4"], "gone/a.mp4")
    server.stop()
    code = (
        "import sys, time; from cps_ray import PatchStreamConfig, local_stream\n"
        "cfg = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=6)\n"
        "t = time.monotonic(); rows = list(local_stream(sys.argv[1:], cfg, num_workers=1,"
        " isolation='none'))\n"
        "print(round(time.monotonic() - t, 1)); print(rows[0]['error'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, uri], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.splitlines()  # fmt: skip
    seconds, error = float(out[-2]), out[-1]
    assert error.startswith(f"{uri}: remote read failed after 3 tries")
    assert seconds < 120


@pytest.mark.slow(seconds=18)
def test_preprocess_job_from_s3_to_s3_with_resume(s3, job_env, media, tmp_path):
    """The job joins the session's Ray with the store's settings in its
    runtime env, as a job submitted with them does."""
    import pyarrow.parquet as pq

    for name in ("h264.mp4", "vp9.webm"):
        s3.upload(media[name], f"jobs/in/{name}")
    s3.upload(media["broken/empty.mp4"], "jobs/in/empty.mp4")
    job = [sys.executable, str(REPO / "jobs/preprocess.py"), "--input", "s3://jobs/in/",
           "--output", "s3://jobs/out", "--sequence-length", "4", "--input-size", "28",
           "--patch-size", "14", "--k-keep", "6", "--decode-backend", "cpu",
           "--process-backend", "cpu", *ONE_ACTOR_ARGS]  # fmt: skip
    env = job_env(**{k: os.environ[k] for k in _AWS})
    first = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    s3.upload(media["hevc.mkv"], "jobs/in/hevc.mkv")
    second = subprocess.run(job + ["--resume"], env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    fs = s3.filesystem()
    shards = [i.path for i in fs.get_file_info(
        __import__("pyarrow.fs").fs.FileSelector("jobs/out/shards", recursive=True))]  # fmt: skip
    paths = []
    for shard in shards:
        with fs.open_input_file(shard) as f:
            paths += pq.read_table(f, columns=["path"]).column("path").to_pylist()
    assert sorted(paths) == ["s3://jobs/in/h264.mp4", "s3://jobs/in/hevc.mkv",
                             "s3://jobs/in/vp9.webm"]  # fmt: skip
    with fs.open_input_file("jobs/out/errors.parquet") as f:
        errors = pq.read_table(f).to_pylist()
    assert [e["path"] for e in errors] == ["s3://jobs/in/empty.mp4"]
    assert "empty" in errors[0]["error"]

    # Training reads the shards in the bucket (a prefix holding a manifest is
    # an output, not videos to list), nothing decoded.
    summary = tmp_path / "train.json"
    trained = subprocess.run(
        [sys.executable, str(REPO / "jobs/train_stream.py"), "--input", "s3://jobs/out",
         "--steps", "2", "--batch-size", "2", "--device", "cpu", "--json", str(summary)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads(summary.read_text())["samples"] == 3  # two steps: 2 rows, then the third


def test_http_inputs(media):
    """``http(s)://`` through the standard library: a local HTTP server."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(media["h264.mp4"].parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        rows = list(local_stream([f"{base}/h264.mp4", f"{base}/missing.mp4"], CFG,
                                 num_workers=1, isolation="none"))  # fmt: skip
        local = next(local_stream([str(media["h264.mp4"])], CFG, num_workers=1,
                                  isolation="none"))  # fmt: skip
        _same_rows(rows[0], local)
        assert rows[1]["error"] == f"{base}/missing.mp4: object not found (HTTP 404)"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_patch_dataset_streams_a_manifest_kept_in_s3(s3, ray_session, media, tmp_path):
    """The manifest is read by Ray Data's read tasks (with the store's
    settings from runtime_env, as every stage gets them); relative entries
    resolve under its prefix."""
    from cps_ray import patch_dataset

    names = ["h264.mp4", "vp9.webm"]
    for name in names:
        s3.upload(media[name], f"stream/in/{name}")
    listing = tmp_path / "list.txt"
    listing.write_text("h264.mp4\n# a comment\nvp9.webm\nmissing.mp4\n")
    manifest = s3.upload(listing, "stream/in/list.txt")
    env = {k: os.environ[k] for k in _AWS}
    rows = patch_dataset(manifest, CFG, runtime_env={"env_vars": env}, **ONE_ACTOR).take_all()
    assert [r["path"] for r in rows] == [f"s3://stream/in/{n}" for n in [*names, "missing.mp4"]]
    local = list(local_stream([str(media[n]) for n in names], CFG, num_workers=1))
    for a, b in zip(rows, local):
        _same_rows(a, b)
    assert rows[2]["error"] == "s3://stream/in/missing.mp4: object not found"


def _job_rows(out: Path) -> tuple[dict, dict]:
    """{path: patches values} of the shards, {path: error} of the errors table."""
    import pyarrow.parquet as pq

    good = {}
    for shard in sorted((out / "shards").glob("shard-*.parquet")):
        for row in pq.read_table(shard, columns=["path", "patches"]).to_pylist():
            good[row["path"]] = np.asarray(row["patches"]).ravel().tolist()
    errors = {r["path"]: r["error"] for r in pq.read_table(out / "errors.parquet").to_pylist()}
    return good, errors


@pytest.mark.slow(seconds=24)
def test_server_stopped_halfway_then_resume_equals_a_clean_run(job_env, media, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """The store goes away while a job reads from it: the videos it could not
    read are error rows (after bounded tries), the job ends; with the store
    back, --resume --retry-failed decodes just those, and the output holds
    what a clean run holds (rows are bit-identical across modes, so the
    clean run is ``local_stream`` in this process)."""
    names = ["h264.mp4", "vp9.webm", "hevc.mkv", "mpeg4.avi", "vp8.webm", "gop1.mp4",
             "short5.mp4", "vfr.mp4", "faststart.mp4", "broken/text.mp4"]  # fmt: skip
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{n.replace('/', '_')}\n" for n in names))

    def serve() -> tuple[S3Server, dict]:
        server = S3Server()
        for name in names:
            server.upload(media[name], f"halt/in/{name.replace('/', '_')}")
        server.upload(listing, "halt/in/list.txt")
        # The jobs join the session's Ray with the store's settings in their runtime env.
        env = job_env(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
        return server, env

    def job(out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "jobs/preprocess.py"), "--input",
                "s3://halt/in/list.txt", "--output", str(out), "--rows-per-shard", "1",
                "--sequence-length", "4", "--input-size", "28", "--patch-size", "14",
                "--k-keep", "6", "--decode-backend", "cpu", "--process-backend", "cpu",
                *ONE_ACTOR_ARGS, *extra]  # fmt: skip

    out = tmp_path / "out"
    server, env = serve()
    try:
        run = subprocess.Popen(job(out), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
        deadline = time.monotonic() + 300
        while not list(out.glob("shards/shard-*.parquet")) and run.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.stop()  # halfway: the first shard is written
    log = run.communicate(timeout=600)[0]
    assert run.returncode == 0, log[-3000:]
    good, errors = _job_rows(out)
    inputs = {f"s3://halt/in/{n.replace('/', '_')}" for n in names}
    assert set(good) | set(errors) == inputs and not set(good) & set(errors)
    lost = {p for p, e in errors.items() if "remote read failed after 3 tries" in e}
    assert lost | {"s3://halt/in/broken_text.mp4"} == set(errors)

    server, env = serve()  # the store is back
    try:
        resumed = subprocess.run(job(out, "--resume", "--retry-failed"), env=env,
                                 capture_output=True, text=True, timeout=600)  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        for key in _AWS:
            monkeypatch.setenv(key, env[key])
        clean = list(local_stream(sorted(inputs), CFG, num_workers=2))
    finally:
        server.stop()
    good, errors = _job_rows(out)
    assert good == {
        r["path"]: np.asarray(r["patches"]).ravel().tolist() for r in clean if r["error"] is None
    }
    assert errors == {r["path"]: r["error"] for r in clean if r["error"] is not None}
    assert len(good) == len(names) - 1


@pytest.mark.slow(seconds=25)
def test_a_write_to_the_store_stopped_halfway_then_resumed_holds_a_clean_writes_rows(
    s3, ray_session, tmp_path
):
    """Workers write shards straight into the bucket: a run that stops
    halfway (a task fails; its finished writes stay, nothing is committed)
    and is resumed holds the rows and failures of one uninterrupted write."""
    import pyarrow.parquet as pq
    import ray

    from cps_ray import write_shards
    from cps_ray._store import read_errors, read_output

    env = {"env_vars": {k: os.environ[k] for k in _AWS}}
    paths = [f"s3://videos/v{i:02d}.mp4" for i in range(12)]
    errors = [f"{p}: not a video" if i in (2, 7) else None for i, p in enumerate(paths)]
    items = [{"path": p, "value": i, "error": e, "error_kind": "corrupt" if e else None}
             for i, (p, e) in enumerate(zip(paths, errors))]  # fmt: skip

    def stop_at(batch, bad):  # nested: Ray's workers get it by value
        if any(p in bad for p in batch["path"]):
            import time

            from cps_ray._store import read_output

            deadline = time.monotonic() + 120
            while not read_output("s3://out/resumed").shards and time.monotonic() < deadline:
                time.sleep(0.2)  # stop once another block's shard is in the bucket
            raise RuntimeError("stopped")
        return batch

    s3.filesystem().create_dir("out")
    write_shards(ray.data.from_items(items, override_num_blocks=6), "s3://out/clean",
                 rows_per_shard=2, runtime_env=env)  # fmt: skip
    stopped = ray.data.from_items(items, override_num_blocks=12).map_batches(
        stop_at,
        fn_kwargs={"bad": {paths[9]}},
        batch_format="pandas",
        max_retries=0,
        runtime_env=env,
    )
    with pytest.raises(Exception, match="stopped"):
        write_shards(stopped, "s3://out/resumed", rows_per_shard=2, runtime_env=env)
    killed = read_output("s3://out/resumed")
    assert killed.manifest["complete"] is False and not killed.has_errors_file
    done = {p for s in killed.shards for p in _shard_paths(s3, "out/resumed", s["file"])}
    todo = [item for item in items if item["path"] not in done]
    assert 0 < len(todo) < len(items)
    manifest = write_shards(ray.data.from_items(todo), "s3://out/resumed", rows_per_shard=2,
                            resume=True, skipped=len(items) - len(todo),
                            runtime_env=env)  # fmt: skip
    assert (manifest["inputs"], manifest["ok"], manifest["failed"]) == (12, 10, 2)

    def rows(prefix):
        out = []
        for shard in read_output(f"s3://{prefix}").shards:
            with s3.filesystem().open_input_file(f"{prefix}/{shard['file']}") as f:
                out += pq.read_table(f, columns=["path", "value"]).to_pylist()
        return sorted(out, key=lambda r: r["path"])

    assert rows("out/resumed") == rows("out/clean")
    assert sorted(read_errors("s3://out/resumed")) == sorted(read_errors("s3://out/clean"))


def _shard_paths(s3, prefix: str, file: str) -> list[str]:
    import pyarrow.parquet as pq

    with s3.filesystem().open_input_file(f"{prefix}/{file}") as f:
        return pq.read_table(f, columns=["path"]).column("path").to_pylist()
