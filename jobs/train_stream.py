"""A short training run fed by the patch pipeline: a tiny transformer over the
kept patches learns to fill in masked ones (their pixels, from the others and
the (t, row, col) positions). It prints samples/s and the share of the time
the loop waited for data. The model is this job's own; the feeding is the
library's (``patch_dataset`` or ``shard_dataset``, ``TrainingBatches``,
``Lockstep``, ``train_on_workers``).

    python jobs/train_stream.py --input videos/ --steps 20 --batch-size 4
    python jobs/train_stream.py --input out/            # shards of preprocess.py
    python jobs/train_stream.py --input videos/ --num-workers 2 --epochs 3 --json run.json
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/train_stream.py --input /data/videos --num-workers 8 --use-gpu

With ``--num-workers N`` it trains on N Ray Train workers (data-parallel; one
GPU each with ``--use-gpu``), each on its own share, in lockstep, with a
checkpoint at every epoch end; started again with the same
``--checkpoint-dir`` and ``--run-name`` it continues from the last one.
IN is videos (a folder, a manifest, a glob: decoded on the fly) or the
output of ``jobs/preprocess.py`` (its shards: nothing is decoded). This
script parses the flags; the model and the loops are ``jobs/masked_patches.py``.
"""

import argparse
import os
import sys
from pathlib import Path

try:
    import cps_ray  # noqa: F401
except ImportError:  # a checkout whose package is not installed: use it, here and in Ray's workers
    _root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, _root)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the job's model, beside this file

import masked_patches  # noqa: E402
from masked_patches import train, worker_cpus  # noqa: E402, F401

from cps_ray.jobs import (  # noqa: E402
    add_pipeline_flags,
    non_negative_int,
    positive_int,
    run_entry_point,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_stream.py",
        description="Train a tiny patch-token transformer for a few steps on the pipeline's "
        "batches; print samples/s and the share of time spent waiting for data.",
    )
    parser.add_argument("--input", required=True, metavar="IN",
                        help="videos (a folder, a manifest or a glob), or a jobs/preprocess.py "
                        "output folder (its manifest's config then applies)")  # fmt: skip
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="training steps (20)")
    length.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="passes over the data instead of --steps (needs --num-workers)",
    )
    group = parser.add_argument_group("Ray Train (many workers)")
    group.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="Ray Train workers, data-parallel (0: train in this process)",
    )
    group.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    group.add_argument("--worker-cpus", type=float, default=None, metavar="C",
                       help="CPUs each worker holds (default: what leaves the pipeline one "
                       "CPU, at most 1)")  # fmt: skip
    group.add_argument("--checkpoint-dir", metavar="DIR",
                       help="where runs and checkpoints are kept (Ray's default: ~/ray_results); "
                       "the same DIR and --run-name continue a run")  # fmt: skip
    group.add_argument("--run-name", default=None, help="the run's name under DIR")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="videos per step (4)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda if any)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3)")
    parser.add_argument("--dim", type=positive_int, default=64, help="token width (64)")
    parser.add_argument("--depth", type=positive_int, default=2, help="encoder layers (2)")
    parser.add_argument("--heads", type=positive_int, default=4, help="attention heads (4)")
    parser.add_argument(
        "--mask-ratio", type=float, default=0.25, help="share of tokens to fill in (0.25)"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed (0)")
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    add_pipeline_flags(parser)  # for video inputs; a preprocess output brings its own config
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 < args.mask_ratio < 1.0:
        parser.error(f"--mask-ratio must be in (0, 1), got {args.mask_ratio}")
    if args.dim % args.heads:
        parser.error(f"--dim ({args.dim}) must be a multiple of --heads ({args.heads})")
    if args.worker_cpus is not None and not args.worker_cpus > 0:
        parser.error(f"--worker-cpus must be > 0, got {args.worker_cpus}")
    if args.steps is None and args.epochs is None:
        args.steps = 20
    # Ray Train's workers cannot import the model's module by name (it lives
    # beside this script, not in an installed package): it travels by value.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(masked_patches)
    return run_entry_point("train_stream.py", train, args)


if __name__ == "__main__":
    from cps_ray.jobs import drop_ray_53727

    drop_ray_53727()
    raise SystemExit(main())
