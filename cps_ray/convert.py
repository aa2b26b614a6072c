"""uint8 pixel -> ``output_dtype`` value ``v / 255``, through one exact table.

Every backend converts by looking a byte up in the same 256-entry table, so
``patches`` are the same bits on every device (a CUDA division by a scalar
multiplies by the reciprocal and is off by one ulp for about half the bytes).
Each entry is ``v / 255`` correctly rounded (to nearest, ties to even) in the
output dtype, computed once with exact rational arithmetic.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
import torch

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The integer type holding each dtype's bits: kernels write bits, torch views them.
BITS_DTYPES = {"bf16": np.int16, "fp16": np.int16, "fp32": np.int32}
_TORCH_BITS = {np.int16: torch.int16, np.int32: torch.int32}


def _nearest(value: Fraction, dtype: torch.dtype) -> torch.Tensor:
    """``value`` rounded to nearest, ties to even, in ``dtype`` (a 0-d tensor)."""
    guess = torch.tensor(float(value), dtype=torch.float64).to(dtype)
    # The float64 route may round twice; the true nearest is the guess or a neighbour.
    up = torch.nextafter(guess, torch.tensor(2.0, dtype=dtype))
    down = torch.nextafter(guess, torch.tensor(-1.0, dtype=dtype))

    def key(candidate: torch.Tensor) -> tuple[Fraction, int]:
        bits = int(candidate.view(torch.int16 if dtype != torch.float32 else torch.int32))
        return abs(Fraction(float(candidate)) - value), bits & 1  # then the even one

    return min((down, guess, up), key=key)


@functools.cache
def unit_table(output_dtype: str) -> torch.Tensor:
    """``output_dtype [256]`` on the CPU: entry ``v`` is ``v / 255`` correctly rounded."""
    dtype = TORCH_DTYPES[output_dtype]
    return torch.stack([_nearest(Fraction(v, 255), dtype) for v in range(256)])


@functools.cache
def bits_table(output_dtype: str) -> np.ndarray:
    """The bits of :func:`unit_table` as int16 (bf16, fp16) or int32 (fp32) ``[256]``."""
    bits = BITS_DTYPES[output_dtype]
    table = unit_table(output_dtype).view(_TORCH_BITS[bits]).numpy().copy()
    table.flags.writeable = False
    return table


def from_bits(bits: torch.Tensor, output_dtype: str) -> torch.Tensor:
    """Reinterpret kernel output written through :func:`bits_table` as ``output_dtype``."""
    return bits.view(TORCH_DTYPES[output_dtype])


@functools.cache
def _device_table(output_dtype: str, device: str) -> torch.Tensor:
    return unit_table(output_dtype).to(device)


def convert(patches_u8: torch.Tensor, output_dtype: str) -> torch.Tensor:
    """uint8 patches (any device) -> ``output_dtype`` through the exact table."""
    table = _device_table(output_dtype, str(patches_u8.device))
    return table[patches_u8.long()]
