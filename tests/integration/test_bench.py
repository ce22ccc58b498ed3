"""`scanstream bench` end to end: closed and open loop against engines it starts or one already running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.testing import EngineProcess

SMALL = ["--slices", "12", "--size", "64"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "bench", *SMALL, *args], capture_output=True,
                          text=True, timeout=600)


def test_closed_loop_on_a_started_engine_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = bench("--studies", "3", "--concurrency", "2", "--model", "nodule-seg", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "result.json").read_text())
    summary = result["summary"]
    assert (summary["studies_sent"], summary["studies_completed"]) == (3, 3)
    assert (summary["split_series"], summary["lost_series"], summary["failed_jobs"]) == (0, 0, 0)
    assert result["latency_s"]["infer"]["count"] == 3 and "sent_to_result" in result["latency_s"]
    for name in ("report.md", "latency_cdf.png", "stage_breakdown.png", "throughput.png"):
        assert (out / name).stat().st_size > 0
    assert "p99" in done.stdout


def test_open_loop_against_a_running_engine(tmp_path: Path) -> None:
    with EngineProcess(tmp_path / "engine", workers=1, extra={"routing": {"models": ["nodule-seg"]}}) as engine:
        done = bench("--studies", "3", "--rate", "4", "--concurrency", "2", "--host", "127.0.0.1",
                     "--port", str(engine.port), "--http-url", engine.http_url, "--api-token", engine.api_token,
                     "--out", str(tmp_path / "report"))
        assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "report" / "result.json").read_text())
    assert result["config"]["mode"] == "open" and result["summary"]["studies_completed"] == 3
    assert result["config"]["engine"].startswith("running engine at 127.0.0.1")


def test_dcmtk_storescu_as_the_modality(tmp_path: Path, require_storescu: str) -> None:
    done = bench("--studies", "2", "--sender", "storescu", "--model", "nodule-seg", "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "report" / "result.json").read_text())
    assert result["config"]["sender"] == "storescu"
    assert (result["summary"]["studies_completed"], result["summary"]["lost_series"]) == (2, 0)


def test_results_to_a_real_orthanc_are_measured_to_its_acknowledgement(tmp_path: Path, require_storescu: str) -> None:
    import pytest

    from engine.testing.peers import orthanc_available

    if not orthanc_available():
        pytest.skip("Orthanc is not installed; `make test` installs it (apt-get install orthanc)")
    out = tmp_path / "report"
    # DCMTK as the modality: pynetdicom's requestor can lose a C-STORE-RSP to its own reactor thread on a busy
    # machine (pynetdicom issue 875: "Received unexpected C-STORE service message", then a DIMSE timeout)
    done = bench("--studies", "2", "--sender", "storescu", "--pacs", "orthanc", "--model", "nodule-seg",
                 "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["summary"]["failed_deliveries"] == 0 and "results sent to ORTHANC@" in result["config"]["engine"]
    latency = result["latency_s"]
    assert latency["sent_to_destination"]["count"] == 2 and latency["deliver"]["count"] >= 2
    assert latency["sent_to_destination"]["p50"] >= latency["sent_to_result"]["p50"]
    assert "sent_to_destination" in (out / "report.md").read_text()


def test_model_option_routes_to_that_model_only(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = bench("--studies", "1", "--model", "nodule-seg", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "result.json").read_text())
    assert "model nodule-seg only" in result["config"]["engine"]
    assert {job["model"] for study in result["studies"] for job in study["jobs"]} == {"nodule-seg"}
