"""Videos -> Parquet shards of patch tokens, an errors table and a manifest.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/preprocess.py --input /data/videos --output s3://bucket/patches

    python jobs/preprocess.py --input 'videos/**/*.mp4' --output out/   # a local Ray

``--resume`` adds to an output: inputs it already has are skipped and no
shard is rewritten. See ``--help`` for the options; the work is done by
:func:`cps_ray.jobs.run_preprocess`.
"""

import os
import sys
from pathlib import Path

try:
    import cps_ray  # noqa: F401
except ImportError:  # a checkout whose package is not installed: use it, here and in Ray's workers
    _root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, _root)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))

from cps_ray.jobs import preprocess_main  # noqa: E402

if __name__ == "__main__":
    from cps_ray.jobs import drop_ray_53727

    drop_ray_53727()
    raise SystemExit(preprocess_main(sys.argv[1:], prog="preprocess.py"))
