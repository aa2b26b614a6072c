"""uint8 pixel -> ``output_dtype`` value ``v / 255``, through one exact table.

Every backend converts by looking a byte up in the same 256-entry table, so
``patches`` are the same bits on every device (a CUDA division by a scalar
multiplies by the reciprocal and is off by one ulp for about half the bytes).
Each entry is ``v / 255`` correctly rounded (to nearest, ties to even) in the
output dtype, computed once with exact rational arithmetic.

The table is built with NumPy alone: a process that selects on the CPU and
hands NumPy rows on (a Ray select actor) never imports torch.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# The integer type holding each dtype's bits: kernels write bits, torch views them.
BITS_DTYPES = {"bf16": np.int16, "fp16": np.int16, "fp32": np.int32}
# How a row keeps the bits: NumPy and Arrow have no bfloat16, so bf16 stays uint16 bits.
ROW_DTYPES = {"bf16": np.uint16, "fp16": np.float16, "fp32": np.float32}


def torch_dtype(output_dtype: str) -> torch.dtype:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[output_dtype]


def _value(output_dtype: str, bits: int) -> Fraction:
    """The exact value of a non-negative bit pattern of ``output_dtype``."""
    if output_dtype == "fp16":
        return Fraction(float(np.array(bits, np.uint16).view(np.float16)))
    if output_dtype == "bf16":  # the top half of a float32
        bits <<= 16
    return Fraction(float(np.array(bits, np.uint32).view(np.float32)))


def _nearest_bits(value: Fraction, output_dtype: str) -> int:
    """The bits of ``value`` (in [0, 1]) rounded to nearest, ties to even."""
    if output_dtype == "fp16":
        guess = int(np.array(float(value), np.float16).view(np.uint16))
    else:
        guess = int(np.array(float(value), np.float32).view(np.uint32))
        if output_dtype == "bf16":
            guess >>= 16  # truncated: the nearest is this one or the next
    # The float64 route may round twice; the true nearest is the guess or a
    # neighbour (bit patterns of non-negative floats are ordered as their values).
    candidates = [bits for bits in (guess - 1, guess, guess + 1) if bits >= 0]
    return min(candidates, key=lambda bits: (abs(_value(output_dtype, bits) - value), bits & 1))


@functools.cache
def bits_table(output_dtype: str) -> np.ndarray:
    """int16 (bf16, fp16) or int32 (fp32) ``[256]``: entry ``v`` holds the
    bits of ``v / 255`` correctly rounded in ``output_dtype``."""
    bits = [_nearest_bits(Fraction(v, 255), output_dtype) for v in range(256)]
    table = np.array(bits, np.int64).astype(BITS_DTYPES[output_dtype])
    table.flags.writeable = False
    return table


def row_array(bits: np.ndarray, output_dtype: str) -> np.ndarray:
    """Kernel output written through :func:`bits_table` as a row keeps it."""
    return bits.view(ROW_DTYPES[output_dtype])


def unit_table(output_dtype: str) -> torch.Tensor:
    """``output_dtype [256]`` torch tensor on the CPU: entry ``v`` is ``v / 255``."""
    import torch

    return torch.from_numpy(bits_table(output_dtype).copy()).view(torch_dtype(output_dtype))


def from_bits(bits: torch.Tensor, output_dtype: str) -> torch.Tensor:
    """Reinterpret kernel output written through :func:`bits_table` as ``output_dtype``."""
    return bits.view(torch_dtype(output_dtype))


@functools.cache
def _device_table(output_dtype: str, device: str) -> torch.Tensor:
    return unit_table(output_dtype).to(device)


def convert(patches_u8: torch.Tensor, output_dtype: str) -> torch.Tensor:
    """uint8 patches (any device) -> ``output_dtype`` through the exact table."""
    table = _device_table(output_dtype, str(patches_u8.device))
    return table[patches_u8.long()]
