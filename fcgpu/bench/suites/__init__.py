"""The pytest-benchmark suites (run them with ``fcgpu bench`` or ``pytest bench/``)."""
