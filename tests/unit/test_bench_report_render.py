"""The bench report renders readable files from a result, including the empty and the bad cases."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread
from rich.console import Console

from engine.bench.report import latency_summary, stage_values, terminal_table, write_report


def result(studies: int = 20, split: int = 0) -> dict:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(studies):
        first = 1000.0 + i
        stages = {"queue": 0.002, "decode": 0.05, "preprocess": 0.01, "infer": float(rng.uniform(0.3, 0.6)),
                  "postprocess": 0.02, "outputs": 0.08, "transfer": 0.01, "end_to_end": 0.7}
        rows.append({"study_uid": f"1.2.{i}", "first_sent": first, "last_sent": first + 0.4,
                     "result_written": first + 1.1, "instances": 48, "bytes": 6_000_000,
                     "jobs": [{"model": "seg" if i % 2 else "cls", "state": "done", "finished": first + 1.1,
                               "stages_s": stages}]})
    out = {"benchmark": "scanstream-bench", "machine": {"cpu": "test", "cores": 2},
           "config": {"mode": "closed", "concurrency": 2, "rate_per_s": None, "studies": studies,
                      "duration_s": None, "workload": "synthetic", "engine": "none"},
           "summary": {"studies_sent": studies, "studies_completed": studies, "send_errors": 0,
                       "instances": 48 * studies, "bytes": 6_000_000 * studies, "wall_s": 25.0,
                       "studies_per_s": studies / 25.0, "instances_per_s": 48 * studies / 25.0,
                       "mb_per_s": 6 * studies / 25.0, "split_series": split, "lost_series": 0, "failed_jobs": 0},
           "studies": rows}
    out["latency_s"] = latency_summary(stage_values(out))
    return out


def test_percentiles_of_a_known_list() -> None:
    summary = latency_summary({"infer": [float(v) for v in range(1, 101)], "custom": [2.0]})
    assert summary["infer"]["count"] == 100 and summary["infer"]["p50"] == 50.5 and summary["infer"]["max"] == 100
    assert summary["infer"]["p99"] == np.percentile(range(1, 101), 99)
    assert list(summary) == ["infer", "custom"]


def test_sent_to_result_is_per_study() -> None:
    values = stage_values(result(3))
    assert np.allclose(values["sent_to_result"], [0.7, 0.7, 0.7])
    assert len(values["infer"]) == 3


def test_report_folder_has_json_markdown_and_png_plots(tmp_path) -> None:
    paths = write_report(result(), tmp_path)
    assert {p.name for p in paths} == {"result.json", "report.md", "latency_cdf.png", "stage_breakdown.png",
                                       "throughput.png"}
    for name in ("latency_cdf.png", "stage_breakdown.png", "throughput.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = imread(tmp_path / name).shape[:2]
        assert width >= 1000 and height >= 200
    markdown = (tmp_path / "report.md").read_text()
    assert "| infer | 20 |" in markdown and "![latency CDF](latency_cdf.png)" in markdown
    assert "split or lost" not in markdown


def test_split_series_are_flagged_and_an_empty_run_still_reports(tmp_path) -> None:
    write_report(result(2, split=1), tmp_path / "bad")
    assert "**Warning: 1 series were split or lost" in (tmp_path / "bad" / "report.md").read_text()
    empty = result(0)
    empty["summary"]["wall_s"] = 1e-9
    assert len(write_report(empty, tmp_path / "empty")) == 5


def test_terminal_table_shows_percentiles() -> None:
    console = Console(record=True, width=140)
    console.print(terminal_table(result()))
    text = console.export_text()
    assert "p99 ms" in text and "infer" in text and "split 0" in text
