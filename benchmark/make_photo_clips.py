"""Clips of real photographs under motion, for the selection-quality benchmark.

    python benchmark/make_photo_clips.py OUT_DIR [--seconds 3] [--force] [--held-out]

Nothing is downloaded: the photographs are the ones scikit-image and
matplotlib ship inside their wheels (an astronaut, a cat, coffee, a rocket, a
motorcycle, the Hubble deep field, Grace Hopper, a cameraman, grass, brick),
and the one real video clip scikit-image ships (``no_time_for_that_tiny.gif``).
Each photograph becomes three H.264 clips (libx264 defaults, CRF 18, 25 fps,
480x360) with the motions real footage has:

- ``zoom``: a slow push in (global scaling motion);
- ``pan``: the camera sweeping sideways across a wider view (global translation);
- ``local``: a still scene where one region of the photo moves across it
  (local motion over a static background, the common case).

``--held-out`` makes the same three clips of eleven other photographs in
scikit-image (gravel, coins, the moon, two retinas, a stained tissue, the
motorcycle's right view, a scanned page, cells, a blurred clock, text), and
no real clip: a second set, to check figures tuned on the first.

Install the photographs with ``pip install scikit-image matplotlib`` (both are
in the ``bench`` extra). A clip that exists is kept; ``--force`` remakes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

WIDTH, HEIGHT, RATE = 480, 360, 25

SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "camera.png", "grass.png", "brick.png",
)  # fmt: skip
SKIMAGE_CLIP = "no_time_for_that_tiny.gif"
HELD_OUT_PHOTOS = (
    "gravel.png", "coins.png", "moon.png", "retina.jpg", "ihc.png", "motorcycle_right.png",
    "page.png", "cell.png", "clock_motion.png", "microaneurysms.png", "text.png",
)  # fmt: skip
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photographs(held_out: bool = False) -> list[Path]:
    """The photographs found in the installed scikit-image and matplotlib."""
    found = []
    skimage = _package_dir("skimage")
    names = HELD_OUT_PHOTOS if held_out else SKIMAGE_PHOTOS
    if skimage is not None:
        found += [skimage / "data" / n for n in names if (skimage / "data" / n).exists()]
    if held_out:
        return found
    matplotlib = _package_dir("matplotlib")
    if matplotlib is not None:
        sample = matplotlib / "mpl-data" / "sample_data"
        found += [sample / n for n in MATPLOTLIB_PHOTOS if (sample / n).exists()]
    return found


def motion_filter(motion: str, frames: int) -> str:
    """A filter graph from a looped still (input 0) to ``WIDTH x HEIGHT`` clips."""
    w, h = WIDTH, HEIGHT
    fit = f"scale={2 * w}:{2 * h}:force_original_aspect_ratio=increase,crop={2 * w}:{2 * h}"
    if motion == "zoom":
        return (
            f"[0]{fit},zoompan=z='1+0.6*on/{frames}':x='iw/2-iw/zoom/2':y='ih/2-ih/zoom/2'"
            f":d=1:s={w}x{h}:fps={RATE}"
        )
    if motion == "pan":
        # a view 1.6 x wider than the frame, swept from left to right
        return (
            f"[0]scale={int(1.6 * w)}:{h}:force_original_aspect_ratio=increase,"
            f"crop={int(1.6 * w)}:{h},crop={w}:{h}:x='(iw-{w})*n/{frames}':y=0"
        )
    if motion == "local":
        # one quarter of the photo drifts across the (otherwise still) photo
        return (
            f"[0]scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},split[bg][fg];"
            f"[fg]crop={w // 3}:{h // 3}:{w // 3}:{h // 3}[part];"
            f"[bg][part]overlay=x='{w // 10}+{w // 2}*n/{frames}':y='{h // 6}+{h // 3}*n/{frames}'"
        )
    raise ValueError(f"unknown motion {motion!r}")


def encode(args: list[str], out: Path) -> None:
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args]
    command += ["-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--held-out", action="store_true", help="the other photographs, no real clip")
    args = ap.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        raise SystemExit("the ffmpeg CLI is needed (make setup installs it)")
    photos = photographs(args.held_out)
    if not photos:
        raise SystemExit("no photographs found: pip install scikit-image matplotlib")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = round(args.seconds * RATE)
    made = 0
    for photo in photos:
        for motion in ("zoom", "pan", "local"):
            out = out_dir / f"{photo.stem}_{motion}.mp4"
            if out.exists() and not args.force:
                continue
            graph = motion_filter(motion, frames)
            encode(["-loop", "1", "-i", str(photo), "-filter_complex", graph,
                    "-frames:v", str(frames), "-r", str(RATE)], out)  # fmt: skip
            made += 1
    skimage = _package_dir("skimage")
    clip = skimage / "data" / SKIMAGE_CLIP if skimage is not None and not args.held_out else None
    out = out_dir / "no_time_for_that_real.mp4"
    if clip is not None and clip.exists() and (args.force or not out.exists()):
        # the one real video: upscaled to the corpus size, even dimensions
        encode(["-i", str(clip), "-vf", f"scale={WIDTH}:{HEIGHT}", "-r", str(RATE)], out)
        made += 1
    total = len(list(out_dir.glob("*.mp4")))
    print(f"{out_dir}: {total} clips ({made} made now)", file=sys.stderr)


if __name__ == "__main__":
    os.umask(0o022)
    main()
