"""``result.json``: what the model found, in a form people and scripts read."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from engine.api import Artifact, ModelResult, ModelSpec, Volume


def result_document(result: ModelResult, volume: Volume, spec: ModelSpec) -> dict[str, Any]:
    """The JSON-ready summary of one model result (no patient data, only UIDs and numbers)."""
    return {
        "model": spec.name,
        "model_version": spec.version,
        "summary": result.summary,
        "findings": [{k: v for k, v in asdict(f).items() if v is not None and v != []} for f in result.findings],
        **({"class_probabilities": result.class_probabilities} if result.class_probabilities else {}),
        "study_instance_uid": volume.series.study_uid,
        "series_instance_uid": volume.series.series_uid,
        "volume": {"shape": list(volume.shape), "spacing_mm": list(volume.spacing)},
        "extra": result.extra,
    }


class ResultJsonWriter:
    """Writes ``result.json``; the worker adds timings before it is filed."""

    def write(self, result: ModelResult, volume: Volume, spec: ModelSpec) -> list[Artifact]:
        data = json.dumps(result_document(result, volume, spec), indent=2, default=float).encode()
        return [Artifact(name="result.json", data=data, media_type="application/json")]
