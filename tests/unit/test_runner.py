"""The worker's job runner: outputs on success, non-retryable failures for bad data."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import torch
from pydicom.uid import CTImageStorage, generate_uid

from engine.api import Finding, ModelRegistry, ModelResult, ModelSpec, OutputRegistry, SeriesInfo
from engine.broker.worker_link import JobDone, JobFailed, JobRequest
from engine.outputs.result_json import ResultJsonWriter
from engine.outputs.seg import SegWriter
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


def request(payload, model="threshold", version="1") -> JobRequest:
    series = SeriesInfo(generate_uid(), generate_uid(), "CT", CTImageStorage, instance_count=len(payload))
    job = {"model": model, "model_version": version, "series": asdict(series)}
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


def test_bad_data_unknown_model_and_version_fail_without_retry() -> None:
    run = runner()
    bad = run.handle(request([b"garbage"]))
    assert isinstance(bad, JobFailed) and not bad.retryable and bad.reason.startswith("decode:")
    unknown = run.handle(request([ct_slice(0.0, 1)], model="nope"))
    assert isinstance(unknown, JobFailed) and not unknown.retryable and "unknown model" in unknown.reason
    old = run.handle(request([ct_slice(0.0, 1)], version="0"))
    assert isinstance(old, JobFailed) and not old.retryable and "version" in old.reason
