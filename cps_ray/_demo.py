"""The ``cps-ray demo``: run :func:`~cps_ray.local_stream` over a few videos
(or, with ``--job``, read the rows the job wrote), print what each kept and
how long it took, and draw one PNG per video.

The rows say what was kept. To time the two stages and
to draw the pictures, each video is decoded once more with
:func:`~cps_ray.decode_only` (timed as *decode*) and its frames are selected
again with :func:`~cps_ray.select_patches` (timed as *select*); that
re-selection must agree with the row, and a disagreement is reported.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._api import decode_only
from ._config import DecodeConfig, PatchStreamConfig
from ._kernels.reference import motion_to_warp, patch_energies
from ._media import DEFAULT_CACHE_DIR, VideoFolderError, find_videos, make_sample_videos
from ._select import select_video
from .errors import CpsRayError, MissingDependencyError
from .pipeline import local_stream

TILES_PER_ROW = 4
DIM_FACTOR = 0.25  # brightness of dropped patches
TILE_GAP = 6  # pixels between frames in the picture
TITLE_HEIGHT = 30
CAPTION_HEIGHT = 16  # strip above each frame, so captions hide no patch


@dataclass(frozen=True)
class VideoSummary:
    """One line of the demo table. Seconds are wall time; ``energy_share``
    is in [0, 1] or ``None`` when the video has no energy at all."""

    name: str
    num_frames: int = 0
    kept: int = 0
    total: int = 0
    energy_share: float | None = None
    decode_seconds: float = 0.0
    select_seconds: float = 0.0
    png_path: str | None = None
    error: str | None = None


def _require_pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise MissingDependencyError("pillow", "cps-ray demo (its PNG pictures)", "demo") from None
    return Image, ImageDraw, ImageFont


def _sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so wall times include it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _kept_mask(meta_fields: np.ndarray, num_frames: int, grid_size: int) -> np.ndarray:
    """bool ``[T, G, G]``: True where ``meta_fields`` (int32 ``[k, 3]`` = t, r, c) kept a patch."""
    mask = np.zeros((num_frames, grid_size, grid_size), dtype=bool)
    t, r, c = np.asarray(meta_fields, dtype=np.int64).T
    mask[t, r, c] = True
    return mask


def render_picture(
    frames: np.ndarray,
    mask: np.ndarray,
    patch_size: int,
    title: str,
    captions: list[str],
    out_path: str,
) -> None:
    """Write a PNG grid of ``frames`` (uint8 ``[T, 3, S, S]``), kept patches
    (bool ``mask [T, G, G]``) at full brightness, dropped ones dimmed."""
    Image, ImageDraw, ImageFont = _require_pillow()
    num_frames, _, size, _ = frames.shape
    pixel_mask = mask.repeat(patch_size, axis=1).repeat(patch_size, axis=2)[..., None]
    rgb = frames.transpose(0, 2, 3, 1).astype(np.float32)  # [T, S, S, 3]
    shown = np.where(pixel_mask, rgb, rgb * DIM_FACTOR).round().astype(np.uint8)

    cols = min(TILES_PER_ROW, num_frames)
    rows = -(-num_frames // cols)
    width = cols * size + (cols + 1) * TILE_GAP
    cell_height = CAPTION_HEIGHT + size + TILE_GAP
    height = TITLE_HEIGHT + rows * cell_height
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    try:
        title_font = ImageFont.load_default(size=15)
        caption_font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 only has its fixed bitmap font
        title_font = caption_font = ImageFont.load_default()
    draw.text((TILE_GAP, 7), title, fill=(235, 235, 235), font=title_font)
    for t in range(num_frames):
        x = TILE_GAP + (t % cols) * (size + TILE_GAP)
        y = TITLE_HEIGHT + (t // cols) * cell_height
        draw.text((x + 1, y + 1), captions[t], fill=(200, 200, 200), font=caption_font)
        canvas.paste(Image.fromarray(shown[t]), (x, y + CAPTION_HEIGHT))
    canvas.save(out_path)


def describe_motion(affine: np.ndarray) -> str:
    """A frame's camera motion in a caption: the shift (pixels) and the scale
    of ``affine`` (float ``[2, 3]``, frame t's pixel -> frame t - 1)."""
    linear = affine[:, :2].astype(np.float64)
    if np.allclose(affine, [[1, 0, 0], [0, 1, 0]]):
        return "still"
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    return f"shift {affine[0, 2]:+.1f},{affine[1, 2]:+.1f}  x{scale:.3f}"


def summarize_video(
    row: dict[str, Any],
    name: str,
    config: PatchStreamConfig,
    png_path: str,
) -> VideoSummary:
    """Time decode and select for one successful row, draw its picture."""
    path = row["path"]
    decode_cfg = DecodeConfig(**{**config.decode_fields(), "video_path": path})
    start = time.perf_counter()
    decoded = decode_only(decode_cfg)
    _sync(decoded.frames.device)
    decode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    _, fields, _, motion = select_video(decoded.frames, config, path, row["process_backend"])
    _sync(fields.device)
    select_seconds = time.perf_counter() - start

    frames = decoded.frames.cpu().numpy()
    kept_fields = np.asarray(row["meta_fields"])
    if not np.array_equal(fields.cpu().numpy(), kept_fields):
        raise CpsRayError(
            f"{path}: re-decoding selected other patches than its row holds; "
            "decoding is not deterministic for this file"
        )
    grid = config.grid_size
    num_frames = frames.shape[0]
    motion = motion.cpu().numpy()
    energies = patch_energies(frames, config.patch_size, motion_to_warp(motion))
    flat = kept_fields[:, 0] * grid * grid + kept_fields[:, 1] * grid + kept_fields[:, 2]
    total_energy = int(energies.sum())
    share = int(energies[flat].sum()) / total_energy if total_energy > 0 else None

    share_text = "n/a" if share is None else f"{100 * share:.1f}%"
    title = (
        f"{name}  |  kept {len(flat)}/{energies.size} patches ({share_text} of energy)  |  "
        f"T={num_frames} S={config.input_size} p={config.patch_size}"
    )
    captions = [
        f"t={t}  frame {int(i)}  {float(s):.2f}s  {describe_motion(m) if t else 'vs grey'}"
        for t, (i, s, m) in enumerate(
            zip(row["frame_indices"], row["timestamps"], motion, strict=True)
        )
    ]
    render_picture(
        frames,
        _kept_mask(kept_fields, num_frames, grid),
        config.patch_size,
        title,
        captions,
        png_path,
    )
    return VideoSummary(
        name=name,
        num_frames=num_frames,
        kept=len(flat),
        total=int(energies.size),
        energy_share=share,
        decode_seconds=decode_seconds,
        select_seconds=select_seconds,
        png_path=png_path,
    )


def _warm_up(rows: list[dict[str, Any]], config: PatchStreamConfig) -> None:
    """Decode and select the first good video once, untimed: the first call
    in this process loads the decoder and the selection kernel, which the
    table's seconds would otherwise charge to that video."""
    for row in rows:
        if row["error"] is None:
            decode_cfg = DecodeConfig(**{**config.decode_fields(), "video_path": row["path"]})
            with contextlib.suppress(CpsRayError):  # its own line of the table says why
                decoded = decode_only(decode_cfg)
                select_video(decoded.frames, config, row["path"], row["process_backend"])
            return


def _job_rows(output: str, paths: list[str]) -> list[dict[str, Any]]:
    """The rows of ``paths`` in a job's ``output`` (its shards, less the
    patches, and its errors table), in the order of ``paths``."""
    import pyarrow.parquet as pq

    from ._store import OutputRoot, iter_errors, read_output

    wanted = {os.path.abspath(p): p for p in paths}  # the job's rows name absolute paths
    output = OutputRoot(output)
    written = read_output(output)
    found: dict[str, dict[str, Any]] = {}
    columns = ["path", "frame_indices", "timestamps", "meta_fields", "meta_scores",
               "decode_backend", "process_backend", "error"]  # fmt: skip
    for shard in written.shards:
        with output.fs.open_input_file(output.path(shard["file"])) as f:
            for row in pq.read_table(f, columns=columns).to_pylist():
                if row["path"] in wanted:
                    found[wanted[row["path"]]] = {**row, "path": wanted[row["path"]]}
    for path, reason, _ in iter_errors(output, written):
        if path in wanted and wanted[path] not in found:
            found[wanted[path]] = {"path": wanted[path], "error": reason,
                                   "decode_backend": None, "process_backend": None}  # fmt: skip
    missing = [p for p in paths if p not in found]
    if missing:
        raise CpsRayError(f"the job's output {output.given!r} holds no row for {missing[0]!r}")
    return [found[p] for p in paths]


def _png_name(name: str, used: set[str]) -> str:
    stem = Path(name).with_suffix("").as_posix().replace("/", "__")
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate + ".png"


def _format_line(s: VideoSummary, width: int) -> str:
    if s.error is not None:
        return f"{s.name:<{width}}  FAILED: {s.error}"
    share = "n/a" if s.energy_share is None else f"{100 * s.energy_share:.1f}%"
    kept = f"{s.kept}/{s.total}"
    return (
        f"{s.name:<{width}}  {s.num_frames:>3}  {kept:>11}  {share:>8}  "
        f"{s.decode_seconds:>8.3f}  {s.select_seconds:>8.4f}  {s.png_path}"
    )


def run_demo(
    videos: str | None,
    out_dir: str,
    cache_dir: str | None,
    config: PatchStreamConfig,
    num_workers: int | None = None,
    job_output: str | None = None,
) -> int:
    """Run the demo; return the exit code (0 if any video succeeded or there
    were none, 1 if every video failed).

    Args:
        videos: a folder searched recursively for videos, or ``None`` to make
            the sample videos in ``cache_dir``.
        out_dir: where the PNGs go (created).
        cache_dir: sample-video cache; ``None`` means ``.cache/demo_videos``
            under the current directory.
        config: a :class:`PatchStreamConfig` with ``video_path=None``.
        num_workers: ``local_stream`` threads; ``None`` uses the cores.
        job_output: an output a preprocess job wrote for these videos (with
            ``config``): their rows are read from it, not computed again.
    """
    _require_pillow()  # fail before any work, not at the first picture
    if videos is None:
        root = cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR
        paths = make_sample_videos(root)
    else:
        root = videos
        paths = find_videos(videos)
        if not paths:
            raise VideoFolderError(f"no video files found under {videos!r}")
    os.makedirs(out_dir, exist_ok=True)

    # The bar and the table would interleave on a terminal: stream first, then report.
    if job_output is not None:
        rows = _job_rows(job_output, paths)
    else:
        rows = []
        for row in local_stream(paths, config, num_workers=num_workers, progress=True):
            row = {key: value for key, value in row.items() if key != "patches"}
            rows.append(row)

    names = [os.path.relpath(row["path"], root) for row in rows]
    _warm_up(rows, config)
    used: set[str] = set()
    summaries = []
    for row, name in zip(rows, names, strict=True):
        if row["error"] is not None:
            summaries.append(VideoSummary(name=name, error=row["error"]))
            continue
        png_path = os.path.join(out_dir, _png_name(name, used))
        try:
            summaries.append(summarize_video(row, name, config, png_path))
        except CpsRayError as err:
            summaries.append(VideoSummary(name=name, error=" ".join(str(err).split())))

    backends = {(row["decode_backend"], row["process_backend"]) for row in rows if not row["error"]}
    print(
        "backends (decode -> process): "
        + ", ".join(f"{d} -> {p}" for d, p in sorted(backends, key=str))
    )
    width = max([len("video")] + [len(n) for n in names])
    header = (
        f"{'video':<{width}}  {'T':>3}  {'kept/total':>11}  {'energy':>8}  "
        f"{'decode s':>8}  {'select s':>8}  picture"
    )
    print(header)
    print("-" * len(header))
    for summary in summaries:
        print(_format_line(summary, width))
    ok = [s for s in summaries if s.error is None]
    failed = len(summaries) - len(ok)
    mean_decode = sum(s.decode_seconds for s in ok) / len(ok) if ok else 0.0
    mean_select = sum(s.select_seconds for s in ok) / len(ok) if ok else 0.0
    print(
        f"totals: {len(ok)} ok, {failed} failed; "
        f"mean decode {mean_decode:.3f} s, mean select {mean_select:.4f} s"
    )
    return 0 if ok or not summaries else 1
