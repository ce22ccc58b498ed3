"""The torch backend: a network in inference mode, run in micro-batches."""

from __future__ import annotations

from typing import Any

import torch


class TorchBackend:
    """Runs a torch module on CPU or CUDA.

    ``execute`` splits a batch into micro-batches of at most ``max_batch`` items so
    a long series never needs one huge activation buffer.
    """

    name = "torch"

    def __init__(self, device: str = "cpu", threads: int = 0) -> None:
        self.device = torch.device(device)
        self._threads = threads
        self._network: torch.nn.Module | None = None

    def initialize(self, network: torch.nn.Module) -> None:
        """Move the network to the device and freeze it for inference."""
        if self._threads:
            torch.set_num_threads(self._threads)
        self._network = network.to(self.device).eval()
        for parameter in self._network.parameters():
            parameter.requires_grad_(False)

    def execute(self, batch: Any, max_batch: int) -> torch.Tensor:
        """Run the network over ``batch`` (first axis = items) and concatenate the outputs."""
        if self._network is None:
            raise RuntimeError("TorchBackend.execute called before initialize")
        tensor = torch.as_tensor(batch)
        outputs = []
        with torch.inference_mode():
            for start in range(0, tensor.shape[0], max_batch):
                chunk = tensor[start:start + max_batch].to(self.device, non_blocking=True)
                outputs.append(self._network(chunk).to("cpu"))
        return torch.cat(outputs, dim=0)

    def finalize(self) -> None:
        """Release the network."""
        self._network = None
