"""Benchmarks: python -m bench.NAME writes bench/results/NAME.json and prints a table."""

import binaries  # noqa: F401  (mutes TensorFlow's C++ start-up noise before any benchmark imports it)
