"""Benchmarks: python -m bench.NAME writes bench/results/NAME.json and prints a table."""

from tf_ntk import cli  # noqa: F401  (mutes TensorFlow's C++ start-up noise before any benchmark imports it)
