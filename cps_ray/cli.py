"""The ``cps-ray`` command: ``cps-ray demo`` and ``cps-ray info``.

Thin by design: parse, build a config, call into the package. An error
cps_ray raises on purpose (:class:`~cps_ray.CpsRayError`) prints one line,
``cps-ray: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence

from .errors import CpsRayError

PROG = "cps-ray"
DEMO_SEQUENCE_LENGTH = 8
DEMO_KEEP_FRACTION = 0.25


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Videos to fixed-budget patch tokens (codec-like patch energy, top-k).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="select patches of a few videos, print a table, draw one PNG per video",
        description=(
            "Run local_stream over sample videos (made with ffmpeg) or a folder of "
            "your own, print what was kept and the decode/select seconds per video, "
            "and write one PNG per video: kept patches bright, dropped ones dimmed."
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
    demo.add_argument(
        "--sequence-length", type=_positive_int, default=DEMO_SEQUENCE_LENGTH, metavar="T",
        help=f"frames sampled per video ({DEMO_SEQUENCE_LENGTH})",
    )  # fmt: skip
    demo.add_argument(
        "--input-size", type=_positive_int, default=224, metavar="S",
        help="frames are resized and center-cropped to S x S (224)",
    )  # fmt: skip
    demo.add_argument(
        "--patch-size", type=_positive_int, default=14, metavar="P",
        help="patch side in pixels; must divide S (14)",
    )  # fmt: skip
    demo.add_argument(
        "--k-keep", type=_positive_int, default=None, metavar="K",
        help=f"patches kept per video (default: {DEMO_KEEP_FRACTION * 100:g}%% of T * (S/P)**2)",
    )  # fmt: skip
    demo.add_argument(
        "--workers", type=_positive_int, default=None, metavar="N",
        help="videos processed at once (default: the CPU cores)",
    )  # fmt: skip

    commands.add_parser(
        "info",
        help="print versions, FFmpeg, CUDA devices and what 'auto' resolves to",
        description="Print the versions cps_ray runs with and what this node offers.",
    )
    return parser


def _default_k_keep(sequence_length: int, input_size: int, patch_size: int) -> int:
    grid = input_size // patch_size
    return max(1, round(DEMO_KEEP_FRACTION * sequence_length * grid * grid))


def _run_demo(args: argparse.Namespace) -> int:
    from .config import PatchStreamConfig
    from .demo import run_demo

    k_keep = args.k_keep
    if k_keep is None:
        k_keep = _default_k_keep(args.sequence_length, args.input_size, args.patch_size)
    config = PatchStreamConfig(
        sequence_length=args.sequence_length,
        input_size=args.input_size,
        patch_size=args.patch_size,
        k_keep=k_keep,
        output_dtype="fp32",
    )
    return run_demo(args.videos, args.out, args.cache, config, args.workers)


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


def _run_info() -> int:
    from . import __version__, devices
    from .config import resolve_decode_backend

    rows = [("cps_ray", __version__)]
    rows += [(name, _module_version(name)) for name in ("torch", "torchcodec", "numba", "numpy")]
    rows.append(("ray", _module_version("ray")))
    rows += _ffmpeg_versions()
    rows.append(("cuda devices", str(devices.cuda_device_count())))
    rows.append(("auto decode backend", resolve_decode_backend("auto", 0)))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cps-ray``; returns the exit status (``--help`` and
    usage errors included: 0 and 2, as argparse reports them)."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    try:
        if args.command == "demo":
            return _run_demo(args)
        return _run_info()
    except CpsRayError as err:
        message = " ".join(str(err).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
