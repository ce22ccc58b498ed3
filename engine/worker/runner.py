"""Run one job: decode → preprocess → backend → postprocess → output writers.

Called from the worker link's compute threads. Each model's backend is chosen
(:mod:`engine.runtime.selection`) and initialised once; concurrent jobs' items
share batches through the model's :class:`~engine.worker.batcher.DynamicBatcher`. Data errors (undecodable pixels, unknown model) fail the job
without retry; anything else propagates and the link reports it as retryable.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from engine.api import Artifact, ModelSpec, PluginError, SeriesInfo, Volume
from engine.broker.worker_link import JobDone, JobFailed, JobOutcome, JobRequest
from engine.config import WorkerConfig
from engine.kernels.cuda import CudaUnavailable
from engine.logs import get_logger
from engine.outputs.highdicom_cache import preload_tables
from engine.plugins import LoadedPlugins
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import Backend
from engine.runtime.selection import BackendChoice, choose_backend, make_backend
from engine.worker.batcher import DynamicBatcher
from engine.worker.decode import DecodeError, decode_series

log = get_logger(__name__)


@dataclass
class LoadedModel:
    """A model ready to run on this worker: its backend, why that backend, and its batcher."""

    spec: ModelSpec
    backend: Backend
    choice: BackendChoice
    batcher: DynamicBatcher


class JobRunner:
    """Turns a job request into outputs with the registered models and writers."""

    def __init__(self, plugins: LoadedPlugins, settings: WorkerConfig | None = None) -> None:
        self._plugins = plugins
        self._settings = settings or WorkerConfig()
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._gpu_preprocess: Any = None
        if self._settings.device == "cuda":
            self._gpu_preprocess = _gpu_preprocessor()

    def model_names(self) -> list[str]:
        """Names of the models this worker can run."""
        return [spec.name for spec in self._plugins.models.all()]

    def warm_up(self, only: Sequence[str] = ()) -> None:
        """Choose and initialise the models' backends now (``only`` these when given: ``routing.models``),
        so the first job does not pay for it; the output writers' DICOM tables are loaded too."""
        preload_tables()
        for spec in self._plugins.models.all():
            if not only or spec.name in only:
                self._model(spec)

    def loaded(self) -> list[LoadedModel]:
        """The models initialised so far."""
        with self._lock:
            return list(self._models.values())

    def _model(self, spec: ModelSpec) -> LoadedModel:
        with self._lock:
            model = self._models.get(spec.name)
            if model is None:
                model = load_model(spec, self._settings)
                self._models[spec.name] = model
                log.info("model.loaded", model=spec.name, version=spec.version, backend=model.backend.describe(),
                         reason=model.choice.reason)
            return model

    def close(self) -> None:
        """Finish queued batches and release every backend."""
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for model in models:
            model.batcher.close()
            model.backend.finalize()

    def _preprocess(self, spec: ModelSpec, volume: Volume) -> Any:
        """The network input: the CUDA kernel for handlers that state a SlicePlan on a GPU worker, else the handler."""
        plan = getattr(spec.handler, "plan", None)
        if self._gpu_preprocess is not None and callable(plan):
            return self._gpu_preprocess.run(volume.stored, plan(volume))
        return spec.handler.preprocess(volume)

    def handle(self, request: JobRequest) -> JobOutcome:
        """Process one job; returns DONE with artifacts or a non-retryable FAIL for bad data."""
        job = request.job
        try:
            spec = self._plugins.models.get(job["model"])
        except PluginError as exc:
            return JobFailed(reason=str(exc), retryable=False)
        if spec.version != job.get("model_version"):
            return JobFailed(
                reason=f"model {spec.name!r} is version {spec.version} here, job wants {job.get('model_version')}",
                retryable=False,
            )
        series = replace(SeriesInfo(**job["series"]), revision=int(job.get("series_revision") or 1))
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        try:
            volume = decode_series(request.payload, series)
        except DecodeError as exc:
            log.warning("job.decode_failed", job=request.job_id, model=spec.name, reason=str(exc))
            return JobFailed(reason=f"decode: {exc}", retryable=False)
        timings["decode_s"], clock = time.perf_counter() - clock, time.perf_counter()
        model = self._model(spec)
        batch = self._preprocess(spec, volume)
        timings["preprocess_s"], clock = time.perf_counter() - clock, time.perf_counter()
        try:
            response = model.batcher.infer(request.job_id, batch)
        except ValueError as exc:
            log.warning("job.input_rejected", job=request.job_id, model=spec.name, reason=str(exc))
            return JobFailed(reason=f"input: {exc}", retryable=False)
        if not response.ok:
            return JobFailed(reason=f"inference: {response.error}", retryable=True)
        timings["infer_s"], clock = time.perf_counter() - clock, time.perf_counter()
        result = spec.handler.postprocess(response.output(), volume)
        timings["postprocess_s"], clock = time.perf_counter() - clock, time.perf_counter()
        artifacts: list[Artifact] = []
        try:
            for kind in spec.outputs:
                artifacts.extend(self._plugins.outputs.get(kind).write(result, volume, spec))
        except PluginError as exc:
            log.warning("job.output_failed", job=request.job_id, model=spec.name, reason=str(exc))
            return JobFailed(reason=f"output: {exc}", retryable=False)
        timings["outputs_s"] = time.perf_counter() - clock
        artifacts = [_with_timings(a, timings, request, model.backend.describe()) for a in artifacts]
        summary: dict[str, Any] = {
            "model": spec.name,
            "model_version": spec.version,
            "summary": result.summary,
            "findings": [asdict(f) for f in result.findings],
            "timings_s": timings,
            "backend": model.backend.describe(),
        }
        log.info("job.computed", job=request.job_id, model=spec.name, findings=len(result.findings),
                 infer_s=round(timings["infer_s"], 4))
        return JobDone(result=summary, artifacts=[(a.name, a.media_type, a.data) for a in artifacts])


def load_model(spec: ModelSpec, settings: WorkerConfig) -> LoadedModel:
    """Choose ``spec``'s backend under ``settings``, initialise it and give it a batcher."""
    artifacts = ModelArtifacts(spec, settings.model_cache_path())
    choice = choose_backend(artifacts, settings.backend, settings.device, settings.torch_threads)
    backend = make_backend(choice.backend, choice.device, threads=settings.torch_threads,
                           precision=settings.precision, channels_last=settings.channels_last,
                           compile=settings.torch_compile,
                           spin_wait=settings.onnx_spin_wait)
    backend.initialize(artifacts)
    in_flight = settings.batches_in_flight or (2 if settings.device == "cuda" else 1)
    batcher = DynamicBatcher(backend, max_batch=spec.max_batch, max_delay_s=settings.max_batch_delay_ms / 1000.0,
                             max_in_flight=in_flight, name=spec.name)
    return LoadedModel(spec, backend, choice, batcher)


def _gpu_preprocessor() -> Any:
    """The CUDA preprocessing path, or None (handlers' own preprocessing) when pycuda is missing."""
    from engine.worker.gpu_preprocess import GpuSlicePreprocessor

    try:
        return GpuSlicePreprocessor()
    except CudaUnavailable as error:
        log.warning("gpu_preprocess.unavailable", reason=str(error))
        return None


def _with_timings(artifact: Artifact, timings: dict[str, float], request: JobRequest, backend: str) -> Artifact:
    """Add stage timings and the job identity to ``result.json`` (other artifacts unchanged)."""
    if artifact.name != "result.json":
        return artifact
    document = json.loads(artifact.data)
    document["job_id"] = request.job_id
    document["attempt"] = request.attempt
    document["timings_s"] = {k: round(v, 6) for k, v in timings.items()}
    document["backend"] = backend
    return Artifact(artifact.name, json.dumps(document, indent=2).encode(), artifact.media_type)
