"""pytest plumbing for the suites: options, the variant workers as fixtures, the cases
as parameters, the terminal summary and what goes into ``--benchmark-json``.

How a case is measured (workers, interleaved rounds): :mod:`fcgpu.bench.measure`;
which cases and variants a run's part measures: :mod:`fcgpu.bench.schedule`. The
conftest files of the suites star-import this module.
"""
from __future__ import annotations

import pytest

from . import kernels as _kernels
from . import schedule as _schedule
from .measure import RECORD, close, load_sample, start

__all__ = ["pytest_addoption", "pytest_generate_tests", "pytest_benchmark_update_json",
           "pytest_terminal_summary", "bench_opts", "kernel_workers", "train_workers",
           "Options", "PARTS"]

PARTS = ("all", "headline", "rest")


# ----------------------------------------------------------------- options

def pytest_addoption(parser):
    g = parser.getgroup("fcgpu-bench")
    g.addoption("--fcgpu-quick", action="store_true",
                help="fewer sizes, shorter budgets, no torch.compile")
    g.addoption("--fcgpu-full", action="store_true",
                help="on a CPU-only machine also run sizes up to 2^26 and 65536x4096, and "
                     "torch.compile on the wide net")
    g.addoption("--fcgpu-variants", default=None,
                help="comma-separated variants to run (default: all that apply)")
    g.addoption("--fcgpu-partial", default=None, metavar="PATH",
                help="append each case's measurements to PATH as a JSON line as soon as it "
                     "is done (survives a run that is stopped before pytest-benchmark writes "
                     "its JSON)")
    g.addoption("--fcgpu-deadline", type=float, default=None,
                help="a Unix time: cases not started by then are skipped, with that reason")
    g.addoption("--fcgpu-budget", type=float, default=None,
                help="seconds of measurement per case (default: kernels 2, training 30; "
                     "quick: 1 and 10)")
    g.addoption("--fcgpu-part", default="all", choices=PARTS,
                help="headline: only the cases and variants of the summary figures "
                     "(fcgpu.bench.schedule); rest: everything else; all (default): "
                     "everything, the summary's cases first")


class Options:
    def __init__(self, config):
        from .. import backend
        self.quick = config.getoption("--fcgpu-quick")
        self.full = config.getoption("--fcgpu-full")
        only = config.getoption("--fcgpu-variants")
        self.only = set(v.strip() for v in only.split(",")) if only else None
        self.budget = config.getoption("--fcgpu-budget")
        self.deadline = config.getoption("--fcgpu-deadline")
        self.partial = config.getoption("--fcgpu-partial")
        self.part = config.getoption("--fcgpu-part")
        self.gpu, self.gpu_reason = backend.cupy_status()

    def kernel_budget(self):
        return self.budget or (1.0 if self.quick else 2.0)

    def train_budget(self):
        return self.budget or (10.0 if self.quick else 30.0)

    def flat_sizes(self):
        top = 26 if (self.gpu or self.full) else 24
        if self.quick:
            return [1 << e for e in sorted({16, 20, min(24, top), top})]
        return [1 << e for e in range(16, top + 1)]

    def row_shapes(self):
        shapes = [(490, 500)]
        if self.gpu or self.full:
            shapes.append((65536, 4096))
        return shapes

    def gather_batches(self):
        from .gather import BATCH, BIG_BATCH
        return [BATCH, BIG_BATCH] if (self.gpu or self.full) else [BATCH]

    def settings(self):
        from .. import backend
        return {"quick": self.quick, "full": self.full,
                "matmul_precision": backend.get_matmul_precision(),
                "variants": sorted(self.only) if self.only else None,
                "kernel_budget_s": self.kernel_budget(), "train_budget_s": self.train_budget(),
                "flat_sizes": self.flat_sizes(), "row_shapes": self.row_shapes(),
                "gather_batches": self.gather_batches(), "part": self.part,
                "gpu": self.gpu, "gpu_reason": self.gpu_reason}


_OPTIONS = None


def _opts(config):
    global _OPTIONS
    if _OPTIONS is None:
        _OPTIONS = Options(config)
        RECORD["settings"] = _OPTIONS.settings()
    return _OPTIONS


def pytest_generate_tests(metafunc):
    opts = _opts(metafunc.config)
    if "kernel_case" in metafunc.fixturenames:
        cases = _schedule.kernel_cases(opts)
        metafunc.parametrize("kernel_case", cases,
                             ids=["%s-%s" % (op, _kernels.shape_label(s)) for op, s in cases])
    if "train_net" in metafunc.fixturenames:
        metafunc.parametrize("train_net", _schedule.train_nets(opts))


# ----------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def bench_opts(request):
    opts = _opts(request.config)
    load_sample()
    return opts


@pytest.fixture(scope="module")
def kernel_workers(bench_opts):
    pool = start(_schedule.suite_variants(bench_opts, "kernels"), bench_opts)
    yield pool
    close(pool)


@pytest.fixture(scope="module")
def train_workers(bench_opts):
    pool = start(_schedule.suite_variants(bench_opts, "train"), bench_opts)
    yield pool
    close(pool)


# ----------------------------------------------------------------- reporting

def pytest_benchmark_update_json(config, benchmarks, output_json):
    from .machine import machine_info
    output_json["fcgpu"] = dict(RECORD, machine=machine_info())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    benches = getattr(bs, "benchmarks", None) or []
    lines = []
    cpu_pair = {}
    for b in benches:
        ei = getattr(b, "extra_info", {}) or {}
        ms = ei.get("measurements") or {}
        if ei.get("suite") == "kernels":
            head = "%-12s %-10s" % (ei["op"], _kernels.shape_label(ei["shape"]))
            cells = ["%s %.1f GB/s" % (v, m["gbps"]) for v, m in ms.items() if m.get("gbps")]
            lines.append(head + "  " + ", ".join(cells))
        elif ei.get("suite") == "train":
            cells = ["%s %.0f/s" % (v, m["samples_per_s"]) for v, m in ms.items()]
            lines.append("train %-8s samples/s: %s" % (ei["net"], ", ".join(cells)))
            if "numpy" in ms and "torch_cpu" in ms:
                cpu_pair[ei["net"]] = ms["numpy"]["samples_per_s"] / ms["torch_cpu"]["samples_per_s"]
    if not lines and not RECORD["variant_skips"]:
        return
    tr = terminalreporter
    tr.section("fcgpu benchmarks (per variant, interleaved rounds)")
    for ln in lines:
        tr.write_line(ln)
    for net, ratio in cpu_pair.items():
        tr.write_line("NumPy path / PyTorch CPU samples/s, %s net, same run: %.2fx "
                      "(target >= 0.9x)" % (net, ratio), bold=True)
    for v, why in RECORD["variant_skips"].items():
        tr.write_line("skipped %s: %s" % (v, why))
