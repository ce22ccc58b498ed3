"""The engine-level benchmarks still run end to end at a tiny size; they assert no times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import broker_queue, latency, ledger_scale, overhead, receive_compare, scaling, soak


@pytest.mark.parametrize("module, keys", [
    (overhead, {"engine_studies_per_s", "bare_studies_per_s", "ratio", "rounds"}),
    (latency, {"overhead_p50_s", "overhead_p99_s", "parts_p50_s"}),
    (scaling, {"studies_per_s", "ratio_2_over_1", "projection"}),
    (soak, {"rss_samples", "rss_growth_mb", "loss"}),
    (receive_compare, {"results", "ratio_vs_dcmtk", "skipped"}),
    (broker_queue, {"round_trip_median_s", "study_mb_s", "raw_socket_mb_s", "ratio"}),
    (ledger_scale, {"sizes", "rows"}),
])
def test_engine_benchmark_runs(module, keys: set[str], tmp_path: Path) -> None:
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*.json")
    assert keys <= set(json.loads(written.read_text()))


def test_zoo_engine_benchmark_runs(tmp_path: Path) -> None:
    from benchmarks import zoo_engine

    assert zoo_engine.main(["--quick", "--models", "zoo-resnet18", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*.json")
    record = json.loads(written.read_text())["models"]["zoo-resnet18"]
    assert {"backend", "engine_studies_per_s", "bare_studies_per_s", "ratio"} <= set(record)
