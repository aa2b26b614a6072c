"""Patch-energy kernels: ``reference`` (the oracle), ``cpu`` (Numba) and
``cuda`` (Numba CUDA). Each exposes ``select(frames, patch_size, k_keep)``
with the same signature and returns ``(patches_u8, flat_indices, energies)``.
"""
