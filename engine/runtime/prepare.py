"""Ahead-of-time model preparation (``scanstream models build``) and the backend report (``scanstream plugins``).

Preparing a model exports it to ONNX, builds the TensorRT plan on a CUDA worker
that has TensorRT, and on a CPU worker times torch against ONNX Runtime; all of
it lands in the model cache, so workers start without paying for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.api import ModelSpec
from engine.config import WorkerConfig
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.errors import BackendError, BackendUnavailable
from engine.runtime.export import ExportError
from engine.runtime.selection import BackendChoice, choose_backend, host_key, make_backend


@dataclass(frozen=True)
class PreparedModel:
    """What preparing one model produced: the ONNX file, a TensorRT plan, and the backend choice."""

    name: str
    version: str
    onnx: Path | None
    plan: Path | None
    choice: BackendChoice | None
    problem: str | None = None


def prepare_model(spec: ModelSpec, settings: WorkerConfig, *, refresh: bool = False) -> PreparedModel:
    """Export, build and measure ``spec`` for a worker configured by ``settings``."""
    artifacts = ModelArtifacts(spec, settings.model_cache_path())
    onnx_path: Path | None = None
    plan: Path | None = None
    try:
        if spec.input_shape:
            onnx_path = artifacts.onnx_path()
        if refresh:
            kept = artifacts.folder() / f"cpu-choice-{host_key(settings.torch_threads)}.json"
            kept.unlink(missing_ok=True)
        choice = choose_backend(artifacts, settings.backend, settings.device, settings.torch_threads)
        if choice.backend == "tensorrt":
            from engine.runtime.tensorrt_backend import build_only

            plan = build_only(artifacts, settings.precision)
    except (BackendError, ExportError, ValueError) as error:
        return PreparedModel(spec.name, spec.version, onnx_path, plan, None, str(error))
    return PreparedModel(spec.name, spec.version, onnx_path, plan, choice)


def describe_choice(spec: ModelSpec, settings: WorkerConfig, *, measure: bool) -> str:
    """One line: the backend ``spec`` will use on a worker with ``settings`` and why.

    Without ``measure``, a CPU choice that has not been timed on this host yet is
    reported as such instead of being measured.
    """
    artifacts = ModelArtifacts(spec, settings.model_cache_path())
    if (not measure and settings.backend == "auto" and settings.device == "cpu" and spec.input_shape
            and not (artifacts.folder() / f"cpu-choice-{host_key(settings.torch_threads)}.json").exists()):
        return "torch or onnxruntime: not timed on this host yet (`scanstream models build` times them)"
    try:
        choice = choose_backend(artifacts, settings.backend, settings.device, settings.torch_threads)
    except (BackendError, ExportError, ValueError) as error:
        return f"unavailable: {error}"
    try:
        make_backend(choice.backend, choice.device, threads=settings.torch_threads, precision=settings.precision)
    except BackendUnavailable as error:
        return f"{choice.backend} on {choice.device} ({choice.reason}) cannot run here: {error}"
    return f"{choice.backend} on {choice.device}: {choice.reason}"
