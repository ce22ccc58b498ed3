"""Synthetic data: phantom chest CT studies and radiographs with known nodules (demo, training, tests, benchmarks)."""
