"""Router: one job per selected model, never twice, unrouted series kept."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine.api import ModelRegistry, ModelResult, ModelSpec
from engine.ledger.store import InstanceMeta, Ledger
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


@pytest.fixture()
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "l.sqlite")
    for series, modality in (("1.2.3", "CT"), ("1.2.4", "US")):
        ledger.add_instance(InstanceMeta("1.2", series, f"{series}.1", "1.2.840.10008.5.1.4.1.1.2",
                                         modality=modality),
                            SpoolEntry(f"n{series}", 1, series), "CT1", 1.0)
    yield ledger
    ledger.close()


def test_routes_each_taking_model_once(ledger: Ledger) -> None:
    wakeups: list[int] = []
    router = Router(ledger, registry(), lambda: wakeups.append(1), max_attempts=5)
    jobs = router.route("1.2.3", 1)
    assert len(jobs) == 2 and wakeups == [1]
    assert {(ledger.job(j).model, ledger.job(j).series_revision, ledger.job(j).max_attempts) for j in jobs} == \
        {("ct-a", 1, 5), ("ct-b", 1, 5)}
    assert router.route("1.2.3", 1) == [] and wakeups == [1]     # idempotent: no job, no wake-up
    assert len(ledger.list_jobs()) == 2
    assert len(router.route("1.2.3", 2)) == 2 and wakeups == [1, 1]  # a new revision is a new job version


def test_series_no_model_takes_is_kept_and_logged(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    wakeups: list[int] = []
    router = Router(ledger, registry(), lambda: wakeups.append(1))
    with caplog.at_level(logging.INFO, logger="engine.receiver.router"):
        assert router.route("1.2.4", 1) == []
    assert [r.getMessage() for r in caplog.records] == ["series.unrouted"]
    assert "1.2.4" not in str(caplog.records[0].__dict__.get("fields"))  # opaque key, not the UID
    assert wakeups == [] and ledger.series("1.2.4") is not None and ledger.list_jobs() == []


def test_priority_from_the_data_orders_the_queue(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    ledger = Ledger(tmp_path / "p.sqlite")
    for index, value in enumerate(("ROUTINE", " stat ", None, "WHENEVER")):
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2", f"1.2.{index}"
        ds.SOPInstanceUID, ds.SOPClassUID, ds.Modality = f"1.2.{index}.1", "1.2.840.10008.5.1.4.1.1.2", "CT"
        if value is not None:
            ds.RequestedProcedurePriority = value
        meta = InstanceMeta.from_dataset(ds, priority_tag="00401003")
        ledger.add_instance(meta, SpoolEntry(f"n{index}", 1, str(index)), "CT1", 1.0 + index)
        ledger.complete_series(f"1.2.{index}", "test", 10.0)
    router = Router(ledger, registry(), lambda: None, priority_values={"STAT": 100, "ROUTINE": 0})
    assert [router.priority(f"1.2.{i}") for i in range(4)] == [0, 100, 0, 0]
    for index in range(4):
        router.route(f"1.2.{index}", 1)
    first = ledger.claim_job("w", 20.0)
    assert first.series_uid == "1.2.1" and first.priority == 100
    assert ledger.claim_job("w", 20.0).series_uid == "1.2.1"  # its second model, then the oldest others
    assert ledger.claim_job("w", 20.0).series_uid == "1.2.0"


def test_priority_tag_config_is_checked() -> None:
    from engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="routing.priority_tag"):
        load_config(environ={"SCANSTREAM_ROUTING__PRIORITY_TAG": "NotAKeyword"})
    config = load_config(environ={"SCANSTREAM_ROUTING__PRIORITY_TAG": "RequestedProcedurePriority",
                                  "SCANSTREAM_ROUTING__PRIORITY_VALUES": '{"urgent": 7}'})
    assert config.routing.priority_values == {"URGENT": 7}


def test_routing_models_limits_the_models_used(ledger: Ledger) -> None:
    from engine.api import PluginError

    ledger.complete_series("1.2.3", "test", 5.0)
    router = Router(ledger, registry(), lambda: None, enabled=["ct-b"])
    router.route("1.2.3", 1)
    assert [job.model for job in ledger.list_jobs()] == ["ct-b"]
    with pytest.raises(PluginError, match="routing.models names unregistered model.*nope"):
        Router(ledger, registry(), lambda: None, enabled=["nope"])


def test_a_selector_that_raises_skips_its_model_only(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    from engine.web.models_view import why_unrouted

    def broken(series):
        raise KeyError("BodyPartExamined")

    models = registry()
    models.add(ModelSpec(name="broken", version="1", description="", selector=broken,
                         load_network=torch.nn.Identity, handler=_Handler()))
    router = Router(ledger, models, lambda: None)
    with caplog.at_level(logging.INFO, logger="engine.receiver.router"):
        jobs = router.route("1.2.3", 1)
    assert sorted(ledger.job(j).model for j in jobs) == ["ct-a", "ct-b"]  # the others still run
    (failed,) = [r for r in caplog.records if r.getMessage() == "router.selector_failed"]
    assert failed.levelno == logging.ERROR
    assert failed.__dict__["fields"]["model"] == "broken"
    assert failed.__dict__["fields"]["error"] == "KeyError: 'BodyPartExamined'"
    reasons = why_unrouted(ledger.series_info("1.2.4"), models.all(), ())
    assert "broken: its selector raised KeyError: 'BodyPartExamined'" in reasons


def test_a_new_model_runs_on_new_series_only_unless_backfilled(ledger: Ledger) -> None:
    import time
    from datetime import date, timedelta

    from engine.receiver.router import backfill

    first = ModelRegistry()
    first.add(ModelSpec(name="ct-a", version="1", description="", selector=lambda s: s.modality == "CT",
                        load_network=torch.nn.Identity, handler=_Handler()))
    revision = ledger.complete_series("1.2.3", "test", time.time())
    assert ledger.unrouted_series_revisions() == [("1.2.3", revision)]  # completed, not routed yet (a crash)
    Router(ledger, first, lambda: None).route("1.2.3", revision)
    assert ledger.unrouted_series_revisions() == []  # start-up routes nothing again: no re-run on history
    later = Router(ledger, registry(), lambda: None)  # ct-b and mr are new
    assert backfill(ledger, later, date(2100, 1, 1), models=["ct-b"]) == 0  # nothing completed since then
    yesterday = date.today() - timedelta(days=1)
    assert backfill(ledger, later, yesterday, models=["ct-b"]) == 1
    jobs = {job.model: job for job in ledger.list_jobs()}
    assert set(jobs) == {"ct-a", "ct-b"} and (jobs["ct-a"].deliver, jobs["ct-b"].deliver) == (1, 0)
    assert backfill(ledger, later, yesterday, deliver=True) == 0  # every model: each job exists once
