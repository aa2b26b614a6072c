"""The ``cps-ray`` command: ``info``, ``decode``, ``select``, ``preprocess``
and ``demo``.

Thin by design: parse, build a config, call into the package. An error
cps_ray raises on purpose (:class:`~cps_ray.CpsRayError`), a file it cannot
write and a cluster it cannot reach print one line, ``cps-ray: error: ...``,
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from ._config import BACKENDS, UNIFORM_STRATEGIES
from .errors import CpsRayError
from .jobs._options import (
    add_config_options,
    add_preprocess_options,
    config_from_args,
    positive_int,
)

PROG = "cps-ray"
DEMO_SEQUENCE_LENGTH = 8
DEMO_KEEP_FRACTION = 0.25
DECODE_SEQUENCE_LENGTH = 16


def _add_picture_config_options(parser: argparse.ArgumentParser) -> None:
    """The config flags of ``demo`` and ``select``: the job's, with the
    demo's defaults (T=8, fp32, k_keep a share of all patches)."""
    add_config_options(
        parser, sequence_length=DEMO_SEQUENCE_LENGTH, k_keep=None, output_dtype="fp32"
    )
    for action in parser._actions:
        if action.dest == "k_keep":
            action.help = f"patches kept (default: {DEMO_KEEP_FRACTION * 100:g}%% of T * (S/P)**2)"


def _add_demo_parser(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="select patches of a few videos, print a table, draw one PNG per video",
        description=(
            "Run local_stream over sample videos (made with ffmpeg) or a folder of "
            "your own, print what was kept and the decode/select seconds per video, "
            "and write one PNG per video: kept patches bright, dropped ones dimmed. "
            "With --job, first run the preprocessing job on them (a local Ray, "
            "shards in OUT/shards), as jobs/preprocess.py does."
        ),
    )
    demo.add_argument(
        "--videos", metavar="DIR", help="folder searched recursively for videos "
        "(default: make sample videos in the cache folder)",
    )  # fmt: skip
    demo.add_argument("--out", metavar="DIR", default="demo_out", help="PNG folder (demo_out)")
    demo.add_argument(
        "--cache", metavar="DIR", default=None,
        help="sample-video cache folder (.cache/demo_videos)",
    )  # fmt: skip
    _add_picture_config_options(demo)
    demo.add_argument(
        "--workers", type=positive_int, default=None, metavar="N",
        help="videos processed at once (default: the CPU cores)",
    )  # fmt: skip
    demo.add_argument(
        "--job", action="store_true",
        help="first preprocess the videos into OUT/shards with the job's code on a "
        "local Ray (resumes what an earlier --job run wrote)",
    )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Videos to fixed-budget patch tokens (codec-like patch energy, top-k).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "info",
        help="print versions, FFmpeg, CUDA, NVDEC and what 'auto' resolves to",
        description="Print the versions cps_ray runs with and what this node offers.",
    )

    decode = commands.add_parser(
        "decode",
        help="print a video's metadata and the frames that would be sampled",
        description="Decode the uniformly sampled frames of VIDEO (decode_only) and print "
        "the video's metadata, the frame indices and timestamps, and how they were found.",
    )
    decode.add_argument("video", metavar="VIDEO", help="a video file")
    decode.add_argument(
        "--sequence-length", type=positive_int, default=DECODE_SEQUENCE_LENGTH, metavar="T",
        help=f"frames sampled uniformly ({DECODE_SEQUENCE_LENGTH})",
    )  # fmt: skip
    decode.add_argument(
        "--input-size", type=positive_int, default=None, metavar="S",
        help="resize and center-crop to S x S (default: native size)",
    )  # fmt: skip
    decode.add_argument("--uniform-strategy", choices=UNIFORM_STRATEGIES, default="auto",
                        help="which frames (auto)")  # fmt: skip
    decode.add_argument("--decode-backend", choices=BACKENDS, default="auto",
                        help="cpu (FFmpeg) or gpu (NVDEC) (auto)")  # fmt: skip
    decode.add_argument("--json", action="store_true", help="print one JSON object")

    select = commands.add_parser(
        "select",
        help="select the patches of one video and draw them in a PNG",
        description="Select the kept patches of VIDEO and write a picture: the sampled "
        "frames in a grid, kept patches bright, dropped ones dimmed.",
    )
    select.add_argument("video", metavar="VIDEO", help="a video file")
    select.add_argument("--png", required=True, metavar="FILE", help="the picture to write")
    _add_picture_config_options(select)

    preprocess = commands.add_parser(
        "preprocess",
        help="videos -> Parquet shards, errors table, manifest (local Ray or --address)",
        description="The preprocessing job of jobs/preprocess.py: on a local Ray, or on the "
        "cluster of --address. A video that fails goes to the errors table.",
    )
    add_preprocess_options(preprocess, positional=True)

    _add_demo_parser(commands)
    return parser


def _default_k_keep(sequence_length: int, input_size: int, patch_size: int) -> int:
    grid = input_size // patch_size
    return max(1, round(DEMO_KEEP_FRACTION * sequence_length * grid * grid))


def _picture_config(args: argparse.Namespace):
    """The config of ``demo`` and ``select`` (see _add_picture_config_options)."""
    k_keep = args.k_keep
    if k_keep is None:
        k_keep = _default_k_keep(args.sequence_length, args.input_size, args.patch_size)
    return config_from_args(args, k_keep=k_keep)


def _run_demo(args: argparse.Namespace) -> int:
    config = _picture_config(args)
    shards = None
    if args.job:
        # The job's driver needs neither torch nor the decoders: the pictures'
        # imports (torch, torchcodec, about 2 s here) come after it.
        from ._media import DEFAULT_CACHE_DIR, make_sample_videos
        from .jobs import run_preprocess, summarize_preprocess

        videos = args.videos
        if videos is None:
            videos = args.cache if args.cache is not None else DEFAULT_CACHE_DIR
            make_sample_videos(videos)
        shards = os.path.join(args.out, "shards")
        manifest = run_preprocess(videos, shards, config, resume=True)
        print(summarize_preprocess(manifest, os.path.abspath(shards)))
    from ._demo import run_demo

    # With --job, the pictures are drawn from the rows the job wrote.
    return run_demo(args.videos, args.out, args.cache, config, args.workers, shards)


def _module_version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def _ffmpeg_versions() -> list[tuple[str, str]]:
    """FFmpeg as torchcodec loaded it, and the ``ffmpeg`` command on PATH."""
    lines = []
    try:
        from torchcodec._core import get_ffmpeg_library_versions

        libs = get_ffmpeg_library_versions()
        libs_text = ", ".join(
            f"{key} {'.'.join(map(str, value))}"
            for key, value in libs.items()
            if key != "ffmpeg_version"
        )
        lines.append(("ffmpeg (torchcodec)", f"{libs.get('ffmpeg_version', '?')} ({libs_text})"))
    except Exception as err:  # a private torchcodec API: report, never crash `info`
        lines.append(("ffmpeg (torchcodec)", f"unavailable ({type(err).__name__}: {err})"))
    binary = shutil.which("ffmpeg")
    if binary is None:
        lines.append(("ffmpeg (command)", "not found on PATH"))
    else:
        proc = subprocess.run(
            [binary, "-hide_banner", "-version"], capture_output=True, text=True, check=False
        )
        first = proc.stdout.splitlines()[0] if proc.stdout else f"exit status {proc.returncode}"
        lines.append(("ffmpeg (command)", f"{first} [{binary}]"))
    return lines


def nvdec_library() -> str | None:
    """The NVIDIA driver's video-decode library (``libnvcuvid``) the dynamic
    loader finds, or ``None``. NVDEC decoding also needs a CUDA device and a
    CUDA build of torchcodec."""
    import ctypes.util

    return ctypes.util.find_library("nvcuvid")


def _run_info() -> int:
    from . import __version__
    from . import _devices as devices
    from ._config import resolve_decode, resolve_process_backend

    rows = [("cps_ray", __version__)]
    rows += [(name, _module_version(name)) for name in ("torch", "torchcodec", "numba", "numpy")]
    rows.append(("ray", _module_version("ray")))
    rows += _ffmpeg_versions()
    rows.append(("cuda devices", str(devices.cuda_device_count())))
    library = nvdec_library()
    rows.append(("nvdec (libnvcuvid)", library or "not found (no NVIDIA video decoder)"))
    decode, fallback = resolve_decode("auto", 0)
    rows.append(("auto decode backend", decode + (f" ({fallback})" if fallback else "")))
    rows.append(("auto process backend", resolve_process_backend("auto", 0, decode)))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _video_metadata(path: str, stream_index: int) -> dict:
    """Facts of the decoded stream from torchcodec (empty if it cannot say)."""
    try:
        from torchcodec.decoders import VideoDecoder

        md = VideoDecoder(path, seek_mode="approximate", stream_index=stream_index).metadata
    except Exception:  # decode_only already opened the file; this is extra detail
        return {}
    names = ("codec", "width", "height", "average_fps", "duration_seconds", "num_frames")
    return {name: getattr(md, name, None) for name in names}


def _run_decode(args: argparse.Namespace) -> int:
    from ._api import decode_only
    from ._config import DecodeConfig

    config = DecodeConfig(
        video_path=args.video,
        sequence_length=args.sequence_length,
        input_size=args.input_size,
        uniform_strategy=args.uniform_strategy,
        decode_backend=args.decode_backend,
    )
    out = decode_only(config)
    result = {
        "path": os.path.abspath(args.video),
        "metadata": _video_metadata(args.video, out.stream_index),
        "stream_index": out.stream_index,
        "num_frames": out.num_frames,
        "route": out.route,
        "decode_backend": out.decode_backend,
        "device_fallback": out.device_fallback,
        "frames_shape": list(out.frames.shape),
        "frame_indices": out.frame_indices.tolist(),
        "timestamps": [round(t, 6) for t in out.timestamps.tolist()],
        "decode_seconds": round(out.decode_seconds, 4),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    md = result["metadata"]
    facts = [
        ("path", result["path"]),
        ("video stream", out.stream_index),
        ("codec", md.get("codec")),
        ("size", f"{md['width']}x{md['height']}" if md.get("width") else None),
        ("fps (average)", f"{md['average_fps']:.3f}" if md.get("average_fps") else None),
        ("duration", f"{md['duration_seconds']:.3f} s" if md.get("duration_seconds") else None),
        ("frames (header)", md.get("num_frames")),
        ("frames (counted)", f"{out.num_frames} (route: {out.route})"),
        ("decode backend", out.decode_backend + (f" (fell back: {out.device_fallback})"
                                                 if out.device_fallback else "")),
        ("sampled frames", "x".join(map(str, result["frames_shape"])) + " uint8"),
        ("frame indices", " ".join(map(str, result["frame_indices"]))),
        ("timestamps (s)", " ".join(f"{t:.3f}" for t in result["timestamps"])),
        ("decode seconds", f"{out.decode_seconds:.3f}"),
    ]  # fmt: skip
    width = max(len(key) for key, _ in facts)
    for key, value in facts:
        print(f"{key:<{width}}  {'unknown' if value is None else value}")
    return 0


def _run_select(args: argparse.Namespace) -> int:
    from ._demo import _require_pillow, summarize_video
    from .pipeline import local_stream

    _require_pillow()  # fail before decoding
    config = _picture_config(args)
    folder = os.path.dirname(os.path.abspath(args.png))
    if not os.path.isdir(folder):
        raise CpsRayError(f"cannot write {args.png!r}: folder {folder!r} does not exist")
    (row,) = local_stream([args.video], config, num_workers=1)
    if row["error"] is not None:
        raise CpsRayError(row["error"])
    name = os.path.basename(args.video)
    summary = summarize_video(row, name, config, args.png)
    share = "n/a" if summary.energy_share is None else f"{100 * summary.energy_share:.1f}%"
    print(
        f"{name}: kept {summary.kept}/{summary.total} patches ({share} of the energy), "
        f"T={summary.num_frames} S={config.input_size} p={config.patch_size}, "
        f"backends {row['decode_backend']} -> {row['process_backend']}; picture: {args.png}"
    )
    return 0


def _run_preprocess(args: argparse.Namespace) -> int:
    from .jobs._preprocess import preprocess_from_args

    preprocess_from_args(args)
    return 0


COMMANDS = {
    "info": lambda args: _run_info(),
    "decode": _run_decode,
    "select": _run_select,
    "preprocess": _run_preprocess,
    "demo": _run_demo,
}


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.strerror}: {err.filename!r}"
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cps-ray``; returns the exit status (``--help`` and
    usage errors included: 0 and 2, as argparse reports them)."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    try:
        return COMMANDS[args.command](args)
    except (CpsRayError, OSError) as err:  # OSError: files, and clusters out of reach
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def console_main() -> int:
    """The ``cps-ray`` console script: :func:`main`, with Ray's ray#53727
    line dropped from stderr (see :mod:`cps_ray._stderr`)."""
    from ._stderr import drop_ray_53727

    drop_ray_53727()
    return main()


if __name__ == "__main__":
    raise SystemExit(console_main())
