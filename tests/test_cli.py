"""The ``cps-ray`` command: every subcommand, --help everywhere, and errors
as one line with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cps_ray import DecodeConfig, decode_only
from cps_ray._cli import main

SMALL = ["--sequence-length", "4", "--input-size", "28", "--patch-size", "14", "--k-keep", "10"]
COMMANDS = ["info", "decode", "select", "preprocess", "demo"]


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cps-ray: error: ") and "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help_everywhere(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cps-ray {' '.join(command)}".rstrip())


def test_info_names_nvdec_and_auto(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("ray", "torchcodec", "cuda devices", "nvdec (libnvcuvid)", "auto decode backend"):
        assert key in out


def test_decode_prints_metadata_and_sampled_indices(media, capsys):
    path = str(media["h264.mp4"])
    assert main(["decode", path, "--sequence-length", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = decode_only(DecodeConfig(path, sequence_length=5))
    assert result["frame_indices"] == expected.frame_indices.tolist()
    assert result["num_frames"] == expected.num_frames
    assert result["metadata"]["codec"] == "h264"
    assert (result["metadata"]["width"], result["metadata"]["height"]) == (160, 120)
    assert result["frames_shape"] == [5, 3, 120, 160]

    assert main(["decode", path, "--sequence-length", "3", "--input-size", "28"]) == 0
    text = capsys.readouterr().out
    assert "frame indices" in text and "3x3x28x28 uint8" in text and "codec" in text


def test_select_writes_the_picture(media, tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "kept.png"
    assert main(["select", str(media["vp9.webm"]), "--png", str(png), *SMALL]) == 0
    assert "kept 10/16 patches" in capsys.readouterr().out
    with Image.open(png) as picture:
        assert picture.width > 28 * 4 and picture.height > 28


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["decode", "{missing}"], "file not found"),
        (["decode", "{text}"], "not a video"),
        (["select", "{empty}", "--png", "{tmp}/x.png", *SMALL], "empty file"),
        (["select", "{h264}", "--png", "{tmp}/no/such/dir/x.png"], "does not exist"),
        (["select", "{h264}", "--png", "{tmp}/x.png", "--k-keep", "99999"], "Invalid k_keep"),
        (["preprocess", "{tmp}/nothing", "{tmp}/out"], "does not exist"),
        (["preprocess", "{h264}", "{tmp}/out", "--address", "http://h:8265"], "dashboard"),
        (["preprocess", "{h264}", "{h264}"], "exists and is not a folder"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, message, media, tmp_path, capsys):
    names = {
        "missing": str(tmp_path / "missing.mp4"),
        "text": str(media["broken/text.mp4"]),
        "empty": str(media["broken/empty.mp4"]),
        "h264": str(media["h264.mp4"]),
        "tmp": str(tmp_path),
    }
    assert main([arg.format(**names) for arg in argv]) == 2
    assert message in _error_line(capsys)


def test_usage_errors_exit_2(capsys):
    assert main(["decode"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["select", "x.mp4"]) == 2  # --png is required
    assert "usage: cps-ray" in capsys.readouterr().err


@pytest.mark.slow(seconds=24)
def test_demo_runs_the_job_path_then_draws(ray_session, media, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("h264.mp4", "broken/text.mp4"):
        (videos / name.replace("/", "_")).write_bytes(Path(media[name]).read_bytes())
    out = tmp_path / "demo"
    argv = ["demo", "--job", "--videos", str(videos), "--out", str(out), *SMALL[:6]]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "this run: 1 ok, 1 failed" in printed and "totals: 1 ok, 1 failed" in printed
    assert json.loads((out / "shards" / "manifest.json").read_text())["ok"] == 1
    assert list(out.glob("*.png"))
    # again: the job resumes (nothing to do), the pictures are drawn again
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_console_script(media):
    script = str(Path(sys.executable).parent / "cps-ray")
    ok = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "preprocess" in ok.stdout
    bad = subprocess.run(
        [script, "decode", str(media["broken/empty.mp4"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"cps-ray: error: {media['broken/empty.mp4']}: empty file (0 bytes)"
    ]


def test_the_ray_53727_line_alone_is_dropped_from_stderr(tmp_path):
    """The filter the entry points install: every other line, a child's, and
    the traceback of an exception at exit still reach stderr."""
    script = tmp_path / "noisy.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "from cps_ray._stderr import drop_ray_53727\n"
        "drop_ray_53727()\n"
        "os.write(2, b'first line\\n')\n"
        "os.write(2, b'[E core_worker.cc:2465] Actor ... See '\n"
        "         b'https://github.com/ray-project/ray/issues/53727 for more details.\\n')\n"
        "print('a python line', file=sys.stderr)\n"
        "subprocess.run([sys.executable, '-c', \"import os; os.write(2, b'child line\\\\n')\"])\n"
        "os.write(2, b'no newline at the end')\n"
        "raise RuntimeError('boom at exit')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 1
    for line in ("first line", "a python line", "child line", "no newline at the end",
                 "RuntimeError: boom at exit"):  # fmt: skip
        assert line in done.stderr
    assert "issues/53727" not in done.stderr
    kept = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CPS_RAY_KEEP_RAY_LOG": "1"})  # fmt: skip
    assert "issues/53727" in kept.stderr
