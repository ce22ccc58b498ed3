"""What a backend is built from: the torch network, its fingerprint, and the files derived from it.

Derived files (the ONNX export, TensorRT plans, the backend choice) live in a
cache folder per model, ``<cache root>/<model>/<version>/<fingerprint>/``; the
fingerprint hashes the weights and the declared input shapes, so changed weights
never meet a stale file. Files are written to a temporary name and renamed, so
two workers building at once cannot read half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from engine.api import ModelSpec
from engine.runtime.errors import BackendUnavailable


def network_fingerprint(network: torch.nn.Module, spec: ModelSpec) -> str:
    """SHA-256 over the model's name, version, declared shapes, class and every tensor of its state dict."""
    digest = hashlib.sha256()
    digest.update(f"{spec.name}\0{spec.version}\0{spec.input_shape}\0{spec.min_input_shape}\0"
                  f"{spec.max_input_shape}\0{type(network).__qualname__}\0".encode())
    for key, tensor in sorted(network.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def file_fingerprint(path: Path, spec: ModelSpec) -> str:
    """SHA-256 over the model's name, version, declared shapes and the bytes of its ONNX file."""
    digest = hashlib.sha256()
    digest.update(f"{spec.name}\0{spec.version}\0{spec.input_shape}\0{spec.min_input_shape}\0"
                  f"{spec.max_input_shape}\0onnx-file\0".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, produce: Callable[[Path], Any]) -> Path:
    """Call ``produce(temporary path)`` in ``path``'s folder, then rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        produce(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


class ModelArtifacts:
    """One model's network (loaded once) and its cache folder of derived files."""

    def __init__(self, spec: ModelSpec, cache_root: Path) -> None:
        self.spec = spec
        self.cache_root = Path(cache_root)
        self._network: torch.nn.Module | None = None
        self._fingerprint: str | None = None
        self._lock = threading.RLock()

    def network(self) -> torch.nn.Module:
        """The plugin's network in eval mode, loaded on first use."""
        with self._lock:
            if self.spec.onnx_file:
                raise BackendUnavailable(f"model {self.spec.name!r} is an ONNX file; torch cannot run it "
                                         "(use onnxruntime or tensorrt)")
            if self._network is None:
                network = self.spec.load_network()
                if not isinstance(network, torch.nn.Module):
                    raise TypeError(f"model {self.spec.name!r}: load_network returned {type(network).__name__}, "
                                    "expected a torch.nn.Module")
                self._network = network.eval()
            return self._network

    def fingerprint(self) -> str:
        """The weights-and-shapes hash naming this model's cache folder."""
        with self._lock:
            if self._fingerprint is None:
                if self.spec.onnx_file:
                    self._fingerprint = file_fingerprint(Path(self.spec.onnx_file), self.spec)
                else:
                    self._fingerprint = network_fingerprint(self.network(), self.spec)
            return self._fingerprint

    def folder(self) -> Path:
        """``<cache root>/<model>/<version>/<first 16 hex of the fingerprint>/`` (created)."""
        path = self.cache_root / self.spec.name / self.spec.version / self.fingerprint()[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def onnx_path(self, precision: str = "fp32") -> Path:
        """The ONNX export (``model.onnx``, or ``model-fp16.onnx`` all in fp16), made on first use.

        A model given as an ONNX file gets a copy with its input renamed for binding,
        in the file's own precision whatever ``precision`` asks.
        """
        from engine.runtime.export import export_onnx, import_onnx_file

        dtypes = {"fp32": torch.float32, "fp16": torch.float16}
        if precision not in dtypes:
            raise ValueError(f"precision must be one of {sorted(dtypes)}, got {precision!r}")
        if self.spec.onnx_file:
            with self._lock:
                path = self.folder() / "model.onnx"
                if not path.exists():
                    write_atomically(path, lambda target: import_onnx_file(Path(self.spec.onnx_file), target))
                return path
        with self._lock:
            path = self.folder() / ("model.onnx" if precision == "fp32" else f"model-{precision}.onnx")
            if not path.exists():
                write_atomically(path, lambda target: export_onnx(self.network(), self.spec, target,
                                                                  dtypes[precision]))
            return path

    def example_input(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A deterministic batch of the declared ``input_shape`` (for export, probing and parity checks)."""
        if not self.spec.input_shape:
            raise ValueError(f"model {self.spec.name!r} declares no input_shape")
        generator = torch.Generator().manual_seed(0)
        return torch.rand((batch, *self.spec.input_shape), generator=generator).to(dtype)
