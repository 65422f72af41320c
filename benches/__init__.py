"""Benchmarks: pytest-benchmark micro benchmarks and head-to-head scripts."""
