"""Kernel level: dropout, batchnorm and the fused batchnorm-ReLU-dropout, forward and
backward, and the minibatch gather from uint8 images (augmenting, and plain as its
floor), on every variant that runs here, plus a copy of the same size as the
bandwidth reference. One test per (op, size); the variants are interleaved within it.
See :mod:`fcgpu.bench.kernels` and :mod:`fcgpu.bench.gather` for the ops, variants and
bytes counted."""
from fcgpu.bench.measure import measure_kernel_case


def test_kernel(benchmark, kernel_workers, bench_opts, kernel_case):
    op, shape = kernel_case
    measure_kernel_case(benchmark, kernel_workers, bench_opts, op, shape)
