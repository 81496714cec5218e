"""Model level: training samples/s of the default net (3 x 500) and a wide one
(3 x 4096), batchnorm, dropout keep 0.8, batch 490, Adam, on every variant that runs
here (NumPy path, CuPy unfused, fcgpu fused, PyTorch eager and torch.compile on the
CPU and the GPU). The variants are interleaved within each test, and the terminal
summary prints the NumPy / PyTorch CPU ratio. See :mod:`fcgpu.bench.models`."""
from fcgpu.bench.measure import measure_train_case


def test_train(benchmark, train_workers, bench_opts, train_net):
    measure_train_case(benchmark, train_workers, bench_opts, train_net)
