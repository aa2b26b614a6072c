"""One output row per input video: the schema of DESIGN.md, built by one
function that both ``local_stream`` and the Ray stages call, so their rows
are equal bit for bit.

Row values are NumPy arrays (what Ray Data carries). ``patches`` keeps its
bits: ``fp32``/``fp16`` as float32/float16, ``bf16`` as the raw uint16 bit
patterns (NumPy and Arrow have no bfloat16); ``patches_dtype`` says which,
and :func:`row_patches` gives the torch tensor back bit-exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..api import PatchStream
from ..errors import CpsRayError

ROW_COLUMNS = (
    "path",
    "patches",
    "patches_dtype",
    "meta_fields",
    "meta_scores",
    "frame_indices",
    "timestamps",
    "decode_backend",
    "process_backend",
    "error",
)


def patches_to_numpy(patches: torch.Tensor) -> np.ndarray:
    patches = patches.detach().cpu().contiguous()
    if patches.dtype == torch.bfloat16:
        return patches.view(torch.int16).numpy().view(np.uint16)
    return patches.numpy()


def row_patches(row: dict[str, Any]) -> torch.Tensor:
    """``patches`` of a row as a torch tensor in its ``output_dtype`` (bf16 restored)."""
    arr = np.asarray(row["patches"])
    if row["patches_dtype"] == "bf16":
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(arr.copy())


def success_row(session: PatchStream) -> dict[str, Any]:
    fields, scores = session.metadata_tensors
    return {
        "path": session.path,
        "patches": patches_to_numpy(session.patches),
        "patches_dtype": session.config.output_dtype,
        "meta_fields": fields.detach().cpu().numpy(),
        "meta_scores": scores.detach().cpu().numpy(),
        "frame_indices": session.frame_indices.cpu().numpy(),
        "timestamps": session.timestamps.cpu().numpy(),
        "decode_backend": session.decode_backend,
        "process_backend": session.process_backend,
        "error": None,
    }


def error_reason(err: BaseException) -> str:
    """A one-line reason for an error row."""
    if isinstance(err, CpsRayError):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:500] or type(err).__name__


def error_row(
    path: str, err: BaseException, decode_backend: str, process_backend: str, output_dtype: str
) -> dict[str, Any]:
    return {
        "path": path,
        "patches": None,
        "patches_dtype": output_dtype,
        "meta_fields": None,
        "meta_scores": None,
        "frame_indices": None,
        "timestamps": None,
        "decode_backend": decode_backend,
        "process_backend": process_backend,
        "error": error_reason(err),
    }
