"""Run one job: decode → preprocess → backend → postprocess → output writers.

Called from the worker link's compute threads; networks are loaded once per
model and kept. Data errors (undecodable pixels, unknown model) fail the job
without retry; anything else propagates and the link reports it as retryable.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict
from typing import Any

from engine.api import Artifact, ModelSpec, PluginError, SeriesInfo
from engine.broker.worker_link import JobDone, JobFailed, JobOutcome, JobRequest
from engine.logs import get_logger
from engine.plugins import LoadedPlugins
from engine.runtime.torch_backend import TorchBackend
from engine.worker.decode import DecodeError, decode_series

log = get_logger(__name__)


class JobRunner:
    """Turns a job request into outputs with the registered models and writers."""

    def __init__(self, plugins: LoadedPlugins, device: str = "cpu", threads: int = 0) -> None:
        self._plugins = plugins
        self._device = device
        self._threads = threads
        self._backends: dict[str, TorchBackend] = {}
        self._lock = threading.Lock()

    def model_names(self) -> list[str]:
        """Names of the models this worker can run."""
        return [spec.name for spec in self._plugins.models.all()]

    def warm_up(self) -> None:
        """Load every model's network now, so the first job does not pay for it."""
        for spec in self._plugins.models.all():
            self._backend(spec)

    def _backend(self, spec: ModelSpec) -> TorchBackend:
        with self._lock:
            backend = self._backends.get(spec.name)
            if backend is None:
                backend = TorchBackend(self._device, self._threads)
                backend.initialize(spec.load_network())
                self._backends[spec.name] = backend
                log.info("model.loaded", model=spec.name, version=spec.version, backend=backend.name)
            return backend

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
        series = SeriesInfo(**job["series"])
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        try:
            volume = decode_series(request.payload, series)
        except DecodeError as exc:
            log.warning("job.decode_failed", job=request.job_id, model=spec.name, reason=str(exc))
            return JobFailed(reason=f"decode: {exc}", retryable=False)
        timings["decode_s"], clock = time.perf_counter() - clock, time.perf_counter()
        backend = self._backend(spec)
        batch = spec.handler.preprocess(volume)
        timings["preprocess_s"], clock = time.perf_counter() - clock, time.perf_counter()
        output = backend.execute(batch, spec.max_batch)
        timings["infer_s"], clock = time.perf_counter() - clock, time.perf_counter()
        result = spec.handler.postprocess(output, volume)
        timings["postprocess_s"], clock = time.perf_counter() - clock, time.perf_counter()
        artifacts: list[Artifact] = []
        try:
            for kind in spec.outputs:
                artifacts.extend(self._plugins.outputs.get(kind).write(result, volume, spec))
        except PluginError as exc:
            log.warning("job.output_failed", job=request.job_id, model=spec.name, reason=str(exc))
            return JobFailed(reason=f"output: {exc}", retryable=False)
        timings["outputs_s"] = time.perf_counter() - clock
        artifacts = [_with_timings(a, timings, request) for a in artifacts]
        summary: dict[str, Any] = {
            "model": spec.name,
            "model_version": spec.version,
            "summary": result.summary,
            "findings": [asdict(f) for f in result.findings],
            "timings_s": timings,
            "backend": backend.name,
        }
        log.info("job.computed", job=request.job_id, model=spec.name, findings=len(result.findings),
                 infer_s=round(timings["infer_s"], 4))
        return JobDone(result=summary, artifacts=[(a.name, a.media_type, a.data) for a in artifacts])


def _with_timings(artifact: Artifact, timings: dict[str, float], request: JobRequest) -> Artifact:
    """Add stage timings and the job identity to ``result.json`` (other artifacts unchanged)."""
    if artifact.name != "result.json":
        return artifact
    document = json.loads(artifact.data)
    document["job_id"] = request.job_id
    document["attempt"] = request.attempt
    document["timings_s"] = {k: round(v, 6) for k, v in timings.items()}
    return Artifact(artifact.name, json.dumps(document, indent=2).encode(), artifact.media_type)
