"""The ONNX Runtime backend: the model's ONNX export in an InferenceSession (CPU, or CUDA where present).

On two CPU cores ONNX Runtime runs the built-in U-Net 2-3x faster than torch
eager (``benchmarks/backends.py``), which is why backend selection measures
rather than assumes.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import torch

from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import Backend, Outputs
from engine.runtime.errors import BackendError, BackendUnavailable
from engine.runtime.export import INPUT_NAME


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or :class:`BackendUnavailable` saying how to get it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as error:
        raise BackendUnavailable(f"onnxruntime is not importable ({error}); pip install onnxruntime") from error


def runtime_errors(ort: ModuleType) -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises (its pybind11 ones derive from Exception directly)."""
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail", "NotFound")
    found = tuple(getattr(state, name) for name in names if isinstance(getattr(state, name, None), type))
    return found + (RuntimeError, ValueError)


class OnnxRuntimeBackend(Backend):
    """Runs the exported ONNX graph; the CUDA execution provider is used when the device is ``cuda``."""

    name = "onnxruntime"

    def __init__(self, device: str = "cpu", *, threads: int = 0, spin_wait: bool = False) -> None:
        super().__init__(device)
        self._ort = import_onnxruntime()
        provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
        if provider not in self._ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime here has no {provider} "
                                     f"(available: {', '.join(self._ort.get_available_providers())})")
        self._providers = [provider]
        self._threads = threads
        self._spin_wait = spin_wait
        self._errors = runtime_errors(self._ort)
        self._session: Any = None
        self._output_names: list[str] = []

    def initialize(self, artifacts: ModelArtifacts) -> None:
        """Export (or reuse) the ONNX file and open a session with all graph optimisations."""
        self._bind(artifacts)
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads:
            options.intra_op_num_threads = self._threads
        # Spinning keeps the runtime's threads busy-waiting after every run; on a shared CPU that time is taken
        # from the job thread (outputs) and the receiver. Off: latency beyond the model -15% on 2 vCPUs, same infer.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spin_wait else "0")
        options.log_severity_level = 3  # errors only: the JSON log carries ScanStream's own lines
        try:
            self._session = self._ort.InferenceSession(str(artifacts.onnx_path()), options,
                                                       providers=self._providers)
        except self._errors as error:
            raise BackendError(f"onnxruntime could not load model {artifacts.spec.name!r}: {error}") from error
        self._output_names = [output.name for output in self._session.get_outputs()]

    def _run(self, batch: torch.Tensor) -> Outputs:
        """One session run on a float32 host copy of ``batch``."""
        if self._session is None:
            raise BackendError("OnnxRuntimeBackend used before initialize")
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        try:
            results = self._session.run(self._output_names, {INPUT_NAME: array})
        except self._errors as error:
            raise BackendError(f"onnxruntime run failed: {error}") from error
        return tuple(torch.from_numpy(np.asarray(result)) for result in results)

    def finalize(self) -> None:
        """Close the session."""
        self._session = None
