"""Training on two Ray Train workers (CPU, gloo) fed by the live pipeline:
disjoint shares, error rows counted, equal steps however the errors fall
(here all in one block at the start), and a run started again continues from
its checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--sequence-length", "4", "--input-size", "28", "--patch-size", "14", "--k-keep", "10"]
GOOD = ["h264.mp4", "vp9.webm", "hevc.mkv", "mpeg4.avi"]
BAD = ["broken/text.mp4", "broken/empty.mp4", "broken/truncated.mp4"]


def train_stream(argv: list[str], tmp_path: Path, name: str) -> dict:
    spec = importlib.util.spec_from_file_location("train_stream", REPO / "jobs" / "train_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary_path = tmp_path / f"{name}.json"
    assert module.main([*argv, "--json", str(summary_path)]) == 0
    return json.loads(summary_path.read_text())


def test_two_workers_share_the_videos_in_lockstep_and_resume(ray_session, media, tmp_path):
    good = [str(media[n]) for n in GOOD]
    bad = [str(media[n]) for n in BAD]
    # Errors bunched at the start: the two equal shares hold them unevenly.
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{p}\n" for p in bad + good))
    common = ["--input", str(listing), "--num-workers", "2", "--worker-cpus", "0.5",
              "--batch-size", "1", "--checkpoint-dir", str(tmp_path / "runs"),
              "--run-name", "t", *SMALL]  # fmt: skip

    first = train_stream([*common, "--epochs", "1"], tmp_path, "first")
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

    # The same run name and folder: the run continues after its last epoch.
    again = train_stream([*common, "--epochs", "2"], tmp_path, "again")
    done = workers[0]["steps"]
    for w in again["workers"]:
        assert w["resumed_at_step"] == done
        assert [e["epoch"] for e in w["epochs"]] == [1]
    assert len({w["steps"] for w in again["workers"]}) == 1


def test_epochs_need_ray_train_workers(media, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_stream", REPO / "jobs" / "train_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--input", str(media["h264.mp4"]), "--epochs", "1"]) == 2
    assert "--epochs needs --num-workers" in capsys.readouterr().err
