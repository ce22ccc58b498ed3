"""The engine-level benchmarks still run end to end at a tiny size; they assert no times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import latency, overhead, scaling, soak


@pytest.mark.parametrize("module, keys", [
    (overhead, {"engine_studies_per_s", "bare_studies_per_s", "ratio"}),
    (latency, {"overhead_p50_s", "overhead_p99_s", "parts_p50_s"}),
    (scaling, {"studies_per_s", "ratio_2_over_1", "projection"}),
    (soak, {"rss_samples", "rss_growth_mb", "loss"}),
])
def test_engine_benchmark_runs(module, keys: set[str], tmp_path: Path) -> None:
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*.json")
    assert keys <= set(json.loads(written.read_text()))
