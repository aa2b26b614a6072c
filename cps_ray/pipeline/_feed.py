"""Feeding training from a patch dataset: fixed-size torch batches with the
error rows skipped and counted.

Two ways, same tensors:

* :class:`TrainingBatches` over ``ds.iter_batches`` gives batches of exactly
  ``batch_size`` good videos (the last may be short unless ``drop_last``);
* :func:`collate_patches` as ``collate_fn`` of ``ds.iter_torch_batches``
  (error rows are dropped from each batch, so batches can come out short).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .._rows import row_patches

TENSOR_COLUMNS = ("patches", "meta_fields", "meta_scores", "meta_motion", "frame_indices",
                  "timestamps")  # fmt: skip


def _ok_mask(batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([not (isinstance(e, str) and e) for e in batch["error"]], dtype=bool)


def _to_torch(batch: dict[str, np.ndarray], device, pin_memory: bool) -> dict[str, Any]:
    dtype = str(batch["patches_dtype"][0]) if len(batch["path"]) else "fp32"
    patches = row_patches(
        {"patches": np.ascontiguousarray(batch["patches"]), "patches_dtype": dtype}
    )
    out: dict[str, Any] = {"patches": patches}
    for column in TENSOR_COLUMNS[1:]:
        out[column] = torch.from_numpy(np.ascontiguousarray(batch[column]))
    for key in TENSOR_COLUMNS:
        tensor = out[key]
        if pin_memory:
            tensor = tensor.pin_memory()
        out[key] = tensor.to(device, non_blocking=pin_memory)
    out["path"] = [str(p) for p in batch["path"]]
    return out


def collate_patches(batch: dict[str, np.ndarray], device="cpu", pin_memory=False) -> dict:
    """NumPy batch of rows -> ``patches [B, k, 3, p, p]`` (output dtype, bf16
    restored), ``meta_fields`` int32 ``[B, k, 3]``, ``meta_motion`` float32
    ``[B, T, 2, 3]``, ``meta_scores`` float32
    ``[B, k]``, ``frame_indices``, ``timestamps``, ``path``; error rows dropped.
    """
    keep = _ok_mask(batch)
    good = {key: np.asarray(value)[keep] for key, value in batch.items()}
    return _to_torch(good, device, pin_memory)


class TrainingBatches:
    """Iterate ``ds`` (a :func:`patch_dataset`) as training batches.

    Args:
        ds: the dataset (or anything with ``iter_batches`` giving NumPy rows).
        batch_size: good videos per batch.
        device: where the tensors go (``"cpu"``, ``"cuda:0"``...).
        pin_memory: stage through pinned host memory; default: on for CUDA.
        drop_last: drop a short last batch.

    After (or during) iteration, ``skipped`` counts error rows and
    ``skipped_paths`` names them.
    """

    def __init__(
        self,
        ds,
        batch_size: int,
        *,
        device="cpu",
        pin_memory: bool | None = None,
        drop_last: bool = False,
        prefetch_batches: int = 1,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            from ..errors import ConfigError

            raise ConfigError("batch_size", batch_size, "It must be an int >= 1.")
        self.ds = ds
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else bool(pin_memory)
        self.drop_last = drop_last
        self.prefetch_batches = prefetch_batches
        self.skipped = 0
        self.skipped_paths: list[str] = []
        self.videos = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending: list[dict[str, np.ndarray]] = []
        count = 0
        for batch in self.ds.iter_batches(
            batch_size=self.batch_size,
            batch_format="numpy",
            prefetch_batches=self.prefetch_batches,
        ):
            keep = _ok_mask(batch)
            bad = ~keep
            self.skipped += int(bad.sum())
            self.skipped_paths.extend(str(p) for p in np.asarray(batch["path"])[bad])
            if keep.any():
                pending.append({k: np.asarray(v)[keep] for k, v in batch.items()})
                count += int(keep.sum())
            while count >= self.batch_size:
                merged = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
                head = {k: v[: self.batch_size] for k, v in merged.items()}
                rest = {k: v[self.batch_size :] for k, v in merged.items()}
                pending = [rest] if len(rest["path"]) else []
                count -= self.batch_size
                self.videos += self.batch_size
                yield _to_torch(head, self.device, self.pin_memory)
        if count and not self.drop_last:
            merged = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
            self.videos += count
            yield _to_torch(merged, self.device, self.pin_memory)
