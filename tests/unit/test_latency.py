"""The latency ledger: stage durations from ledger times and worker timings, percentiles, histograms."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from engine.ledger.latency import JobTimeline, StageHistograms, percentiles
from engine.ledger.store import Ledger
from tests.unit.test_ledger import SERIES, entry, meta

WORKER = {"decode_s": 0.2, "preprocess_s": 0.05, "infer_s": 1.0, "postprocess_s": 0.1, "outputs_s": 0.15}


def timeline(**overrides) -> JobTimeline:
    values = dict(job_id="j", model="m", first_received=100.0, last_received=102.0, series_complete=102.0,
                  queued=102.01, leased=102.02, finished=103.62, worker_stages=WORKER)
    values.update(overrides)
    return JobTimeline(**values)


def test_stage_seconds_split_the_time_between_last_instance_and_result() -> None:
    stages = timeline().stage_seconds()
    assert stages["receive"] == pytest.approx(2.0)
    assert stages["assemble"] == 0.0  # geometric completion: no idle wait
    assert stages["queue"] == pytest.approx(0.01)
    assert stages["infer"] == 1.0 and stages["decode"] == 0.2
    assert stages["transfer"] == pytest.approx(1.6 - 1.5)  # leased -> filed, minus the worker's 1.5 s
    assert stages["end_to_end"] == pytest.approx(1.62)


def test_stages_missing_data_are_left_out() -> None:
    stages = timeline(series_complete=None, worker_stages={}).stage_seconds()
    assert "assemble" not in stages and "infer" not in stages
    assert stages["transfer"] == pytest.approx(1.6)


def test_percentiles_per_stage() -> None:
    summary = percentiles([timeline(finished=102.02 + 1.5 + extra / 10) for extra in range(11)])
    assert summary["end_to_end"]["count"] == 11
    assert summary["end_to_end"]["p50"] == pytest.approx(1.52 + 0.5)
    assert summary["end_to_end"]["max"] == pytest.approx(1.52 + 1.0)
    assert list(summary)[:3] == ["receive", "assemble", "queue"]


def test_histograms_in_prometheus_text() -> None:
    registry = CollectorRegistry()
    histograms = StageHistograms(registry)
    histograms.observe(timeline())
    histograms.observe(timeline(job_id="k", model="other"))
    text = generate_latest(registry).decode()
    assert 'scanstream_stage_seconds_bucket{le="1.0",model="m",stage="infer"} 1.0' in text
    assert 'scanstream_stage_seconds_count{model="other",stage="end_to_end"} 1.0' in text
    assert 'scanstream_stage_seconds_bucket{le="0.5",model="m",stage="infer"} 0.0' in text


def test_the_ledger_keeps_worker_stages_of_the_successful_attempt(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        for n, at in ((1, 10.0), (2, 11.0), (3, 12.0)):
            ledger.add_instance(meta(n), entry(f"n{n}"), "CT1", at)
        ledger.complete_series(SERIES, "geometry", 12.0)
        job = ledger.create_job(SERIES, 1, "m", "1", now=12.01)
        ledger.claim_job("w", 12.02)
        assert ledger.complete_job(job, 1, "/r", 13.62, WORKER)
        (kept,) = ledger.timelines()
        assert (kept.job_id, kept.model, kept.first_received, kept.last_received, kept.series_complete,
                kept.queued, kept.leased, kept.finished) == (job, "m", 10.0, 12.0, 12.0, 12.01, 12.02, 13.62)
        assert kept.worker_stages == WORKER
        assert ledger.timelines(["nope"]) == [] and ledger.timelines([job]) == [kept]
        assert ledger.received_totals() == (3, 30)
        (series,) = ledger.study_series("1.2.3")
        assert (series.series_uid, series.instance_count, series.state) == (SERIES, 3, "complete")
        assert ledger.study_series("9.9") == []
    finally:
        ledger.close()
