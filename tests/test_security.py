"""Paths are data: no shell ever sees one, FFmpeg never reads one as a
protocol, and nothing is written outside the output a job was given."""

from __future__ import annotations

import ast
import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cps_ray import OutputPathError, PatchStreamConfig, local_stream, write_shards
from cps_ray._store import OutputRoot, read_errors, read_output
from cps_ray.errors import printable_path
from cps_ray.jobs import find_inputs, preprocess_main
from cps_ray.pipeline._inputs import input_paths as resolve_inputs

REPO = Path(__file__).resolve().parents[1]
CFG = PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=4)
MARKER = "MARKER"
# Names a shell would act on. None exists: each must be an error row naming it.
MISSING = [
    f"$(touch {MARKER}).mp4",
    f"`touch {MARKER}`.mp4",
    f"x.mp4; touch {MARKER}",
    f"x.mp4 | touch {MARKER}",
    f"x.mp4 && touch {MARKER} #",
    "../outside.mp4",
    "-i",
    "pipe:0",
]
# Files that do exist under such names: each must decode.
REAL = ["-i.mp4", f"v $(touch {MARKER}) `touch {MARKER}`; | & > <.mp4"]
# Only a CSV or Parquet manifest can hold a newline in a path.
MISSING_MULTILINE = [f"new\nline $(touch {MARKER}).mp4", 'a,b "q".mp4']
REAL_MULTILINE = ["two\nlines.mp4"]

SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
SHELL_CALLS = {
    "os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell", "pty.spawn",
}  # fmt: skip


def _shell_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        where = f"line {node.lineno}: {ast.unparse(node)[:80]}"
        if name in SHELL_CALLS:
            found.append(where)
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(where)
        last = name.rsplit(".", 1)[-1]
        if last in SUBPROCESS_CALLS and "subprocess" in name and node.args:
            if _is_string(node.args[0]):
                found.append(where)  # a command line as one string
    return found


def _is_string(node: ast.AST) -> bool:
    """A str literal, an f-string, or a str built with + or % from one."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_string(node.left) or _is_string(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("format", "join") and _is_string(node.func.value)
    return False


def test_no_shell_anywhere_in_the_code():
    """Every process is started from an argument list: no shell, no string commands."""
    sources = [
        p for d in ("cps_ray", "jobs", "benchmark", "tests") for p in (REPO / d).rglob("*.py")
    ]
    assert len(sources) > 20
    found = {
        str(p.relative_to(REPO)): uses
        for p in sources
        if (uses := _shell_uses(ast.parse(p.read_text(), str(p))))
    }
    assert found == {}
    # the scan does see what it looks for
    bad = (
        "os.system('x')\nsubprocess.run(f'ls {d}', shell=True)\n"
        "subprocess.Popen('ls ' + d)\nsubprocess.check_output(' '.join(argv))\n"
        "subprocess.run(['ls'] + paths)\nsubprocess.run(['ls', d], shell=False)\n"
    )
    assert len(_shell_uses(ast.parse(bad))) == 5


def _write_manifests(folder: Path) -> tuple[Path, Path, Path]:
    txt = folder / "list.txt"
    txt.write_text("".join(f"{name}\n" for name in MISSING + REAL))
    rows = MISSING + REAL + MISSING_MULTILINE + REAL_MULTILINE
    with open(folder / "list.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "note"])
        writer.writerows([name, "x"] for name in rows)
    parquet = folder / "list.parquet"
    pq.write_table(pa.table({"path": rows}), parquet)
    return txt, folder / "list.csv", parquet


def test_manifest_paths_with_shell_metacharacters_are_data(media, tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in REAL + REAL_MULTILINE:
        shutil.copy(media["h264.mp4"], lists / name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # where a shell would run `touch MARKER`
    txt, csv_path, parquet = _write_manifests(lists)

    expected = {str(lists / n): None for n in REAL + REAL_MULTILINE}
    expected.update({str(lists / n): "error" for n in MISSING + MISSING_MULTILINE})
    paths = []
    for manifest, count in ((txt, 10), (csv_path, 13), (parquet, 13)):
        found = find_inputs(manifest)
        assert found == resolve_inputs(manifest) and len(found) == count
        assert set(found) <= set(expected)
        paths += found
    assert "\n" in "".join(paths) and any("$(touch" in p for p in paths)

    rows = list(local_stream(paths, CFG, num_workers=1))
    assert [row["path"] for row in rows] == paths
    for row in rows:
        if expected[row["path"]] is None:
            assert row["error"] is None, row["error"]
            assert np.asarray(row["patches"]).shape == (4, 3, 14, 14)
        else:
            # one line, naming the path (control characters escaped)
            assert row["error"].startswith(printable_path(row["path"]) + ": ")
            assert "file not found" in row["error"] and "\n" not in row["error"]
    assert not list(tmp_path.rglob(f"*{MARKER}")) and not (REPO / MARKER).exists()


def test_local_names_are_never_ffmpeg_protocols(media, tmp_path, monkeypatch):
    """A relative ``file:b.mp4`` is that file, not ``b.mp4``; ``pipe:0`` is
    not stdin; ``concat:a|b`` is not two other files."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(media["vp9.webm"], tmp_path / "file:b.mp4")
    shutil.copy(media["h264.mp4"], tmp_path / "b.mp4")
    names = ["file:b.mp4", "pipe:0", "concat:b.mp4|b.mp4", "-i", "b.mp4"]
    paths = resolve_inputs(names)
    assert paths == ["./file:b.mp4", "./pipe:0", "./concat:b.mp4|b.mp4", "-i", "b.mp4"]
    assert resolve_inputs(["s3://bucket/x.mp4", "/abs/file:x.mp4"]) == [
        "s3://bucket/x.mp4",
        "/abs/file:x.mp4",
    ]
    rows = dict(
        (row["path"], row)
        for row in local_stream(paths + [str(tmp_path / "file:b.mp4")], CFG, num_workers=1)
    )
    assert rows["./file:b.mp4"]["error"] is None
    same = rows[str(tmp_path / "file:b.mp4")]
    assert np.array_equal(rows["./file:b.mp4"]["patches"], same["patches"])
    assert not np.array_equal(rows["./file:b.mp4"]["patches"], rows["b.mp4"]["patches"])
    for name in ("./pipe:0", "./concat:b.mp4|b.mp4", "-i"):
        assert "file not found" in rows[name]["error"] and name in rows[name]["error"]


# --- nothing is written outside the output ---------------------------------------------------


def _rows():
    """Three rows as the pipeline makes them, one of them failed."""
    import ray

    return ray.data.from_items([
        {"path": "/v/a.mp4", "error": None, "error_kind": None},
        {"path": "/v/b.mp4", "error": "/v/b.mp4: broken", "error_kind": "corrupt"},
        {"path": "/v/c.mp4", "error": None, "error_kind": None},
    ], override_num_blocks=3)  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "shards/../../x", "", "a//b", "./x", "shards/./x", "a\\..\\b", "x\0"],
)
def test_output_names_stay_inside(tmp_path, name):
    with pytest.raises(OutputPathError, match="refusing"):
        OutputRoot(tmp_path).path(name)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("link", ["shards", "manifest.json", "errors.parquet"])
def test_a_symlink_out_of_the_output_is_refused(ray_session, tmp_path, media, capsys, link):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere if link == "shards" else elsewhere / link
    if link != "shards":
        target.write_bytes(b"precious")
    (out / link).symlink_to(target)
    dangling = tmp_path / "dangling"
    (dangling / "out").mkdir(parents=True)
    (dangling / "out" / link).symlink_to(tmp_path / "nowhere" / link)

    for output in (out, dangling / "out", f"file://{out}"):
        for resume in (False, True):
            with pytest.raises(OutputPathError, match=f"refusing '{link}.*outside the output"):
                write_shards(_rows(), output, rows_per_shard=1, resume=resume)
        with pytest.raises(OutputPathError):
            read_output(output)
    assert _tree(elsewhere) == ([] if link == "shards" else [link])
    assert link == "shards" or target.read_bytes() == b"precious"
    assert not (tmp_path / "nowhere").exists()

    # The job refuses it before it starts Ray, in one line.
    args = ["--input", str(media["h264.mp4"]), "--output", str(out)]
    assert preprocess_main(args + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside the output folder" in err[0]


def test_symlinks_that_stay_inside_the_output_are_followed(ray_session, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "out"
    out.symlink_to(real)  # OUT itself may be a link: the user chose it
    (real / "parts").mkdir()
    (real / "shards").symlink_to(real / "parts")
    manifest = write_shards(_rows(), out, rows_per_shard=1)
    assert [s["rows"] for s in manifest["shards"]] == [1, 1]
    assert _tree(real / "parts") == sorted(s["file"][len("shards/") :] for s in manifest["shards"])
    assert [p for p, _, _ in read_errors(out)] == ["/v/b.mp4"]
    assert read_output(out).error_rows == 1
