"""Model-level suite (training samples/s, NumPy path vs PyTorch CPU side by side, and
the GPU variants); the code lives in fcgpu/bench/suites/test_train.py."""
from fcgpu.bench.suites.test_train import test_train  # noqa: F401
