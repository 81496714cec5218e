"""Options, fixtures and hooks of the benchmark suites (see :mod:`fcgpu.bench.plugin`)."""
from fcgpu.bench.plugin import *  # noqa: F401,F403
from fcgpu.bench.plugin import pytest_addoption, pytest_benchmark_update_json  # noqa: F401
from fcgpu.bench.plugin import pytest_generate_tests, pytest_terminal_summary  # noqa: F401
