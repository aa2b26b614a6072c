"""One output row per input video (``docs/architecture.md``, "Rows"): built by
one function for ``local_stream``, the Ray stages and the jobs alike, so
their rows are equal bit for bit.

Row values are NumPy arrays (what Ray Data carries); an error row has the
same columns with zero-filled arrays, ``error`` (one line) and
``error_kind`` (see :mod:`cps_ray.errors`) set. ``patches`` keeps its bits:
``fp32``/``fp16`` as float32/float16, ``bf16`` as the raw uint16 bit
patterns (NumPy and Arrow have no bfloat16); ``patches_dtype`` says which,
and :func:`row_patches` gives the torch tensor back bit-exactly.

Paths travel between stages as Arrow strings (UTF-8): a local file name that
is not valid UTF-8 crosses as :func:`transport_path` and is turned back by
:func:`local_path`; a row shows :func:`row_path`.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ._remote import redact
from .errors import CpsRayError

if TYPE_CHECKING:  # torch is imported where tensors are: a decode actor needs none
    import torch

STORAGE = {"fp32": np.float32, "fp16": np.float16}

ROW_COLUMNS = (
    "path",
    "patches",
    "patches_dtype",
    "meta_fields",
    "meta_scores",
    "meta_motion",
    "frame_indices",
    "timestamps",
    "stream_index",
    "decode_backend",
    "process_backend",
    "device_fallback",
    "error",
    "error_kind",
)
# String columns that are null in most rows (Arrow types a column of only
# nulls as null; shards cast them back to string).
NULLABLE_STRING_COLUMNS = ("device_fallback", "error", "error_kind")

# A local file name that is not valid UTF-8 crosses as this marker and its
# bytes in base64; no real path holds a NUL.
_RAW_NAME = "\0fsname:"


def transport_path(path: str) -> str:
    """``path`` as a valid UTF-8 string that :func:`local_path` turns back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return _RAW_NAME + base64.b64encode(os.fsencode(path)).decode("ascii")
    return path


def local_path(transported: str) -> str:
    """The path :func:`transport_path` was given."""
    if transported.startswith(_RAW_NAME):
        return os.fsdecode(base64.b64decode(transported[len(_RAW_NAME) :]))
    return transported


def row_path(path: str) -> str:
    """The ``path`` a row shows: a URI's credentials redacted, and the bytes
    of a file name that is not valid UTF-8 as ``\\xff`` escapes."""
    shown = redact(path)
    try:
        shown.encode("utf-8")
    except UnicodeEncodeError:
        return shown.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return shown


def patches_to_numpy(patches: torch.Tensor | np.ndarray) -> np.ndarray:
    """Patches as a row keeps them; a NumPy array (from the CPU kernel) already is."""
    if isinstance(patches, np.ndarray):
        return patches
    import torch

    patches = patches.detach().cpu().contiguous()
    if patches.dtype == torch.bfloat16:
        return patches.view(torch.int16).numpy().view(np.uint16)
    return patches.numpy()


def row_patches(row: dict[str, Any]) -> torch.Tensor:
    """``patches`` of a row as a torch tensor in its ``output_dtype`` (bf16 restored)."""
    import torch

    arr = np.asarray(row["patches"])
    if row["patches_dtype"] == "bf16":
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(arr.copy())


def _on_host(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _host_array(values, dtype) -> np.ndarray:
    return np.array(_on_host(values), dtype=dtype)  # a copy: rows own their arrays


def make_row(decoded, selected, output_dtype: str) -> dict[str, Any]:
    """A success row from a :class:`~cps_ray._core.DecodeResult` and a
    :class:`~cps_ray._core.Selection` (tensors on any device, or NumPy)."""
    return {
        "path": row_path(decoded.path),
        "patches": patches_to_numpy(selected.patches),
        "patches_dtype": output_dtype,
        "meta_fields": _on_host(selected.meta_fields),
        "meta_scores": _on_host(selected.meta_scores),
        "meta_motion": _host_array(selected.meta_motion, np.float32),
        "frame_indices": _host_array(decoded.frame_indices, np.int64),
        "timestamps": _host_array(decoded.timestamps, np.float64),
        "stream_index": int(decoded.stream_index),
        "decode_backend": decoded.decode_backend,
        "process_backend": selected.process_backend,
        "device_fallback": decoded.device_fallback or None,
        "error": None,
        "error_kind": None,
    }


def failure(err: BaseException) -> tuple[str, str]:
    """``(reason, kind)`` of an error row: one line, and the kind the error
    carries (``internal`` for an exception cps_ray did not raise on purpose)."""
    if isinstance(err, CpsRayError):
        text, kind = str(err), getattr(err, "kind", None) or "internal"
    else:
        text, kind = f"{type(err).__name__}: {err}", "internal"
    return " ".join(text.split())[:500] or type(err).__name__, kind


def error_row(
    path: str,
    why: tuple[str, str],
    config,
    decode_backend: str,
    process_backend: str | None,
    device_fallback: str | None = None,
) -> dict[str, Any]:
    """A failed video: ``why`` is ``(reason, kind)``; arrays are zero-filled
    placeholders of the normal shapes and dtypes (``frame_indices`` and
    ``stream_index`` -1), so every row of a dataset shares one schema."""
    k, p, t = config.k_keep, config.patch_size, config.sequence_length
    patches_dtype = np.uint16 if config.output_dtype == "bf16" else STORAGE[config.output_dtype]
    reason, kind = why
    return {
        "path": row_path(path),
        "patches": np.zeros((k, 3, p, p), patches_dtype),
        "patches_dtype": config.output_dtype,
        "meta_fields": np.zeros((k, 3), np.int32),
        "meta_scores": np.zeros((k,), np.float32),
        "meta_motion": np.zeros((t, 2, 3), np.float32),
        "frame_indices": np.full((t,), -1, np.int64),
        "timestamps": np.zeros((t,), np.float64),
        "stream_index": -1,
        "decode_backend": decode_backend,
        "process_backend": process_backend,
        "device_fallback": device_fallback or None,
        "error": reason,
        "error_kind": kind,
    }


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> a columnar NumPy batch (Ray Data's ``numpy`` batch format)."""
    batch: dict[str, np.ndarray] = {}
    for column in ROW_COLUMNS:
        values = [row[column] for row in rows]
        if values and isinstance(values[0], np.ndarray):
            batch[column] = np.stack(values)
        elif values and isinstance(values[0], int):
            batch[column] = np.array(values, dtype=np.int64)
        else:
            batch[column] = np.array(values, dtype=object)
    return batch
