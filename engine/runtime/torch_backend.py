"""The torch backend: the plugin's network in inference mode, on the CPU or a CUDA device.

On CUDA, host inputs are staged through a reused page-locked buffer and copied
asynchronously; inputs already on the device (the CUDA preprocessing kernels
write there) are used in place. ``channels_last`` and ``torch.compile`` are
options because they help some networks and hurt others: the backend
benchmark says which.
"""

from __future__ import annotations

import threading

import torch

from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import Backend, Outputs
from engine.runtime.errors import BackendError, BackendUnavailable

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


class TorchBackend(Backend):
    """Runs a torch module; fp16 only on CUDA (CPU half-precision convolutions are slow)."""

    name = "torch"

    def __init__(self, device: str = "cpu", *, threads: int = 0, precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False) -> None:
        super().__init__(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch has no CUDA device here (torch.cuda.is_available() is False)")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise ValueError("precision fp16 needs a CUDA device")
        self._torch_device = torch.device(device)
        self._threads = threads
        self._dtype = PRECISIONS[precision]
        self._channels_last = channels_last
        self._compile = compile
        self._network: torch.nn.Module | None = None
        self._staging: torch.Tensor | None = None
        self._staging_lock = threading.Lock()

    def describe(self) -> str:
        """Backend, device and precision."""
        return f"{self.name}:{self.device}:{str(self._dtype).removeprefix('torch.')}"

    def initialize(self, artifacts: ModelArtifacts) -> None:
        """Move the network to the device and precision, freeze it, and optionally compile it."""
        self._bind(artifacts)
        if self._threads:
            torch.set_num_threads(self._threads)
        network = artifacts.network().to(self._torch_device, self._dtype).eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        if self._channels_last:
            network = network.to(memory_format=torch.channels_last)
        if self._compile:
            network = torch.compile(network, dynamic=True)
        self._network = network

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on the device in the run precision; host tensors go through the pinned staging buffer."""
        if batch.device == self._torch_device or self._torch_device.type == "cpu":
            moved = batch.to(self._torch_device, self._dtype)
        else:
            with self._staging_lock:
                count = batch.numel()
                if self._staging is None or self._staging.numel() < count:
                    self._staging = torch.empty(count, dtype=self._dtype).pin_memory()
                staged = self._staging[:count].view(batch.shape)
                staged.copy_(batch)
                moved = staged.to(self._torch_device, non_blocking=True)
                torch.cuda.current_stream(self._torch_device).synchronize()  # staging is reused by the next call
        if self._channels_last and moved.ndim == 4:
            moved = moved.contiguous(memory_format=torch.channels_last)
        return moved

    def _run(self, batch: torch.Tensor) -> Outputs:
        """One forward pass; outputs come back float32 on the device they were computed on."""
        if self._network is None:
            raise BackendError("TorchBackend used before initialize")
        with torch.inference_mode():
            result = self._network(self._to_device(batch))
        outputs = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        return tuple(o.float() for o in outputs)

    def finalize(self) -> None:
        """Drop the network and the staging buffer."""
        self._network = None
        self._staging = None
