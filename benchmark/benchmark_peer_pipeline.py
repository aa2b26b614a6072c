"""End to end against the pipeline a Ray Data user would write (issue 40).

    python benchmark/benchmark_peer_pipeline.py SET [SET ...] [--videos 304] [--rounds 3]
        [--runners cps decord torchcodec cps:isolation=none cps:fuse=false]
        [--batch-size 8] [--cpus 2] [--json benchmark/out/peer_pipeline.json]

Each SET is a folder of videos (its videos listed repeatedly up to
``--videos``). On one Ray session, in alternating rounds (the order of the
runners rotates each round, after one untimed warm-up run of each on a few
videos), every runner turns the same videos into the same tokens: T=16
frames at 224², ``k_keep=2048`` patches of 14² in bf16 (``[k, 3, 14, 14]``,
bits as uint16) with their ``(t, row, col)``, consumed in the driver with
``ds.iter_batches(batch_size=8)``, as training would:

- ``cps``: ``patch_dataset(paths, PatchStreamConfig(...))``, default options
  (isolation on); ``cps:OPTION=VALUE,...`` passes pool options
  (``cps:isolation=none``, ``cps:fuse=false``, ``cps:videos_per_block=4``);
- ``decord``: ``from_items`` then a ``map_batches`` actor pool (one actor
  per CPU, ``batch_size=8``) whose actor opens ``decord.VideoReader(path,
  width=, height=)`` at the set's short-side-224 size (decord's fastest
  form: the decoder resizes), takes ``get_batch`` of uniform indices
  (``round(linspace(0, n - 1, T))``), center-crops and drops tokens at
  random to ``k`` (seeded per path; bf16 by rounding in NumPy, no torch);
- ``torchcodec``: the same with ``VideoDecoder(path, transforms=[Resize,
  CenterCrop])`` and ``get_frames_at``.

For each run: time to the first batch (from building the dataset), the rate
after it (videos/s counted from the first batch on: ``(n - first batch) /
(end - first)``), and CPU seconds per video: ``tree``, the CPU of this
process and every process under it (Ray's head, its workers, their
children; reaped ones included), and ``machine``, all of the machine's
busy time (``/proc/stat``; other work on a shared machine lands there too).
A figure is the median over rounds; a ratio the median of the per-round
ratios against ``decord``. Prints a table and writes JSON; nothing here is
asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zlib

import numpy as np
from _machine import load_average, machine_info
from _report import write_json

T, S, P, K = 16, 224, 14, 2048
G = S // P


# --- the user's pipeline -------------------------------------------------------------


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def random_tokens(frames: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[T, S, S, 3]`` -> (bf16 bits ``[K, 3, P, P]``, int32 ``[K, 3]``
    = (t, row, col)): ``K`` patches at random, in flat order."""
    grid = frames.reshape(T, G, P, G, P, 3).transpose(0, 1, 3, 5, 2, 4).reshape(T * G * G, 3, P, P)
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    keep = np.sort(rng.choice(T * G * G, K, replace=False))
    patches = to_bf16_bits(grid[keep].astype(np.float32) / 255.0)
    fields = np.stack([keep // (G * G), (keep // G) % G, keep % G], axis=1).astype(np.int32)
    return patches, fields


class UserTokens:
    """A user's ``map_batches`` stage: each path's frames (:meth:`frames`,
    uint8 ``[T, S, S, 3]``) to random tokens."""

    def __call__(self, batch: dict) -> dict:
        tokens = [random_tokens(self.frames(str(path)), str(path)) for path in batch["path"]]
        return {
            "path": batch["path"],
            "patches": np.stack([p for p, _ in tokens]),
            "meta_fields": np.stack([f for _, f in tokens]),
        }


class DecordTokens(UserTokens):
    def __init__(self, height: int, width: int):
        import decord

        self.decord, self.height, self.width = decord, height, width

    def frames(self, path: str) -> np.ndarray:
        reader = self.decord.VideoReader(path, width=self.width, height=self.height)
        idx = np.round(np.linspace(0, len(reader) - 1, T)).astype(np.int64)
        hwc = reader.get_batch(idx.tolist()).asnumpy()  # [T, h, w, 3]
        top, left = (hwc.shape[1] - S) // 2, (hwc.shape[2] - S) // 2
        return hwc[:, top : top + S, left : left + S]


class TorchcodecTokens(UserTokens):
    def __init__(self, height: int, width: int):
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import CenterCrop, Resize

        self.decoder = VideoDecoder
        self.transforms = [Resize((height, width)), CenterCrop((S, S))]

    def frames(self, path: str) -> np.ndarray:
        decoder = self.decoder(path, transforms=self.transforms)
        n = decoder.metadata.num_frames
        idx = np.round(np.linspace(0, n - 1, T)).astype(np.int64)
        return decoder.get_frames_at(idx.tolist()).data.numpy().transpose(0, 2, 3, 1)


def user_dataset(ray, paths, stage, size_hw, cpus: int):
    ds = ray.data.from_items([{"path": p} for p in paths])
    return ds.map_batches(
        stage,
        fn_constructor_kwargs={"height": size_hw[0], "width": size_hw[1]},
        compute=ray.data.ActorPoolStrategy(size=cpus),
        batch_size=8,
        num_cpus=1,
        batch_format="numpy",
    )


# --- cps_ray -------------------------------------------------------------------------


def parse_runner(name: str) -> tuple[str, dict]:
    """``cps:fuse=false,isolation=none`` -> ("cps", {"fuse": False, ...});
    ``decode_pool=1-2`` is the pool ``(1, 2)``."""
    kind, _, rest = name.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        low = value.lower()
        if low in ("true", "false"):
            options[key] = low == "true"
        elif low == "none" and key != "isolation":
            options[key] = None
        elif "-" in value and all(v.isdigit() for v in value.split("-")):
            options[key] = tuple(int(v) for v in value.split("-"))  # a (min, max) pool
        else:
            try:
                options[key] = int(value)
            except ValueError:
                options[key] = value
    return kind, options


def cps_dataset(paths, options):
    from cps_ray import PatchStreamConfig, patch_dataset

    cfg = PatchStreamConfig(sequence_length=T, input_size=S, patch_size=P, k_keep=K)
    return patch_dataset(paths, cfg, **options)


# --- measuring -----------------------------------------------------------------------


def tree_cpu() -> dict[tuple[int, float], float]:
    """CPU seconds of this process and every process under it, reaped children included."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[(proc.pid, proc.create_time())] = (
                t.user + t.system + t.children_user + t.children_system
            )
        except psutil.Error:
            pass
    return out


STAGES = ("FusedStage", "DecodeStage", "SelectStage", "DecordTokens", "TorchcodecTokens")


def kind_of(proc, me: int) -> str:
    """What a process of the tree is: the driver, a stage's actor, an isolated
    child, its fork server, or the rest of Ray (head, raylet, idle workers)."""
    import psutil

    try:
        line = " ".join(proc.cmdline())
        parent = proc.ppid()
        if proc.pid == me:
            return "driver"
        if "forkserver" in line or "resource_tracker" in line:
            # a fork server's children run its command line too
            grand = psutil.Process(parent).cmdline() if parent else []
            if "forkserver" in " ".join(grand):
                return "isolated child"
            return "fork server" if "forkserver" in line else "resource tracker"
        for stage in STAGES:
            if stage in line:
                return stage + " actor"
    except psutil.Error:
        return "gone"
    return "rest of Ray"


class TreeCpu:
    """CPU seconds of the process tree over a run, sampled every ``interval_s``
    (a process killed without being waited for, an actor's fork server say,
    keeps the CPU of its last sample), in all and by kind of process (each
    process's own CPU, :func:`kind_of`)."""

    def __init__(self, interval_s: float = 0.2):
        import threading

        self.me = os.getpid()
        self.start = tree_cpu()
        self.last = dict(self.start)
        self.own: dict[tuple[int, float], tuple[str, float]] = {}
        self.own_start = self._own()
        self.interval_s = interval_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _own(self) -> dict[tuple[int, float], tuple[str, float]]:
        import psutil

        me = psutil.Process()
        out = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            kind = kind_of(proc, self.me)
            seen = self.own.get(key, (None, 0.0))[0] if hasattr(self, "own") else None
            # a process keeps the most specific kind it was seen as (an idle
            # Ray worker becomes an actor; a dying one cannot be asked)
            if seen is not None and kind in ("gone", "rest of Ray"):
                kind = seen
            out[key] = (kind, t.user + t.system)
        return out

    def _sample(self) -> None:
        while not self.done.wait(self.interval_s):
            self.last.update(tree_cpu())
            self.own.update(self._own())

    def snapshot(self) -> tuple[float, dict[str, float]]:
        """CPU seconds since the start: in all, and by kind of process."""
        self.last.update(tree_cpu())
        self.own.update(self._own())
        total = sum(max(0.0, v - self.start.get(k, 0.0)) for k, v in self.last.items())
        kinds: dict[str, float] = {}
        for key, (kind, cpu) in self.own.items():
            before = self.own_start.get(key, (kind, 0.0))[1]
            kinds[kind] = kinds.get(kind, 0.0) + max(0.0, cpu - before)
        return total, kinds

    def stop(self) -> tuple[float, dict[str, float]]:
        self.done.set()
        self.thread.join()
        return self.snapshot()


def machine_busy() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_once(ray, runner: str, paths, size_hw, cpus: int, batch_size: int) -> dict:
    kind, options = parse_runner(runner)
    cpu, busy0 = TreeCpu(), machine_busy()
    start = time.perf_counter()
    if kind == "cps":
        ds = cps_dataset(paths, options)
    else:
        stage = {"decord": DecordTokens, "torchcodec": TorchcodecTokens}[kind]
        ds = user_dataset(ray, paths, stage, size_hw, cpus)
    first_s = first_n = None
    n = errors = 0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        if first_s is None:
            first_s, first_n = time.perf_counter() - start, len(batch["path"])
            at_first = cpu.snapshot()
        assert batch["patches"].shape[1:] == (K, 3, P, P), batch["patches"].shape
        assert batch["meta_fields"].shape[1:] == (K, 3)
        if "error" in batch:
            errors += sum(1 for e in batch["error"] if isinstance(e, str) and e)
        n += len(batch["path"])
    total_s = time.perf_counter() - start
    (tree, kinds), busy1 = cpu.stop(), machine_busy()
    return {
        "runner": runner,
        "videos": n,
        "errors": errors,
        "seconds": total_s,
        "first_batch_s": first_s,
        "rate_after_first": (n - first_n) / max(1e-9, total_s - first_s),
        "cpu_tree_s_per_video": tree / n,
        "cpu_machine_s_per_video": (busy1 - busy0) / n,
        "cpu_s_per_video_by_process": {k: v / n for k, v in sorted(kinds.items())},
        # CPU until the first batch, and per video after it
        "cpu_to_first_batch_s": at_first[0],
        "cpu_s_per_video_after_first": (tree - at_first[0]) / max(1, n - first_n),
        "cpu_s_per_video_after_first_by_process": {
            k: (v - at_first[1].get(k, 0.0)) / max(1, n - first_n) for k, v in sorted(kinds.items())
        },
        "cpu_to_first_batch_by_process": dict(sorted(at_first[1].items())),
    }


def set_size(paths) -> tuple[int, int]:
    """The short-side-224 size of the set's first video (a user's set is homogeneous)."""
    import av

    from cps_ray._decode.resize import resized_dims

    with av.open(paths[0]) as container:
        stream = container.streams.video[0]
        return resized_dims(stream.height, stream.width, S)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", help="folders of videos, one table each")
    ap.add_argument("--videos", type=int, default=304)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runners", nargs="+", default=["cps", "decord", "torchcodec"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", default="benchmark/out/peer_pipeline.json")
    args = ap.parse_args(argv)

    import ray

    from cps_ray._media import find_videos

    info = machine_info()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False
    results = {"machine": info, "args": vars(args), "sets": {}}
    for folder in args.sets:
        base = sorted(find_videos(folder))
        paths = (base * (args.videos // len(base) + 1))[: args.videos]
        size_hw = set_size(paths)
        for runner in args.runners:  # warm the page cache and Numba's cache on disk
            run_once(ray, runner, paths[:8], size_hw, args.cpus, args.batch_size)
        runs = []
        for r in range(args.rounds):
            order = args.runners[r % len(args.runners) :] + args.runners[: r % len(args.runners)]
            for runner in order:
                out = run_once(ray, runner, paths, size_hw, args.cpus, args.batch_size)
                out["round"] = r
                runs.append(out)
                print(
                    f"  {os.path.basename(folder.rstrip('/'))} round {r + 1} {runner:24} "
                    f"first {out['first_batch_s']:5.2f} s  rate {out['rate_after_first']:6.2f}/s  "
                    f"cpu {out['cpu_tree_s_per_video'] * 1e3:6.1f} ms/video  load {load_average()}",
                    flush=True,
                )
        results["sets"][folder] = {"videos": len(paths), "size": size_hw, "runs": runs,
                                   "summary": summarize(runs, args.runners)}  # fmt: skip
    results["load_average_at_end"] = load_average()
    ray.shutdown()
    print_tables(results, args)
    write_json(args.json, results)


def summarize(runs: list[dict], runners: list[str]) -> dict:
    by = {r: [x for x in runs if x["runner"] == r] for r in runners}
    rounds = sorted({x["round"] for x in runs})
    out = {}
    for runner, xs in by.items():
        row = {key: statistics.median(x[key] for x in xs)
               for key in ("first_batch_s", "rate_after_first", "cpu_tree_s_per_video",
                           "cpu_machine_s_per_video")}  # fmt: skip
        for key in ("cpu_to_first_batch_s", "cpu_s_per_video_after_first"):
            row[key] = statistics.median(x[key] for x in xs)
        for key in ("cpu_s_per_video_after_first_by_process", "cpu_to_first_batch_by_process"):
            kinds = sorted({k for x in xs for k in x[key]})
            row[key] = {k: statistics.median(x[key].get(k, 0.0) for x in xs) for k in kinds}
        if "decord" in by and runner != "decord":
            ratio, first = [], []
            for r in rounds:
                ours = [x for x in xs if x["round"] == r]
                theirs = [x for x in by["decord"] if x["round"] == r]
                if ours and theirs:
                    ratio.append(ours[0]["rate_after_first"] / theirs[0]["rate_after_first"])
                    first.append(ours[0]["first_batch_s"] - theirs[0]["first_batch_s"])
            row["rate_vs_decord"] = statistics.median(ratio)
            row["rate_vs_decord_rounds"] = ratio
            row["first_minus_decord_s"] = statistics.median(first)
        out[runner] = row
    return out


def print_tables(results: dict, args) -> None:
    print(
        f"\nmedians of {args.rounds} rounds; load average at end {results['load_average_at_end']}"
    )
    for folder, data in results["sets"].items():
        print(
            f"\n{folder}: {data['videos']} videos ({data['size'][1]}x{data['size'][0]} before crop)"
        )
        print(f"{'runner':26} {'first batch s':>13} {'videos/s after':>14} {'x decord':>9} "
              f"{'first - decord':>14} {'CPU ms/video':>12} {'machine ms':>10}")  # fmt: skip
        for runner, row in data["summary"].items():
            ratio = f"{row['rate_vs_decord']:.2f}" if "rate_vs_decord" in row else "1"
            delta = f"{row['first_minus_decord_s']:+.2f}" if "first_minus_decord_s" in row else ""
            print(f"{runner:26} {row['first_batch_s']:13.2f} {row['rate_after_first']:14.2f} "
                  f"{ratio:>9} {delta:>14} {row['cpu_tree_s_per_video'] * 1e3:12.1f} "
                  f"{row['cpu_machine_s_per_video'] * 1e3:10.1f}")  # fmt: skip
        print("CPU s to the first batch; CPU ms per video after it (by process, own CPU, sampled):")
        for runner, row in data["summary"].items():
            start = row["cpu_to_first_batch_by_process"].items()
            after = row["cpu_s_per_video_after_first_by_process"].items()
            print(f"  {runner}: to first {row['cpu_to_first_batch_s']:.2f} s ("
                  + ", ".join(f"{k} {v:.2f}" for k, v in start if v >= 0.005)
                  + f"); after {row['cpu_s_per_video_after_first'] * 1e3:.1f} ms/video ("
                  + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in after if v >= 5e-5)
                  + ")")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
