"""``local_stream``: the pipeline's rows in-process, from a thread pool, no Ray.

PyAV decodes and the Numba kernels run without the GIL, so threads scale
over cores; each video's decode threads (decoders side by side for a long
video, FFmpeg's threads for a short one) are set so that the videos decoded
at once -- ``num_workers``, or fewer when there are fewer videos -- fill the
cores once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._config import PatchStreamConfig
from .._devices import usable_cores
from ..errors import ConfigError
from ._inputs import input_paths
from ._isolation import DEFAULT_ISOLATION, DEFAULT_MAX_ATTEMPTS
from ._worker import Worker


def local_stream(
    inputs,
    config: PatchStreamConfig,
    num_workers: int | None = None,
    *,
    isolation: str = DEFAULT_ISOLATION,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield one row per input video, in input order.

    Args:
        inputs: a list of paths, or one spec: a manifest (``.txt`` one path
            per line, ``.csv``/``.parquet`` with a ``path`` column), a folder
            or URI prefix, a glob or one video file (see
            :mod:`cps_ray.pipeline._inputs`).
        config: a :class:`PatchStreamConfig` with ``video_path=None``.
        num_workers: videos decoded at once (at most the number of
            videos); default: the cores.
        isolation: ``"process"`` (default): each of the ``num_workers``
            decodes in its own child process, so a decoder crash or hang
            costs one video (an error row), see
            :mod:`cps_ray.pipeline._isolation`; ``"none"``: threads of this
            process, no per-video cost, for trusted inputs.
        max_attempts: tries per video when its child process dies.
        progress: show a tqdm progress bar.

    Rows: see :mod:`cps_ray._rows`; a video that fails gives a row with
    ``error`` and ``error_kind`` set, never an exception. A config this node
    cannot run (explicit ``gpu`` without CUDA) raises before any row.
    """
    paths = input_paths(inputs)
    workers = num_workers if num_workers is not None else usable_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("num_workers", num_workers, "It must be an int >= 1.")
    # Fewer videos than workers: each video decodes with the cores of the
    # workers it leaves idle (a long one splits its plan over them).
    workers = min(workers, max(1, len(paths)))
    worker = Worker(
        config, concurrent_videos=workers, isolation=isolation, max_attempts=max_attempts
    )
    return _stream(paths, worker, workers, progress)


def _stream(paths, worker, workers, progress) -> Iterator[dict[str, Any]]:
    try:
        yield from _rows(paths, worker, workers, progress)
    finally:
        worker.close()


def _rows(paths, worker, workers, progress) -> Iterator[dict[str, Any]]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="video", desc="local_stream")
    # A bounded window keeps memory flat however long the input list is.
    window = 2 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cps_ray") as pool:
        pending: deque = deque()
        it = iter(paths)
        for path in it:
            pending.append(pool.submit(worker, path))
            if len(pending) >= window:
                break
        while pending:
            row = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(worker, nxt))
            if bar is not None:
                bar.update(1)
            yield row
    if bar is not None:
        bar.close()
