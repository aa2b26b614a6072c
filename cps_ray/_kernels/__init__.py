"""Patch-energy kernels: ``reference`` (the oracle), ``cpu`` (Numba) and
``cuda`` (Numba CUDA). Each exposes ``select(frames, patch_size, k_keep, *,
flat=None, warp=None)`` with the same signature and returns
``(patches_u8, flat_indices, energies)``; ``warp`` is the camera motion in
fixed point (see ``reference``). ``motion`` holds the motion estimator's kernels.
"""
