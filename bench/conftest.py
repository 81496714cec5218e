"""The suites' options, fixtures and hooks live in the package (fcgpu.bench.plugin),
so that ``fcgpu bench`` works from an installed wheel too."""
from fcgpu.bench.plugin import *  # noqa: F401,F403
from fcgpu.bench.plugin import pytest_addoption, pytest_benchmark_update_json  # noqa: F401
from fcgpu.bench.plugin import pytest_generate_tests, pytest_terminal_summary  # noqa: F401
