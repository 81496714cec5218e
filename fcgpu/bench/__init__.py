"""Benchmarks of fcgpu against the NumPy path, plain CuPy and PyTorch, and the report.

Layout (``bench/README.md`` says why each part is there):

* :mod:`fcgpu.bench.variants`: every variant in one table; everything else reads it.
* :mod:`fcgpu.bench.suites`: the pytest-benchmark suites (kernel level and model
  level). ``bench/`` in the source tree re-exports them, so ``pytest bench/`` and
  ``fcgpu bench`` run the same code; :mod:`fcgpu.bench.plugin` is their pytest glue
  and :mod:`fcgpu.bench.measure` how they measure a case.
* :mod:`fcgpu.bench.worker`: every variant is measured in its own subprocess (one
  per variant, started through :mod:`fcgpu.bench.child`), driven by the suite, which
  interleaves the variants round by round. Thread pools of different libraries
  (OpenBLAS, Numba, PyTorch's OpenMP) never share a process, so none spins against
  another, and noise on a shared machine hits all variants alike.
* :mod:`fcgpu.bench.kernels` / :mod:`fcgpu.bench.gather` / :mod:`fcgpu.bench.models`:
  what each variant runs.
* :mod:`fcgpu.bench.experiments`, :mod:`fcgpu.bench.course_run`: the notebook's
  dropout experiments, time-to-accuracy, and the course's whole run.
* :mod:`fcgpu.bench.runner`: one ``fcgpu bench`` run of the suites;
  :mod:`fcgpu.bench.results`: pytest-benchmark JSON -> one results JSON with a
  ``summary``; :mod:`fcgpu.bench.report`: results JSON -> Markdown + PNG plots.
* :mod:`fcgpu.bench.schedule`: the four summary figures' cases (``fcgpu bench --part
  headline``), the time estimates the GPU check's plan rests on, and what each part
  measures.
"""

RESULTS_FORMAT = "fcgpu-bench-1"

# Targets from the design notes ("Performance targets"): key -> (goal, description)
TARGETS = {
    "dropout_fwd_bw_frac": (0.85, "dropout forward, fraction of D2D copy bandwidth (2^26 fp32)"),
    "dropout_bwd_bw_frac": (0.85, "dropout backward, fraction of D2D copy bandwidth (2^26 fp32)"),
    "fused_vs_unfused": (2.5, "fused BN-ReLU-dropout forward vs CuPy as a user writes it "
                              "(a cupy.random mask; batchnorm, ReLU, dropout as separate ops)"),
    "train_vs_torch": (2.0, "GPU training samples/s, fcgpu over PyTorch eager"),
    "train_vs_cpu": (None, "GPU training samples/s, fcgpu over the NumPy path"),
    "cpu_train_vs_torch": (0.9, "CPU training samples/s, NumPy path over PyTorch CPU"),
}
