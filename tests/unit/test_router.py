"""Router: one job per selected model, never twice, unrouted series kept."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.api import ModelRegistry, ModelResult, ModelSpec
from engine.receiver.ledger import InstanceMeta, Ledger
from engine.receiver.router import Router
from engine.receiver.spool import SpoolEntry


class _Handler:
    def preprocess(self, volume):
        return torch.zeros(1)

    def postprocess(self, output, volume):
        return ModelResult(summary="")


def registry() -> ModelRegistry:
    models = ModelRegistry()
    for name, modality in (("ct-a", "CT"), ("ct-b", "CT"), ("mr", "MR")):
        models.add(ModelSpec(name=name, version="1", description="", selector=lambda s, m=modality: s.modality == m,
                             load_network=torch.nn.Identity, handler=_Handler()))
    return models


def test_routes_each_taking_model_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    for series, modality in (("1.2.3", "CT"), ("1.2.4", "US")):
        ledger.add_instance(InstanceMeta("1.2", series, f"{series}.1", "1.2.840.10008.5.1.4.1.1.2",
                                         modality=modality), SpoolEntry(f"n{series}", 1, series), "CT1", 1.0)
    wakeups = []
    router = Router(ledger, registry(), lambda: wakeups.append(1))
    jobs = router.route("1.2.3", 1)
    assert len(jobs) == 2 and wakeups == [1]
    assert {ledger.job(j).model for j in jobs} == {"ct-a", "ct-b"}
    assert router.route("1.2.3", 1) == [] and wakeups == [1]   # idempotent
    assert len(router.route("1.2.3", 2)) == 2                     # a new revision is a new job version
    assert router.route("1.2.4", 1) == []                          # nobody takes US: stored, not an error
    assert ledger.series("1.2.4") is not None
    ledger.close()
