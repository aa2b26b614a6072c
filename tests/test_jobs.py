"""The jobs: preprocess under ``ray job submit`` on a token-protected head,
from ``cps-ray preprocess`` on a running Ray, and resumed; train_stream on CPU, also on
two Ray Train workers fed by the live pipeline, then resumed on the shards;
cluster.yaml."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from local_ray_head import RAY, local_ray_head, session_processes
from pools import ONE_ACTOR, ONE_ACTOR_ARGS

from cps_ray import ConfigError, EnergyRuleError, PatchStreamConfig, local_stream, write_shards
from cps_ray._cli import main as cli_main
from cps_ray.jobs import JobError, find_inputs, preprocess_main, run_preprocess
from cps_ray.jobs._options import add_config_options, config_from_args

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--sequence-length", "4", "--input-size", "28", "--patch-size", "14", "--k-keep", "10"]
CFG = PatchStreamConfig(sequence_length=4, input_size=28, patch_size=14, k_keep=10)
# Read by Ray Train in the driver (and passed on to its controller).
RAY_TRAIN_EXTRAS = ("RAY_TRAIN_METRICS_ENABLED", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
# A name a shell would act on: the job must treat it as data.
ODD_NAME = "b $(touch pwned) 'q';.webm"


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (mtime_ns, sha256) of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _shard_paths(out: Path) -> list[list[str]]:
    return [
        pq.read_table(p, columns=["path"]).column("path").to_pylist()
        for p in sorted((out / "shards").glob("shard-*.parquet"))
    ]


def _submit(head_url: str, env: dict, *args: str, timeout: int = 300):
    command = [RAY, "job", "submit", "--address", head_url, "--working-dir", str(REPO), "--"]
    command += ["python", "jobs/preprocess.py", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow(seconds=55)
def test_job_submit_on_a_token_head_then_resume_and_refusals(media, tmp_path):
    videos = tmp_path / "in videos"
    (videos / "nested").mkdir(parents=True)
    shutil.copy(media["h264.mp4"], videos / "a.mp4")
    shutil.copy(media["broken/empty.mp4"], videos / "empty.mp4")
    shutil.copy(media["vp9.webm"], videos / "nested" / ODD_NAME)
    shutil.copy(media["broken/text.mp4"], videos / "nested" / "text.mp4")
    out = tmp_path / "out"
    token_file = tmp_path / "auth_token"
    token_file.write_text(os.urandom(32).hex())
    token_file.chmod(0o600)
    args = ["--input", str(videos), "--output", str(out), "--rows-per-shard", "1", *SMALL,
            *ONE_ACTOR_ARGS]  # fmt: skip

    with local_ray_head(token_file) as head:
        first = _submit(head.dashboard_url, head.env, *args)
        log = first.stdout + first.stderr
        assert first.returncode == 0, log[-4000:]
        assert "listed by a task" in log
        assert "this run: 2 ok, 2 failed, 0 skipped, 2 new shards" in log
        assert "issues/53727" not in log  # Ray's line about constructor arguments

        manifest = json.loads((out / "manifest.json").read_text())
        assert (manifest["inputs"], manifest["ok"], manifest["failed"]) == (4, 2, 2)
        assert manifest["skipped"] == 0
        assert manifest["config"]["k_keep"] == 10 and manifest["versions"]["ray"]
        assert len(manifest["shards"]) == 2  # one good video per shard
        assert sorted(_shard_paths(out)) == [[str(videos / "a.mp4")],
                                             [str(videos / "nested" / ODD_NAME)]]  # fmt: skip
        errors = {r["path"]: r["error"] for r in pq.read_table(out / "errors.parquet").to_pylist()}
        assert set(errors) == {str(videos / "empty.mp4"), str(videos / "nested" / "text.mp4")}
        assert "empty file" in errors[str(videos / "empty.mp4")]
        assert "not a video" in errors[str(videos / "nested" / "text.mp4")]
        assert not list(tmp_path.rglob("pwned")) and not (REPO / "pwned").exists()

        before = _snapshot(out)
        again = _submit(head.dashboard_url, head.env, *args, "--resume")
        log = again.stdout + again.stderr
        assert again.returncode == 0, log[-4000:]
        assert "4 inputs, 4 already in the output (skipped), 0 processed" in log
        assert _snapshot(out) == before  # nothing new written, nothing rewritten

        # a wrong token, and no token at all, are refused before any job starts
        wrong = _submit(head.dashboard_url, {**head.env, "RAY_AUTH_TOKEN": "not-the-token"}, *args)
        assert wrong.returncode != 0
        assert "Invalid authentication token" in wrong.stderr + wrong.stdout
        no_token = {k: v for k, v in head.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
        no_token.update(RAY_AUTH_MODE="disabled", HOME=str(tmp_path / "empty-home"))
        missing = _submit(head.dashboard_url, no_token, *args)
        assert missing.returncode != 0
        assert "Missing authentication token" in missing.stderr + missing.stdout
        assert head.request("/api/jobs/", token=None)[0] == 401
        assert head.request("/api/jobs/", token="not-the-token")[0] == 403
        status, jobs = head.request("/api/jobs/")
        assert status == 200 and [j["status"] for j in jobs] == ["SUCCEEDED", "SUCCEEDED"]
    assert not session_processes(head.process.pid)  # the head is gone, all of it
    assert _snapshot(out) == before


@pytest.mark.slow(seconds=90)
def test_preprocess_then_resume_then_train_from_shards(ray_session, media, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    first_list = tmp_path / "first.txt"
    first_list.write_text(f"{media['h264.mp4']}\n{media['broken/text.mp4']}\n")
    out = tmp_path / "out"
    # `cps-ray preprocess` on the Ray this process already runs. Drivers that
    # join a running Ray as scripts are the token head's and test_remote's
    # jobs; a job that starts a Ray of its own is test_resume's killed driver.
    args = [str(first_list), str(out), "--rows-per-shard", "1", *SMALL, *ONE_ACTOR_ARGS]
    assert cli_main(["preprocess", *args]) == 0
    assert "this run: 1 ok, 1 failed" in capsys.readouterr().out
    (first_shard,) = (out / "shards").glob("shard-*.parquet")
    shard0 = first_shard.read_bytes()

    # Without --resume an output that holds a run is refused; so are other settings.
    with pytest.raises(JobError, match="already holds a preprocessing run .* pass --resume"):
        run_preprocess(first_list, out, CFG)
    with pytest.raises(JobError, match="k_keep=10 there, 8 now"):
        run_preprocess(first_list, out, PatchStreamConfig(**{**CFG.__dict__, "k_keep": 8}),
                       resume=True)  # fmt: skip
    with pytest.raises(JobError, match="selection='energy' there, 'random' now"):
        run_preprocess(first_list, out, replace(CFG, selection="random"), resume=True)
    # The energy rule (motion compensation on by default) is the output's:
    # rows of the other rule never mix in.
    with pytest.raises(
        JobError,
        match="rule 'residual-grey128-global-motion-v1'.*'residual-grey128'; its rows cannot",
    ):
        run_preprocess(first_list, out, replace(CFG, motion="none"), resume=True)
    written = json.loads((out / "manifest.json").read_text())
    assert written["energy_rule"] == "residual-grey128-global-motion-v1"
    assert written["config"]["motion"] == "global"
    assert (written["config"]["selection"], written["config"]["selection_seed"]) == ("energy", 0)
    # An output written before the rule was recorded (frame 0 scored by its
    # variance) is never resumed into: its rows would mix two rules.
    old = tmp_path / "old-rule"
    shutil.copytree(out, old)
    del written["energy_rule"]
    (old / "manifest.json").write_text(json.dumps(written))
    refused = "rule 'variance-first-frame'.*'residual-grey128-global-motion-v1'"
    with pytest.raises(JobError, match=refused):
        run_preprocess(first_list, old, CFG, resume=True)
    with pytest.raises(EnergyRuleError, match="new output"):
        write_shards(None, old, resume=True)

    # Resume with more inputs: only the new ones run; the new shard takes the next number.
    second_list = tmp_path / "second.csv"
    names = ["h264.mp4", "vp9.webm", "broken/text.mp4", "broken/empty.mp4"]
    second_list.write_text("path\n" + "".join(f"{media[n]}\n" for n in names))
    manifest = run_preprocess(second_list, out, CFG, rows_per_shard=1, resume=True, **ONE_ACTOR)
    assert (manifest["inputs"], manifest["skipped"]) == (4, 2)
    assert (manifest["ok"], manifest["failed"]) == (2, 2)
    assert (manifest["run"]["ok"], manifest["run"]["failed"]) == (1, 1)
    assert len(manifest["run"]["new_shards"]) == 1 and len(manifest["shards"]) == 2
    assert first_shard.read_bytes() == shard0  # never rewritten
    assert sorted(_shard_paths(out)) == [[str(media["h264.mp4"])], [str(media["vp9.webm"])]]
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["path"] for e in errors] == [str(media["broken/text.mp4"]),
                                           str(media["broken/empty.mp4"])]  # fmt: skip
    assert [e["error_kind"] for e in errors] == ["corrupt", "corrupt"]
    assert json.loads((out / "manifest.json").read_text())["skipped"] == 2

    # The shards feed training as they are (nothing decoded).
    summary = _train(["--input", str(out), "--steps", "2", "--batch-size", "2"], tmp_path)
    assert summary["samples"] == 4

    # Ray Train's own extras stay off in both runs below (its metrics, and the
    # preemption watcher, an actor polling for node drains on cloud clusters):
    # 7 CPU-s and 5 s per run here, and no assertion is about them.
    for name in RAY_TRAIN_EXTRAS:
        monkeypatch.setenv(name, "0")
    # Two Ray Train workers (CPU, gloo) on the live pipeline: disjoint shares,
    # error rows counted, equal steps however the errors fall (here all in
    # one block at the start)...
    good = [str(media[n]) for n in ("h264.mp4", "vp9.webm", "hevc.mkv", "mpeg4.avi")]
    bad = [str(media[n]) for n in ("broken/text.mp4", "broken/empty.mp4", "broken/truncated.mp4")]
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{p}\n" for p in bad + good))
    common = ["--num-workers", "2", "--worker-cpus", "0.5", "--batch-size", "1",
              "--checkpoint-dir", str(tmp_path / "runs"), "--run-name", "t"]  # fmt: skip
    first = _train(["--input", str(listing), *common, "--epochs", "1", *SMALL, *ONE_ACTOR_ARGS],
                   tmp_path)  # fmt: skip
    assert first["num_workers"] == 2
    workers = first["workers"]
    # Error rows are dropped before the split and counted for the run.
    assert first["failed"] == len(bad) and set(first["failures"]) == set(bad)
    assert all(reason.startswith(path) for path, reason in first["failures"].items())
    # Equal shares of the good rows: the same steps on both workers, each
    # video on one worker only, none lost (4 rows split 2 + 2).
    assert [w["steps"] for w in workers] == [2, 2]
    trained = [w["paths"] for w in workers]
    assert not set(trained[0]) & set(trained[1])
    assert sorted(trained[0] + trained[1]) == sorted(good)
    assert first["samples"] == 4 and first["dropped"] == 0
    assert first["checkpoint"] is not None
    assert all(w["loss_last"] is not None for w in workers)

    # ... then the same run name and folder on the shards: the run continues
    # after its last epoch, each worker on its own share of the shards.
    again = _train(["--input", str(out), *common, "--epochs", "2"], tmp_path)
    assert (again["failed"], again["failures"]) == (0, {})  # shards hold no error rows
    for w in again["workers"]:
        assert w["resumed_at_step"] == workers[0]["steps"]
        assert [e["epoch"] for e in w["epochs"]] == [1]
    assert len({w["steps"] for w in again["workers"]}) == 1
    assert [w["paths"] for w in again["workers"]] in (
        [[str(media["h264.mp4"])], [str(media["vp9.webm"])]],
        [[str(media["vp9.webm"])], [str(media["h264.mp4"])]],
    )


def _train_stream():
    spec = importlib.util.spec_from_file_location("train_stream", REPO / "jobs" / "train_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(argv: list[str], tmp_path: Path) -> dict:
    summary_path = tmp_path / "train.json"
    assert _train_stream().main([*argv, "--device", "cpu", "--json", str(summary_path)]) == 0
    return json.loads(summary_path.read_text())


def test_train_workers_fit_the_cluster_or_name_the_flags(ray_session, media, capsys):
    """On 2 CPUs, --num-workers 2 fits by default (each worker's CPUs leave
    the pipeline one); asking for more CPUs than there are names the flags."""
    module = _train_stream()
    parser = module.build_parser()
    args = parser.parse_args(["--input", str(media["h264.mp4"]), "--num-workers", "2"])
    assert module.worker_cpus(args, 2.0) == 0.5
    code = module.main(["--input", str(media["h264.mp4"]), "--num-workers", "4",
                        "--worker-cpus", "1"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--num-workers 4 x --worker-cpus 1" in err and "lower --worker-cpus" in err


def test_epochs_need_ray_train_workers(media, capsys):
    assert _train_stream().main(["--input", str(media["h264.mp4"]), "--epochs", "1"]) == 2
    assert "--epochs needs --num-workers" in capsys.readouterr().err


def test_train_stream_on_the_live_pipeline(ray_session, media, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("h264.mp4", "vp9.webm", "broken/text.mp4", "mpeg2.mpg"):
        shutil.copy(media[name], videos / name.replace("/", "_"))
    argv = ["--input", str(videos), "--steps", "3", "--batch-size", "1", "--dim", "32", *SMALL,
            *ONE_ACTOR_ARGS]  # fmt: skip
    summary = _train(argv, tmp_path)
    assert summary["steps"] == 3 and summary["samples"] == 3
    assert summary["samples_per_second"] > 0
    assert 0.0 <= summary["data_wait_share"] <= 1.0
    assert math.isfinite(summary["loss_first"]) and math.isfinite(summary["loss_last"])
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "waiting for data" in printed


def test_find_inputs(media, tmp_path):
    root = tmp_path / "videos"
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("z.mp4", "a/b/x.MKV", "a/notes.txt"):
        (root / rel).write_bytes(b"x")
    found = find_inputs(root)
    assert found == [str(root / "a" / "b" / "x.MKV"), str(root / "z.mp4")]
    assert find_inputs(f"{root}/**/*.mp4") == [str(root / "z.mp4")]
    assert find_inputs(root / "z.mp4") == [str(root / "z.mp4")]
    manifest = tmp_path / "list.txt"
    manifest.write_text(
        "videos/z.mp4\n# a comment\nvideos/./z.mp4\nvideos//z.mp4\n/elsewhere/y.mp4\n"
    )
    # one input however the path is spelled
    assert find_inputs(manifest) == [str(root / "z.mp4"), "/elsewhere/y.mp4"]
    for spec, message in (
        (tmp_path / "missing", "does not exist"),
        (f"{root}/*.webm", "No files match"),
        (root / "a" / "b" / "c", "does not exist"),
        ("nosuchscheme://bucket/videos", "cannot be listed"),
    ):
        with pytest.raises(JobError, match=message):
            find_inputs(spec)
    (root / "empty").mkdir()
    with pytest.raises(JobError, match="no video files under it"):
        find_inputs(root / "empty")


def test_one_resolver_for_the_api_the_jobs_and_the_cli(media, tmp_path):
    """patch_dataset, local_stream and the jobs take the same specs: a glob and
    one video file are inputs everywhere, and the job's list is the API's
    without duplicates."""
    from cps_ray.pipeline._inputs import input_paths as resolve_inputs

    root = tmp_path / "v"
    root.mkdir()
    for name in ("h264.mp4", "vp9.webm"):
        shutil.copy(media[name], root / name)
    listing = tmp_path / "list.txt"
    listing.write_text("v/vp9.webm\nv/h264.mp4\nv/./h264.mp4\n")
    for spec, expected in (
        (f"{root}/*.*", [root / "h264.mp4", root / "vp9.webm"]),
        (root / "vp9.webm", [root / "vp9.webm"]),
        (root, [root / "h264.mp4", root / "vp9.webm"]),
        (listing, [root / "vp9.webm", root / "h264.mp4"]),
    ):
        assert find_inputs(spec) == [str(p) for p in expected]
        assert list(dict.fromkeys(resolve_inputs(spec))) == [str(p) for p in expected]
    rows = list(local_stream(f"{root}/*.webm", CFG, num_workers=1, isolation="none"))
    assert [(r["path"], r["error"]) for r in rows] == [(str(root / "vp9.webm"), None)]
    with pytest.raises(ConfigError, match="No files match"):
        resolve_inputs(f"{root}/*.avi")


def test_preprocess_refuses_before_starting_anything(tmp_path, capsys, media):
    out = tmp_path / "out"
    assert preprocess_main(["--input", str(media["h264.mp4"]), "--output", str(out),
                            "--k-keep", "99999", *SMALL[:6]]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("preprocess.py: error: Invalid k_keep (99999)")
    (tmp_path / "file").write_text("x")
    assert preprocess_main(["--input", str(media["h264.mp4"]), "--output",
                            str(tmp_path / "file")]) == 2  # fmt: skip
    assert "exists and is not a folder" in capsys.readouterr().err
    assert preprocess_main(["--input", str(media["h264.mp4"]), "--output", str(out),
                            "--address", "http://127.0.0.1:8265"]) == 2  # fmt: skip
    assert "is a dashboard (job submission) address" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        preprocess_main(["--output", str(out)])
    assert usage.value.code == 2


def test_pool_flags_reach_patch_dataset(capsys):
    from cps_ray.jobs._options import pipeline_options_from_args
    from cps_ray.jobs._preprocess import build_preprocess_parser

    parser = build_preprocess_parser()
    base = ["--input", "in", "--output", "out"]
    unset = pipeline_options_from_args(parser.parse_args(base))
    assert unset == {"isolation": "process", "max_attempts": 2}  # the pools' defaults
    given = pipeline_options_from_args(parser.parse_args(
        [*base, "--decode-pool", "3", "--select-pool", "2", "--no-fuse"]))  # fmt: skip
    assert (given["decode_pool"], given["select_pool"], given["fuse"]) == (3, 2, False)
    assert pipeline_options_from_args(parser.parse_args([*base, *ONE_ACTOR_ARGS])) == {
        **unset,
        **ONE_ACTOR,
    }
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--decode-pool", "0"])
    assert "--decode-pool: must be >= 1, got 0" in capsys.readouterr().err


def _commands(config: dict) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    found = [c for key in keys for c in config.get(key) or []]
    for node_type in config["available_node_types"].values():
        found += [c for key in keys for c in node_type.get(key) or []]
    return found


def test_cluster_yaml_is_valid_and_closed():
    import ray
    import yaml
    from jsonschema import validate

    text = (REPO / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    validate(config, json.loads(schema_path.read_text()))
    # what `ray up` checks before it calls the cloud (defaults filled in)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert config["provider"]["type"] == "aws" and "GPU" not in head["resources"]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers)  # GPU workers declare GPUs
    assert any(t["resources"].get("CPU", 0) >= 1 and not t["resources"].get("GPU") for t in workers)

    commands = _commands(config)
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 2
    for command in starts:  # token authentication on every node
        assert "RAY_AUTH_MODE=token" in command
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in text and "::/0" not in text
    # the package is installed on every node type, with the pinned pairing of
    # torch and torchcodec for its kind (CPU builds, or CUDA 13 builds)
    for name, node_type in types.items():
        if name == config["head_node_type"]:
            own = config["head_setup_commands"]
        else:
            own = node_type.get("worker_setup_commands") or config["worker_setup_commands"]
        installs = [c for c in own if "pip install" in c and "cps_ray" in c]
        pairing = (
            "constraints-gpu.txt" if node_type["resources"].get("GPU") else "constraints-cpu.txt"
        )
        assert len(installs) == 1 and f"-c ~/cps_ray/{pairing}" in installs[0], name
        assert ("cps_ray[cuda]" in installs[0]) == (pairing == "constraints-gpu.txt")

    # the token comes from a local file; no token (or token variable) is in the file
    mounts = config["file_mounts"]
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN=" not in text
    assert not any(len(word) >= 32 and word.isalnum() for word in text.split())
    token_file = Path.home() / ".ray" / "auth_token"
    if token_file.is_file() and token_file.read_text().strip():
        assert token_file.read_text().strip() not in text

    # no port of Ray's open to anything: the only rule is SSH, from one CIDR
    rules = config["provider"]["security_group"]["IpPermissions"]
    for rule in rules:
        assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (22, 22, "tcp")
        for ip_range in rule.get("IpRanges", []):
            assert not ip_range["CidrIp"].endswith("/0")
        assert not rule.get("Ipv6Ranges")


def test_selection_flags_reach_the_config():
    import argparse

    parser = argparse.ArgumentParser()
    add_config_options(parser)
    args = parser.parse_args([*SMALL, "--selection", "uniform", "--selection-seed", "5"])
    cfg = config_from_args(args)
    assert (cfg.selection, cfg.selection_seed) == ("uniform", 5)
    assert config_from_args(parser.parse_args(SMALL)).selection == "energy"
    for bad in (["--selection", "topk"], ["--selection-seed", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*SMALL, *bad])
