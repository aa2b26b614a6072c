"""Tables, target checks and the bar chart of ``benchmark_codec_apis.py``; a
measurement in a fresh process (:func:`run_fresh`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

DECODE_TARGET = 1.3  # decode_only >= 1.3x decord's best, on CPU
PATCH_TARGET = 0.9  # patch_stream within 10% of decode_only


def _ran(results: list[dict], api: str, **match) -> list[dict]:
    return [
        r
        for r in results
        if r["api"] == api
        and not r.get("skipped")
        and all(r.get(key) == value for key, value in match.items())
    ]


def _best(rows: list[dict], key: str = "videos_per_second") -> dict | None:
    return max(rows, key=lambda r: r[key]) if rows else None


def _brief(row: dict | None, key: str) -> dict | None:
    if row is None:
        return None
    return {"strategy": row["strategy"], "videos_per_second": row[key]}


def targets(results: list[dict], key: str = "videos_per_second") -> dict:
    """The issue's CPU targets from the measured rows, comparing ``key``
    (the median's videos/s, or the fastest repeat's)."""
    cpu = {"decode_backend": "cpu"}
    decode_best = _best(_ran(results, "decode_only", **cpu), key)
    decord_best = _best(_ran(results, "decord", **cpu), key)
    torchcodec_best = _best(_ran(results, "torchcodec", **cpu), key)
    patch_best = _best(_ran(results, "patch_stream", process_backend="cpu", **cpu), key)
    out: dict = {
        "compares": key,
        "decode_only_best": _brief(decode_best, key),
        "decord_best": _brief(decord_best, key),
        "torchcodec_naive_best": _brief(torchcodec_best, key),
        "patch_stream_best": _brief(patch_best, key),
    }
    if decode_best and decord_best:
        ratio = decode_best[key] / decord_best[key]
        out["decode_only_vs_decord"] = {
            "ratio": round(ratio, 3),
            "target": f">= {DECODE_TARGET}",
            "met": ratio >= DECODE_TARGET,
        }
    # Each uniform strategy against decord: one video at a time on one
    # thread, and each at its best parallel strategy.
    by_strategy = {}
    for api in ("decode_only", "decode_only[index]", "decode_only[keyframe]"):
        ours = _ran(results, api, **cpu)
        if not ours or not decord_best:
            continue
        one = _ran(results, api, strategy="sequential", **cpu)
        theirs = _ran(results, "decord", strategy="sequential", **cpu)
        by_strategy[api] = {
            "best_vs_decord_best": round(_best(ours, key)[key] / decord_best[key], 3),
            "sequential_vs_decord_sequential": (
                round(one[0][key] / theirs[0][key], 3) if one and theirs else None
            ),
        }
    out["uniform_strategies_vs_decord"] = by_strategy
    if decode_best and patch_best:
        ratio = patch_best[key] / decode_best[key]
        same = {}
        for row in _ran(results, "patch_stream", process_backend="cpu", **cpu):
            twin = _ran(results, "decode_only", strategy=row["strategy"], **cpu)
            if twin:
                same[row["strategy"]] = round(row[key] / twin[0][key], 3)
        out["patch_stream_vs_decode_only"] = {
            "ratio": round(ratio, 3),
            "target": f">= {PATCH_TARGET} (within 10%)",
            "met": ratio >= PATCH_TARGET,
            "ratio_by_strategy": same,
        }
    return out


def print_table(results: list[dict], header: str) -> None:
    print(header)
    decord_best = _best(_ran(results, "decord", decode_backend="cpu"))
    ref = decord_best["videos_per_second"] if decord_best else None
    cols = (
        f"{'api':21} {'decode':6} {'process':7} {'strategy':15} {'w x th':>6} "
        f"{'videos':>6} {'median s':>9} {'videos/s':>9} {'frames/s':>9} {'/decord':>8} "
        f"{'fastest':>8} {'cpu s/v':>8}"
    )
    print(cols)
    print("-" * len(cols))
    skipped = []
    for r in results:
        if r.get("skipped"):
            skipped.append(r)
            continue
        rel = f"{r['videos_per_second'] / ref:7.2f}x" if ref else f"{'-':>8}"
        print(
            f"{r['api']:21} {r['decode_backend']:6} {r['process_backend'] or '-':7} "
            f"{r['strategy']:15} {r['workers']:>2}x{r['ffmpeg_threads']:<3} {r['videos']:6d} "
            f"{r['seconds']:9.3f} {r['videos_per_second']:9.2f} {r['frames_per_second']:9.1f} "
            f"{rel} {r['videos_per_second_fastest_repeat']:8.2f} {r['cpu_seconds_per_video']:8.3f}"
        )
    seen = set()
    for r in skipped:
        key = (r["api"], r["decode_backend"], r["process_backend"], r["reason"])
        if key in seen:
            continue
        seen.add(key)
        proc = r["process_backend"] or "-"
        print(f"skipped {r['api']} {r['decode_backend']}->{proc}: {r['reason']}")


def print_targets(summary: dict) -> None:
    d = summary.get("decode_only_vs_decord")
    basis = "median" if summary["compares"] == "videos_per_second" else "fastest repeat"
    if d:
        print(
            f"[{basis}] decode_only best / decord best = {d['ratio']:.2f}x "
            f"(target {d['target']}): {'met' if d['met'] else 'missed'}"
        )
    p = summary.get("patch_stream_vs_decode_only")
    if p:
        print(
            f"[{basis}] patch_stream best / decode_only best = {p['ratio']:.2f} "
            f"(target {p['target']}): {'met' if p['met'] else 'missed'}"
        )
    for api, r in summary.get("uniform_strategies_vs_decord", {}).items():
        one = r["sequential_vs_decord_sequential"]
        print(
            f"[{basis}] {api} / decord: best {r['best_vs_decord_best']:.2f}x, "
            f"one video on one thread {'-' if one is None else f'{one:.2f}x'}"
        )


def plot(results: list[dict], path: str, title: str) -> None:
    """Grouped bars: videos/s per strategy, one bar per API and backends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if not r.get("skipped")]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    series = list(
        dict.fromkeys((r["api"], r["decode_backend"], r["process_backend"]) for r in rows)
    )
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(strategies)), 4.5))
    for i, (api, dec, proc) in enumerate(series):
        values = []
        for strategy in strategies:
            hit = [
                r["videos_per_second"]
                for r in rows
                if (r["api"], r["decode_backend"], r["process_backend"], r["strategy"])
                == (api, dec, proc, strategy)
            ]
            values.append(hit[0] if hit else math.nan)
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(strategies))]
        label = f"{api} ({dec}" + (f"->{proc})" if proc else ")")
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(strategies)), strategies)
    ax.set_ylabel("videos / s (median of repeats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def video_paths(video_dir: str, limit: int | None = None) -> list[str]:
    """The videos under ``video_dir`` (recursive, sorted), at most ``limit``."""
    from cps_ray._media import find_videos

    paths = find_videos(video_dir)[:limit]
    if not paths:
        raise SystemExit(f"no videos found under {video_dir!r}")
    return paths


def write_json(path: str, data: dict) -> None:
    """Write a benchmark's JSON (folders made as needed) and say where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
    print(f"wrote {path}")


def run_fresh(code: str, args: list[str], env: dict[str, str], cwd=None) -> dict:
    """Run ``python -c code *args`` in a fresh process; its last stdout line is
    a JSON object, returned. A failure ends the benchmark with its stderr."""
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=cwd)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate_checkouts(
    code: str, args: list[str], runs: int, repo: Path, checkout: Path | None, **env: str
) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    """:func:`run_fresh` ``runs`` times for this checkout (``repo``) and, when
    given, another (``checkout``, a ``git worktree`` of an older commit),
    alternating so both see the same machine. Each run starts its own local
    Ray, with ``env`` on top of this environment.

    Returns ``({"this": repo, "other": checkout}, {name: [result, ...]})``."""
    codes = {"this": repo} | ({"other": checkout.resolve()} if checkout else {})
    results: dict[str, list[dict]] = {name: [] for name in codes}
    for _ in range(runs):
        for name, folder in codes.items():
            time.sleep(5)  # the last run's Ray processes are still exiting
            run_env = dict(os.environ, PYTHONPATH=str(folder), RAY_USAGE_STATS_ENABLED="0", **env)
            run_env.pop("RAY_ADDRESS", None)
            # In the checkout's folder: Ray puts the driver's folder first on
            # its workers' sys.path, ahead of PYTHONPATH.
            results[name].append(run_fresh(code, args, run_env, cwd=folder))
            print(name, json.dumps(results[name][-1]), flush=True)
    return codes, results
