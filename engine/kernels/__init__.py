"""Preprocessing kernels shared by model handlers: the vectorised torch CPU path lives in :mod:`engine.kernels.cpu`."""
