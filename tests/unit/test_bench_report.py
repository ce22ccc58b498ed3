"""The bench report on a realistic run (two models per study, some failures) and on degenerate ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from engine.bench.report import STAGE_ORDER, latency_summary, markdown_report, stage_values, terminal_table, \
    write_report

PNGS = ("latency_cdf.png", "stage_breakdown.png", "throughput.png")
WORKER = ("decode", "preprocess", "infer", "postprocess", "outputs")


def synthetic(studies: int = 30, seed: int = 11, split: int = 1, lost: int = 2) -> dict[str, Any]:
    """``studies`` studies of two models each; study 3's seg job failed and study 7 never got a result."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(studies):
        first = 1_700_000_000.0 + 0.9 * i + rng.uniform(0, 0.2)
        last = first + rng.uniform(0.3, 1.2)
        jobs, finished = [], []
        for model, infer in (("seg", 0.8), ("triage", 0.1)):
            stages = {"receive": last - first, "assemble": 0.0 if i % 4 == 0 else rng.lognormal(np.log(0.4), 0.2),
                      "queue": rng.lognormal(np.log(0.003), 0.8),
                      **{s: rng.lognormal(np.log(0.03), 0.3) for s in WORKER}, "transfer": 0.0}
            stages["infer"] = rng.lognormal(np.log(infer), 0.2)
            stages["end_to_end"] = sum(v for k, v in stages.items() if k != "receive")
            failed = i == 3 and model == "seg"
            done_at = None if failed or i == 7 else last + stages["end_to_end"]
            if done_at is not None:
                finished.append(done_at)
            jobs.append({"model": model, "state": "failed" if failed else "done" if done_at else "running",
                         "finished": done_at, "stages_s": {"receive": stages["receive"]} if failed else stages})
        rows.append({"study_uid": f"1.2.3.{i}", "first_sent": first, "last_sent": last,
                     "result_written": max(finished) if i != 7 else None, "instances": 64,
                     "bytes": 33_000_000, "jobs": jobs})
    result: dict[str, Any] = {
        "benchmark": "scanstream-bench", "machine": {"cpu": "Synthetic CPU", "cores": 8},
        "config": {"mode": "open", "concurrency": 4, "rate_per_s": 1.1, "studies": studies, "duration_s": None,
                   "workload": "synthetic", "engine": "none"},
        "summary": {"studies_sent": studies, "studies_completed": studies - 1, "instances": 64 * studies,
                    "bytes": 33_000_000 * studies, "wall_s": 30.0, "studies_per_s": (studies - 1) / 30.0,
                    "instances_per_s": 64 * studies / 30.0, "mb_per_s": 33 * studies / 30.0,
                    "split_series": split, "lost_series": lost, "failed_jobs": 1},
        "studies": rows}
    result["latency_s"] = latency_summary(stage_values(result))
    return result


def check_pngs(folder: Path) -> None:
    for name in PNGS:
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 15_000, name  # a real figure, not a blank canvas
        height, width = imread(folder / name).shape[:2]
        assert width >= 1200 and 300 <= height <= 1000, (name, width, height)


def test_latency_summary_of_a_known_list() -> None:
    summary = latency_summary({"zzz": [5.0], "infer": [0.4, 0.1, 0.3, 0.2], "queue": [], "receive": [2.0, 2.0]})
    assert list(summary) == ["receive", "infer", "zzz"]  # pipeline order, unknown stages last, empty ones dropped
    infer = summary["infer"]
    assert infer["count"] == 4 and infer["max"] == 0.4
    assert infer["p50"] == pytest.approx(0.25) and infer["p95"] == pytest.approx(0.385)
    assert infer["p99"] == pytest.approx(0.397)
    assert summary["zzz"] == {"count": 1, "p50": 5.0, "p95": 5.0, "p99": 5.0, "max": 5.0}


def test_stage_values_take_done_jobs_and_one_sent_to_result_per_finished_study() -> None:
    result = synthetic()
    result["studies"][0]["jobs"][1]["stages_s"]["queue"] = None
    result["studies"][1]["jobs"][1]["stages_s"]["queue"] = float("nan")
    values = stage_values(result)
    done = 30 * 2 - 1 - 2  # one failed job, two still running in the study without a result
    assert len(values["infer"]) == len(values["end_to_end"]) == done
    assert len(values["queue"]) == done - 2
    assert len(values["receive"]) == done  # the failed job's partial stages are left out
    assert len(values["sent_to_result"]) == 29
    study = result["studies"][0]
    assert values["sent_to_result"][0] == pytest.approx(study["result_written"] - study["last_sent"])


def test_report_folder_of_a_realistic_run(tmp_path: Path) -> None:
    result = synthetic()
    paths = write_report(result, tmp_path / "report")
    assert [p.name for p in paths] == ["result.json", "report.md", *PNGS]
    assert all(p.exists() for p in paths)
    check_pngs(tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    for stage in [s for s in STAGE_ORDER if s in result["latency_s"]]:  # no destination in this run
        row = result["latency_s"][stage]
        assert f"| {stage} | {row['count']} | {row['p50'] * 1e3:.1f} | {row['p95'] * 1e3:.1f} " in markdown
    assert "| 30 | 29 | 1920 | 990.0 | 30.00 | 0.967 | 64.0 | 33.00 | **1** | **2** | **1** | 0 |" in markdown
    assert "**Warning: 3 series were split or lost (1 split, 2 lost)" in markdown
    assert "Synthetic CPU, 8 cores" in markdown and "open loop, concurrency 4, rate 1.1 studies/s" in markdown
    for name in PNGS:
        assert f"]({name})" in markdown


def test_a_clean_run_has_no_warning() -> None:
    result = synthetic(split=0, lost=0)
    result["summary"]["failed_jobs"] = 0
    assert "Warning" not in markdown_report(result)


def test_no_completed_study_still_writes_a_report(tmp_path: Path) -> None:
    result = synthetic(6)
    for study in result["studies"]:
        study["result_written"] = None
        for job in study["jobs"]:
            job.update(state="failed", finished=None, stages_s={"receive": 0.5})
    result["summary"].update(studies_completed=0, studies_per_s=0.0, failed_jobs=12)
    result["latency_s"] = latency_summary(stage_values(result))
    assert result["latency_s"] == {}
    write_report(result, tmp_path)
    check_pngs(tmp_path)
    assert "No latency samples" in (tmp_path / "report.md").read_text()


def test_no_studies_and_no_latency_key(tmp_path: Path) -> None:
    result = synthetic(1)
    result["studies"] = []
    del result["latency_s"]
    assert len(write_report(result, tmp_path)) == 5
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in PNGS)


def test_a_single_job_gives_single_value_stages(tmp_path: Path) -> None:
    result = synthetic(1)
    result["studies"][0]["jobs"] = result["studies"][0]["jobs"][:1]
    result["latency_s"] = latency_summary(stage_values(result))
    infer = result["latency_s"]["infer"]
    assert infer["count"] == 1 and infer["p50"] == infer["p99"] == infer["max"]
    write_report(result, tmp_path)
    check_pngs(tmp_path)


def test_terminal_table_renders_summary_and_percentiles() -> None:
    console = Console(record=True, width=120)
    console.print(terminal_table(synthetic()))
    text = console.export_text()
    assert "p99 ms" in text and "split 1" in text and "lost 2" in text and "29/30 studies" in text
    assert all(stage in text for stage in STAGE_ORDER if not stage.endswith(("deliver", "delivered", "destination")))
    assert "sent_to_destination" not in text  # no destination in this run
    empty = synthetic(1)
    empty["latency_s"] = {}
    console.print(terminal_table(empty))
    assert "(no samples)" in console.export_text()


def test_bench_model_and_plugin_options_configure_the_started_engine() -> None:
    from engine.bench.run import BenchSettings, model_sections
    from engine.commands.bench import _plugin_options
    from engine.config import ConfigError

    options = _plugin_options(["zoo.unet3d.patch=64", "zoo.input_size=75"])
    sections = model_sections(BenchSettings(model="zoo-resnet18", plugin_options=options))
    assert sections == {"plugins": {"options": {"zoo.unet3d.patch": "64", "zoo.input_size": "75"},
                                    "modules": ["plugins.zoo"]},
                        "routing": {"models": ["zoo-resnet18"]}}
    assert model_sections(BenchSettings(model="nodule-seg")) == {"routing": {"models": ["nodule-seg"]}}
    with pytest.raises(ConfigError, match="--option: expected KEY=VALUE"):
        _plugin_options(["zoo.input_size"])
