"""Preprocessing kernels: the vectorised torch CPU path (CUDA kernels come with the GPU worker)."""
