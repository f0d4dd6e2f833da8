"""Benchmarks: autoopt against Ray Tune and plain Optuna, and its own costs (results in docs/benchmarks.md)."""
