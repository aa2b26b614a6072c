"""One output row per input video: the schema of DESIGN.md, built by one
function that both ``local_stream`` and the Ray stages call, so their rows
are equal bit for bit.

Row values are NumPy arrays (what Ray Data carries); an error row has the
same columns with zero-filled arrays and ``error`` set. ``patches`` keeps its
bits: ``fp32``/``fp16`` as float32/float16, ``bf16`` as the raw uint16 bit
patterns (NumPy and Arrow have no bfloat16); ``patches_dtype`` says which,
and :func:`row_patches` gives the torch tensor back bit-exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._config import PatchStreamConfig
from ..errors import CpsRayError

if TYPE_CHECKING:  # torch is imported where tensors are: a decode actor needs none
    import torch

    from .._core import PatchStream
from ._inputs import local_path, row_path, transport_path  # noqa: F401  (re-exported)

STORAGE = {"fp32": np.float32, "fp16": np.float16}

ROW_COLUMNS = (
    "path",
    "patches",
    "patches_dtype",
    "meta_fields",
    "meta_scores",
    "frame_indices",
    "timestamps",
    "stream_index",
    "decode_backend",
    "process_backend",
    "device_fallback",
    "error",
)
# String columns that are null in most rows (Arrow types a column of only
# nulls as null; shards cast them back to string).
NULLABLE_STRING_COLUMNS = ("device_fallback", "error")


def patches_to_numpy(patches: torch.Tensor | np.ndarray) -> np.ndarray:
    """Patches as a row keeps them; a NumPy array (from
    :func:`~cps_ray._select.select_on_cpu`) already is."""
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


def make_row(
    path: str,
    patches: torch.Tensor | np.ndarray,
    meta_fields: torch.Tensor | np.ndarray,
    meta_scores: torch.Tensor | np.ndarray,
    frame_indices,
    timestamps,
    decode_backend: str,
    process_backend: str,
    output_dtype: str,
    device_fallback: str | None = None,
    stream_index: int = 0,
) -> dict[str, Any]:
    """A success row from tensors on any device, or from NumPy arrays (the
    patches as a row keeps them). ``device_fallback``: why ``auto`` decoded
    on the CPU of a GPU node (None when it did not); ``stream_index``: the
    file's video stream decoded."""
    return {
        "path": row_path(path),
        "patches": patches_to_numpy(patches),
        "patches_dtype": output_dtype,
        "meta_fields": _on_host(meta_fields),
        "meta_scores": _on_host(meta_scores),
        "frame_indices": _host_array(frame_indices, np.int64),
        "timestamps": _host_array(timestamps, np.float64),
        "stream_index": int(stream_index),
        "decode_backend": decode_backend,
        "process_backend": process_backend,
        "device_fallback": device_fallback or None,
        "error": None,
    }


def _on_host(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _host_array(values, dtype) -> np.ndarray:
    return np.array(_on_host(values), dtype=dtype)  # a copy: rows own their arrays


def success_row(session: PatchStream) -> dict[str, Any]:
    fields, scores = session.metadata_tensors
    return make_row(
        session.path,
        session.patches,
        fields,
        scores,
        session.frame_indices,
        session.timestamps,
        session.decode_backend,
        session.process_backend,
        session.config.output_dtype,
        session.device_fallback,
        session.stream_index,
    )


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


def error_reason(err: BaseException) -> str:
    """A one-line reason for an error row."""
    if isinstance(err, CpsRayError):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:500] or type(err).__name__


def error_row(
    path: str,
    err: BaseException | str,
    config: PatchStreamConfig,
    decode_backend: str,
    process_backend: str,
    device_fallback: str | None = None,
) -> dict[str, Any]:
    """A failed video: ``error`` set, arrays zero-filled placeholders of the
    normal shapes and dtypes (``frame_indices`` -1), so every row of a
    dataset shares one schema."""
    k, p, t = config.k_keep, config.patch_size, config.sequence_length
    patches_dtype = np.uint16 if config.output_dtype == "bf16" else STORAGE[config.output_dtype]
    return {
        "path": row_path(path),
        "patches": np.zeros((k, 3, p, p), patches_dtype),
        "patches_dtype": config.output_dtype,
        "meta_fields": np.zeros((k, 3), np.int32),
        "meta_scores": np.zeros((k,), np.float32),
        "frame_indices": np.full((t,), -1, np.int64),
        "timestamps": np.zeros((t,), np.float64),
        "stream_index": -1,
        "decode_backend": decode_backend,
        "process_backend": process_backend,
        "device_fallback": device_fallback or None,
        "error": err if isinstance(err, str) else error_reason(err),
    }
