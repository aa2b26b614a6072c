"""How much of a clip the kept patches preserve: energy selection (cps_ray),
with and without camera-motion compensation, against random-k and a uniform
grid of k, at equal k.

    python benchmark/selection_quality.py VIDEO_DIR [--limit 8] [--keep-ratios 0.1 0.25 0.5]
        [--json benchmark/out/selection_quality.json] [--png benchmark/out/selection_quality.png]

Per video: cps_ray decodes the ``T`` uniform frames at ``S x S`` (the frames
``patch_stream`` scores). Each method keeps ``k = round(ratio * T * N)`` of
the ``T * N`` patches. The clip is then rebuilt from the kept patches alone,
as a decoder would rebuild it from coded blocks: at frame ``t`` a kept patch
shows its own pixels and a dropped patch repeats the latest rebuilt value at
its position (a codec's skipped block). Before a position is first kept it
is mid-grey (128), for every method alike. The figure is the PSNR of the
rebuilt clip against the decoded clip (all frames, all channels, one MSE per
clip), averaged over videos.

Methods, all keeping exactly ``k`` patches, all through the library's
``select_patches(..., selection=...)``:

- ``energy``: cps_ray's selection (every frame scored by its residual
  against the frame before, mid-grey before the first; the ``k`` largest);
- ``random``: the ``random`` baseline, ``k`` patches drawn uniformly without
  replacement (the mean over ``--random-seeds`` seeds);
- ``uniform``: the ``uniform`` baseline, ``k / T`` patches per frame spread
  evenly over the positions, the pattern shifted by one position each frame
  (a rolling refresh);
- ``energy_variance`` (a diagnostic, the rule before 2026-11): frame 0 scored
  by its variance ``sum_ch (n sum x^2 - (sum x)^2)`` instead of against grey.

``energy`` is ``motion="none"``. With camera motion (``motion="global"``,
docs/selection.md) the rebuild is a motion-compensated decoder's: frame
``t`` starts as the rebuilt frame ``t - 1`` warped by the clip's motion
``A_t`` (grey where it comes from outside), as :func:`cps_ray.rebuild_clip`
does; the ``_mc`` methods are rebuilt that way, with the motion
``select_patches(..., motion="global", return_motion=True)`` returns:

- ``energy_mc``: the compensated rule's own selection;
- ``random_mc``, ``uniform_mc``: the baselines' patches, rebuilt with the
  same motion (a decoder that knows the motion, the fairer baseline).

Clips are grouped by motion kind from their names (``*_zoom``, ``*_pan``,
``*_local``, anything else ``real``), as ``make_photo_clips.py`` names them.

Two first-frame rules, each the same for every method: ``grey`` (the
headline: the clip from the kept patches alone, never-kept positions are
mid-grey 128) and ``given`` (a diagnostic: the rebuild starts from the true
first frame, like a keyframe received for free, which isolates the temporal
selection).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from _machine import describe, machine_info, require
from _report import video_paths, write_json

from cps_ray._kernels.reference import IDENTITY_WARP

METHODS = ("energy", "random", "uniform", "energy_variance", "energy_mc", "random_mc",
           "uniform_mc")  # fmt: skip
RULES = ("grey", "given")
KINDS = ("zoom", "pan", "local", "real")


def motion_kind(path: str) -> str:
    """``zoom``, ``pan`` or ``local`` from a photo clip's name, else ``real``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    kind = stem.rsplit("_", 1)[-1]
    return kind if kind in KINDS else "real"


def library_mask(frames: np.ndarray, patch_size: int, k: int, selection: str, seed=0,
                 motion="none"):  # fmt: skip
    """bool ``[T, G, G]``: the patches ``select_patches(selection=...)`` keeps."""
    from cps_ray import select_patches

    t, _, s, _ = frames.shape
    g = s // patch_size
    _, fields, _ = select_patches(
        frames, patch_size=patch_size, k_keep=k, output_dtype="fp32", selection=selection,
        seed=seed, motion=motion,
    )  # fmt: skip
    fields = np.asarray(fields, dtype=np.int64)
    mask = np.zeros((t, g, g), dtype=bool)
    mask[fields[:, 0], fields[:, 1], fields[:, 2]] = True
    return mask


def clip_warp(frames: np.ndarray, patch_size: int) -> np.ndarray:
    """int64 ``[T, 6]``: the fixed-point motion of ``select_patches(motion="global")``."""
    from cps_ray import select_patches
    from cps_ray._kernels.reference import motion_to_warp

    *_, motion = select_patches(frames, patch_size=patch_size, k_keep=1, return_motion=True)
    return motion_to_warp(motion.numpy())


def variance_mask(frames: np.ndarray, patch_size: int, k: int) -> np.ndarray:
    """Diagnostic: the rule before 2026-11, frame 0 scored by its variance."""
    from cps_ray._kernels import reference

    t, ch, s, _ = frames.shape
    p, g = patch_size, s // patch_size
    n = p * p
    energies = reference.patch_energies(frames, p)
    first = frames[0].astype(np.int64).reshape(ch, g, p, g, p).transpose(1, 3, 0, 2, 4)
    first = first.reshape(g, g, ch, n)
    variance = (n * (first**2).sum(-1) - first.sum(-1) ** 2).sum(-1)
    energies[: g * g] = variance.reshape(-1)
    mask = np.zeros(t * g * g, dtype=bool)
    mask[reference.top_k(energies, k)] = True
    return mask.reshape(t, g, g)


def rebuild(frames: np.ndarray, mask: np.ndarray, patch_size: int, rule: str,
            warp: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """uint8 ``[T, 3, S, S]``: the clip as the kept patches show it; before a
    position is first kept it shows mid-grey (``grey``) or frame 0 (``given``).
    With ``warp`` (int64 ``[T, 6]``) frame ``t`` starts as frame ``t - 1``
    rebuilt and warped, as :func:`cps_ray.rebuild_clip` does."""
    from cps_ray._kernels.reference import warp_frame

    if rule == "grey":
        state = np.full(frames.shape[1:], 128, dtype=np.uint8)
    else:
        state = frames[0].copy()
    out = np.empty(frames.shape, dtype=np.uint8)
    for t in range(frames.shape[0]):
        if t > 0 and warp is not None:
            state = warp_frame(state, warp[t])
        keep = np.kron(mask[t], np.ones((patch_size, patch_size), dtype=bool))
        state = np.where(keep[None], frames[t], state)
        out[t] = state
    return out


def check_rebuild_clip(frames, mask, patch_size, warp) -> None:
    """The benchmark's rebuild is the library's :func:`cps_ray.rebuild_clip`."""
    from cps_ray import rebuild_clip
    from cps_ray._kernels.reference import gather, warp_to_motion

    g = mask.shape[1]
    flat = np.flatnonzero(mask.reshape(-1))
    fields = np.stack([flat // (g * g), flat % (g * g) // g, flat % g], axis=1)
    patches = gather(frames, flat, patch_size)
    got = rebuild_clip(patches, fields, warp_to_motion(warp), input_size=frames.shape[-1])
    assert np.array_equal(got, rebuild(frames, mask, patch_size, "grey", warp)), "rebuild_clip"


def psnr(reference: np.ndarray, rebuilt: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float32) - rebuilt.astype(np.float32)) ** 2))
    return 100.0 if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def evaluate(frames: np.ndarray, patch_size: int, ratios, seeds: int) -> dict:
    """``{rule: {method: {ratio: psnr}}}`` for one clip, and the frames
    whose motion was found (identity rows are no motion)."""
    t, _, s, _ = frames.shape
    g = s // patch_size
    warp = clip_warp(frames, patch_size)
    out: dict = {rule: {m: {} for m in METHODS} for rule in RULES}
    for ratio in ratios:
        k = max(1, min(t * g * g, round(ratio * t * g * g)))
        random = [library_mask(frames, patch_size, k, "random", s) for s in range(seeds)]
        uniform = [library_mask(frames, patch_size, k, "uniform")]
        compensated = library_mask(frames, patch_size, k, "energy", motion="global")
        masks = {
            "energy": ([library_mask(frames, patch_size, k, "energy")], None),
            "random": (random, None),
            "uniform": (uniform, None),
            "energy_variance": ([variance_mask(frames, patch_size, k)], None),
            "energy_mc": ([compensated], warp),
            "random_mc": (random, warp),
            "uniform_mc": (uniform, warp),
        }
        if ratio == ratios[0]:
            check_rebuild_clip(frames, compensated, patch_size, warp)
        for rule in RULES:
            for method, (group, motion) in masks.items():
                out[rule][method][ratio] = statistics.fmean(
                    psnr(frames, rebuild(frames, mask, patch_size, rule, motion)) for mask in group
                )
    moved = [i for i in range(1, t) if tuple(warp[i]) != IDENTITY_WARP]
    return out, moved


def plot(summary: dict, per_video: list[dict], ratios, path: str, title: str) -> None:
    """PSNR against keep ratio, one panel per first-frame rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RULES), figsize=(11, 4.2), sharey=True)
    xs = [100 * r for r in ratios]
    for ax, rule in zip(axes, RULES):
        for i, method in enumerate(METHODS):
            color = f"C{i}"
            style = "o--" if method == "energy_variance" else "o-"
            for video in per_video:
                ys = [video["psnr"][rule][method][r] for r in ratios]
                ax.plot(xs, ys, color=color, alpha=0.12)
            label = method + (" (rule before 2026-11)" if method == "energy_variance" else "")
            ys = [summary[rule][method][r] for r in ratios]
            ax.plot(xs, ys, style, color=color, lw=2, label=label)
        ax.set_title(f"first frame rule: {RULE_TITLES[rule]}", fontsize=9)
        ax.set_xlabel("patches kept (% of T x N)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR of the rebuilt clip (dB)")
    axes[0].legend(title="mean over videos (thin: each)", fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


RULE_TITLES = {"grey": "grey 128 (kept patches alone)", "given": "frame 0 given (diagnostic)"}


def decode_clip(path: str, args) -> np.ndarray:
    from cps_ray import DecodeConfig, decode_only

    cfg = DecodeConfig(
        video_path=path,
        sequence_length=args.sequence_length,
        input_size=args.input_size,
        decode_backend="cpu",
    )
    return decode_only(cfg).frames.numpy()


def print_tables(summary: dict, per_video: list[dict], ratios, total: int, medians: dict):
    """One table per rule; returns ``{rule: {ratio: "wins/videos"}}`` (energy >
    random) and fills ``medians`` with the median per-clip gain over random."""
    wins: dict = {}
    for rule in RULES:
        print(f"\nfirst-frame rule: {RULE_TITLES[rule]}; mean PSNR (dB) of the rebuilt clip")
        names = " ".join(f"{m:>9}" for m in METHODS)
        print(f"{'keep':>5} {'k':>5} {names}  energy-random  median  energy wins")
        wins[rule] = {}
        for r in ratios:
            k = max(1, min(total, round(r * total)))
            won = sum(
                v["psnr"][rule]["energy"][r] > v["psnr"][rule]["random"][r] for v in per_video
            )
            wins[rule][str(r)] = f"{won}/{len(per_video)}"
            cells = " ".join(f"{summary[rule][m][r]:9.2f}" for m in METHODS)
            gain = summary[rule]["energy"][r] - summary[rule]["random"][r]
            median = statistics.median(
                v["psnr"][rule]["energy"][r] - v["psnr"][rule]["random"][r] for v in per_video
            )
            medians.setdefault(rule, {})[str(r)] = round(median, 3)
            print(
                f"{r:5.0%} {k:5d} {cells}  {gain:+13.2f}  {median:+6.2f}  {won:>5}/{len(per_video)}"
            )
    return wins


MOTION_SHOWN = ("energy", "energy_mc", "random", "random_mc", "uniform", "uniform_mc")


def print_motion_tables(per_video: list[dict], ratios) -> dict:
    """Per motion kind (grey rule): mean PSNR of both rules and the baselines,
    the compensated rule's gain over today's, and how often it beats random-k
    (rebuilt plainly, and with the motion); the issue's targets. Returns them."""
    print("\ncamera motion, first-frame rule grey; mean PSNR (dB); mc: rebuilt with the motion")
    head = " ".join(f"{m:>10}" for m in MOTION_SHOWN)
    print(f"{'kind':>5} {'clips':>5} {'keep':>5} {head}  mc-none mean/min  mc>random  mc>random_mc")
    groups = {kind: [v for v in per_video if v["kind"] == kind] for kind in KINDS}
    groups["all"] = per_video
    report: dict = {}
    for kind, videos in groups.items():
        if not videos:
            continue
        report[kind] = {}
        for r in ratios:
            psnr_of = [v["psnr"]["grey"] for v in videos]
            means = {m: statistics.fmean(p[m][r] for p in psnr_of) for m in MOTION_SHOWN}
            gains = [p["energy_mc"][r] - p["energy"][r] for p in psnr_of]
            beats = sum(p["energy_mc"][r] > p["random"][r] for p in psnr_of)
            beats_mc = sum(p["energy_mc"][r] > p["random_mc"][r] for p in psnr_of)
            report[kind][str(r)] = {
                "clips": len(videos),
                "mean_psnr_db": {m: round(v, 3) for m, v in means.items()},
                "gain_over_none_db": {
                    "mean": round(statistics.fmean(gains), 3),
                    "min": round(min(gains), 3),
                },  # fmt: skip
                "beats_random": f"{beats}/{len(videos)}",
                "beats_random_mc": f"{beats_mc}/{len(videos)}",
            }
            cells = " ".join(f"{means[m]:10.2f}" for m in MOTION_SHOWN)
            print(f"{kind:>5} {len(videos):5d} {r:5.0%} {cells}  "
                  f"{statistics.fmean(gains):+7.2f}/{min(gains):+6.2f}  "
                  f"{beats:>4}/{len(videos):<4} {beats_mc:>5}/{len(videos)}")  # fmt: skip
    report["targets"] = _motion_targets(per_video, ratios)
    for name, check in report["targets"].items():
        print(f"  target {name}: {check}")
    return report


def _motion_targets(per_video: list[dict], ratios) -> dict:
    """Issue 39's done-when figures, from the grey rule."""
    moving = [v["psnr"]["grey"] for v in per_video if v["kind"] in ("pan", "zoom")]
    still = [v["psnr"]["grey"] for v in per_video if v["kind"] in ("local", "real")]
    every = [v["psnr"]["grey"] for v in per_video]
    out: dict = {}
    for r in ratios:
        key = str(r)
        want = 3.0 if r < 0.2 else 8.0
        if moving:
            gain = statistics.fmean(p["energy_mc"][r] - p["energy"][r] for p in moving)
            out[f"pan+zoom mc-none {key}"] = f"{gain:+.2f} dB (>= +{want:.0f}: {gain >= want})"
        if still:
            gain = statistics.fmean(p["energy_mc"][r] - p["energy"][r] for p in still)
            out[f"no camera motion mc-none {key}"] = (
                f"{gain:+.2f} dB (within 0.3: {abs(gain) <= 0.3})"
            )
        for baseline in ("random", "random_mc"):
            won = sum(p["energy_mc"][r] > p[baseline][r] for p in every)
            share = won / len(every)
            out[f"mc beats {baseline} {key}"] = (
                f"{won}/{len(every)} = {share:.0%} (>= 90%: {share >= 0.9})"
            )
    return out


def _keys_to_str(tree):
    if isinstance(tree, dict):
        return {str(k): _keys_to_str(v) for k, v in tree.items()}
    return tree


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video_dir", help="folder of videos (searched recursively)")
    ap.add_argument("--limit", type=int, default=8, help="use the first N videos (sorted)")
    ap.add_argument("--keep-ratios", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    ap.add_argument("--sequence-length", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--random-seeds", type=int, default=5)
    ap.add_argument("--json", default="benchmark/out/selection_quality.json")
    ap.add_argument("--png", default=None, help="PSNR against keep ratio (needs matplotlib)")
    args = ap.parse_args(argv)
    if any(not 0 < r <= 1 for r in args.keep_ratios):
        ap.error(f"--keep-ratios must lie in (0, 1], got {args.keep_ratios}")
    if args.input_size % args.patch_size:
        ap.error(f"--input-size {args.input_size} is not a multiple of --patch-size")
    if args.png:
        require("matplotlib", "--png")
    paths = video_paths(args.video_dir, args.limit)
    machine = machine_info()
    ratios = sorted(args.keep_ratios)
    per_video = []
    start = time.perf_counter()
    for path in paths:
        try:
            frames = decode_clip(path, args)
        except Exception as err:
            print(f"skipped {path}: {err}", file=sys.stderr)
            continue
        scores, moved = evaluate(frames, args.patch_size, ratios, args.random_seeds)
        kind = motion_kind(path)
        per_video.append({"path": path, "kind": kind, "frames_with_motion": moved,
                          "psnr": scores})  # fmt: skip
        grey = scores["grey"]
        shown = ("energy", "energy_mc", "random", "random_mc")
        line = "  ".join(f"{m} " + "/".join(f"{grey[m][r]:.1f}" for r in ratios) for m in shown)
        print(f"  {os.path.basename(path)[:32]:32} {kind:5} motion on {len(moved):2d} frames, "
              f"grey: {line}", file=sys.stderr, flush=True)  # fmt: skip
    if not per_video:
        raise SystemExit("no video could be decoded")
    summary = {
        rule: {
            m: {r: statistics.fmean(v["psnr"][rule][m][r] for v in per_video) for r in ratios}
            for m in METHODS
        }
        for rule in RULES
    }
    g = args.input_size // args.patch_size
    total = args.sequence_length * g * g
    print(describe(machine))
    print(
        f"{len(per_video)} videos, T={args.sequence_length}, S={args.input_size}, "
        f"p={args.patch_size}, {total} patches per clip "
        f"({time.perf_counter() - start:.0f} s)"
    )
    medians: dict = {}
    wins = print_tables(summary, per_video, ratios, total, medians)
    motion = print_motion_tables(per_video, ratios)

    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine,
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "png")},
        "first_frame_rules": RULE_TITLES,
        "mean_psnr_db": _keys_to_str(summary),
        "energy_beats_random": wins,
        "median_gain_over_random_db": medians,
        "camera_motion": motion,
        "per_video": _keys_to_str(per_video),
    }
    write_json(args.json, report)
    if args.png:
        os.makedirs(os.path.dirname(args.png) or ".", exist_ok=True)
        title = (
            f"{len(per_video)} videos, T={args.sequence_length}, S={args.input_size}, "
            f"p={args.patch_size}: energy (cps_ray) vs random-k vs uniform grid, equal k"
        )
        plot(summary, per_video, ratios, args.png, title)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
