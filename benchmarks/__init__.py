"""Benchmarks: each a module runnable as ``python -m benchmarks.<name>``, figures as ratios to a same-run baseline."""
