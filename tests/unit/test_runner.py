"""The worker's job runner: outputs on success, non-retryable failures for bad data."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import numpy as np
import pydicom
import torch
from pydicom.uid import CTImageStorage, generate_uid

from engine.api import Finding, ModelRegistry, ModelResult, ModelSpec, OutputRegistry, SeriesInfo
from engine.broker.worker_link import JobDone, JobFailed, JobRequest
from engine.outputs.result_json import ResultJsonWriter
from engine.outputs.seg import SegWriter
from engine.outputs.uids import derived_uid
from engine.plugins import LoadedPlugins
from engine.worker.runner import JobRunner
from tests.unit.factories import ct_slice


class ThresholdHandler:
    """Marks voxels above 0 HU; the network is the identity."""

    def preprocess(self, volume):
        return torch.from_numpy(volume.voxels[:, None])

    def postprocess(self, output, volume):
        mask = (output[:, 0].numpy() > 0).astype(np.uint8)
        return ModelResult(summary=f"{int(mask.sum())} voxels", label_map=mask, segment_labels=["Lesion"],
                           findings=[Finding("lesion", voxel_count=int(mask.sum()))])


def runner() -> JobRunner:
    models, outputs = ModelRegistry(), OutputRegistry()
    outputs.add("result_json", ResultJsonWriter())
    outputs.add("seg", SegWriter())
    models.add(ModelSpec(name="threshold", version="1", description="", selector=lambda s: True,
                         load_network=torch.nn.Identity, handler=ThresholdHandler(), max_batch=2))
    return JobRunner(LoadedPlugins(models, outputs, ("test",)))


def request(payload, model="threshold", version="1", revision: int | None = None) -> JobRequest:
    series = SeriesInfo(generate_uid(), generate_uid(), "CT", CTImageStorage, instance_count=len(payload))
    job = {"model": model, "model_version": version, "series": asdict(series)}
    if revision is not None:
        job["series_revision"] = revision
    return JobRequest("job-1", 1, job, [memoryview(p) for p in payload])


def test_job_produces_result_json_and_seg() -> None:
    study, series = generate_uid(), generate_uid()
    payload = [ct_slice(float(z), 1024 + (50 if z == 1 else -50), size=8, study_uid=study, series_uid=series)
               for z in range(3)]
    outcome = runner().handle(request(payload))
    assert isinstance(outcome, JobDone)
    names = [name for name, _, _ in outcome.artifacts]
    assert names == ["result.json", "seg.dcm"]
    document = json.loads(outcome.artifacts[0][2])
    assert document["findings"][0]["voxel_count"] == 64
    assert set(document["timings_s"]) == {"decode_s", "preprocess_s", "infer_s", "postprocess_s", "outputs_s"}
    assert outcome.result["summary"] == "64 voxels"


def test_the_job_revision_reaches_the_writers_as_their_uids() -> None:
    study, series = generate_uid(), generate_uid()
    payload = [ct_slice(float(z), 1024 + (50 if z == 1 else -50), size=8, study_uid=study, series_uid=series)
               for z in range(3)]
    uids = {}
    for revision in (1, 2):
        job = request(payload, revision=revision)
        outcome = runner().handle(job)
        assert isinstance(outcome, JobDone)
        seg = pydicom.dcmread(io.BytesIO(dict((n, d) for n, _, d in outcome.artifacts)["seg.dcm"]))
        series_uid = job.job["series"]["series_uid"]
        assert seg.SOPInstanceUID == derived_uid(series_uid, "threshold", "1", "seg", revision=revision)
        uids[revision] = seg.SOPInstanceUID
    assert uids[1] != uids[2]


def test_bad_data_unknown_model_and_version_fail_without_retry() -> None:
    run = runner()
    bad = run.handle(request([b"garbage"]))
    assert isinstance(bad, JobFailed) and not bad.retryable and bad.reason.startswith("decode:")
    unknown = run.handle(request([ct_slice(0.0, 1)], model="nope"))
    assert isinstance(unknown, JobFailed) and not unknown.retryable and "unknown model" in unknown.reason
    old = run.handle(request([ct_slice(0.0, 1)], version="0"))
    assert isinstance(old, JobFailed) and not old.retryable and "version" in old.reason


class ScaledHandler:
    """Feeds slices at a fixed 8x8 size to a model that declares its input shape, returns the mean output."""

    def preprocess(self, volume):
        return torch.nn.functional.interpolate(torch.from_numpy(volume.voxels[:, None]), size=(8, 8))

    def postprocess(self, output, volume):
        return ModelResult(summary=f"mean {float(output.mean()):.3f}", label_map=None, segment_labels=[],
                           findings=[Finding("mean", probability=float(output.mean()))])


def seeded_conv() -> torch.nn.Module:
    """The same 1x1 convolution on every load, as committed weights would be."""
    torch.manual_seed(5)
    return torch.nn.Conv2d(1, 1, 1, bias=False)


def test_a_model_with_an_input_shape_runs_on_the_configured_backend(tmp_path) -> None:
    from engine.config import WorkerConfig

    models, outputs = ModelRegistry(), OutputRegistry()
    outputs.add("result_json", ResultJsonWriter())
    models.add(ModelSpec(name="scaled", version="1", description="", selector=lambda s: True,
                         load_network=seeded_conv, handler=ScaledHandler(),
                         outputs=("result_json",), max_batch=2, input_shape=(1, 8, 8)))
    payload = [ct_slice(float(z), value=1024 + 10 * z) for z in range(3)]
    results = {}
    for backend in ("torch", "onnxruntime"):
        job_runner = JobRunner(LoadedPlugins(models, outputs, ("test",)),
                               WorkerConfig(backend=backend, model_cache=str(tmp_path)))
        try:
            outcome = job_runner.handle(request(payload, model="scaled"))
        finally:
            job_runner.close()
        assert isinstance(outcome, JobDone), outcome
        document = json.loads(dict((name, data) for name, _, data in outcome.artifacts)["result.json"])
        assert document["backend"] == f"{backend}:cpu" + (":float32" if backend == "torch" else "")
        results[backend] = outcome.result["findings"][0]["probability"]
    assert abs(results["torch"] - results["onnxruntime"]) < 1e-4


def test_the_nodule_model_through_the_runner_on_both_cpu_backends(tmp_path) -> None:
    from engine.config import WorkerConfig
    from tests.unit.test_gpu_path import run_nodule_job

    findings = {}
    for backend in ("torch", "onnxruntime"):
        from engine.testing import TEST_MODEL_CACHE

        outcome = run_nodule_job(tmp_path / backend, WorkerConfig(backend=backend, model_cache=str(TEST_MODEL_CACHE)))
        assert isinstance(outcome, JobDone), outcome
        findings[backend] = [(f["label"], f["voxel_count"]) for f in outcome.result["findings"]]
    assert findings["torch"] and len(findings["torch"]) == len(findings["onnxruntime"])
    for (label, count), (other_label, other_count) in zip(findings["torch"], findings["onnxruntime"]):
        assert label == other_label and abs(count - other_count) <= max(2, count // 200)  # logits differ by ~1e-4


def test_torch_options_channels_last_and_compile_give_the_same_result(tmp_path) -> None:
    from engine.config import WorkerConfig
    from engine.runtime.artifacts import ModelArtifacts
    from engine.runtime.selection import make_backend
    from tests.unit.test_onnx_backend import builtin_specs

    artifacts = ModelArtifacts(builtin_specs()[0], tmp_path)
    inputs = artifacts.example_input(2)[..., :64, :64]
    plain = make_backend("torch", "cpu")
    plain.initialize(artifacts)
    expected = plain._run(inputs)[0]
    settings = WorkerConfig(channels_last=True)
    shaped = make_backend("torch", "cpu", channels_last=settings.channels_last)
    shaped.initialize(artifacts)
    assert float((shaped._run(inputs)[0] - expected).abs().max()) < 1e-4
