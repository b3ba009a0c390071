"""Benchmarks (run as modules, e.g. `python -m benchmarks.models`); not part of the test suite."""
