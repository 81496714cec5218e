"""The compiled CPU path (Numba): Philox masks and fused elementwise passes.

Each function here has a plain array-code reference (``fcgpu.random``,
``fcgpu.fused``) that the tests compare it with.
"""
