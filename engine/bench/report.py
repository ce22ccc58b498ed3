"""The bench report: percentiles, a terminal table, and a folder with JSON, Markdown and three plots.

Plots (matplotlib, Agg): ``latency_cdf.png`` (one CDF per stage, log time axis),
``stage_breakdown.png`` (median seconds per stage, stacked, one bar per model) and
``throughput.png`` (studies finished and megabytes sent per time bin).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

STAGE_ORDER = ("receive", "assemble", "queue", "decode", "preprocess", "infer", "postprocess", "outputs",
               "transfer", "end_to_end", "sent_to_result")
# The stages that follow each other from the last instance received to the result filed (stacked in the breakdown).
PIPELINE = ("assemble", "queue", "decode", "preprocess", "infer", "postprocess", "outputs", "transfer")
DPI = 120


def latency_summary(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per stage (in :data:`STAGE_ORDER`): count, p50, p95, p99 and max of ``values`` (seconds)."""
    summary: dict[str, dict[str, float]] = {}
    for stage in [s for s in STAGE_ORDER if s in values] + sorted(set(values) - set(STAGE_ORDER)):
        data = np.asarray(values[stage], dtype=float)
        if data.size == 0:
            continue
        summary[stage] = {"count": int(data.size), "p50": float(np.percentile(data, 50)),
                          "p95": float(np.percentile(data, 95)), "p99": float(np.percentile(data, 99)),
                          "max": float(data.max())}
    return summary


def stage_values(result: dict[str, Any]) -> dict[str, list[float]]:
    """Every done job's stage seconds, plus ``sent_to_result`` per study (last instance sent to result written)."""
    values: dict[str, list[float]] = {}
    for study in result.get("studies", []):
        for job in study.get("jobs", []):
            if job.get("state") != "done":
                continue
            for stage, seconds in job.get("stages_s", {}).items():
                values.setdefault(stage, []).append(float(seconds))
        if study.get("result_written") is not None and study.get("last_sent"):
            values.setdefault("sent_to_result", []).append(max(0.0, study["result_written"] - study["last_sent"]))
    return values


def _models(result: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    per_model: dict[str, dict[str, list[float]]] = {}
    for study in result.get("studies", []):
        for job in study.get("jobs", []):
            if job.get("state") == "done":
                stages = per_model.setdefault(job["model"], {})
                for stage, seconds in job.get("stages_s", {}).items():
                    stages.setdefault(stage, []).append(float(seconds))
    return per_model


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_latency_cdf(result: dict[str, Any], path: Path) -> Path:
    """One CDF per stage on a log time axis; the legend gives each stage's p50 and p99 in ms."""
    values = stage_values(result)
    fig, ax = plt.subplots(figsize=(12, 6))
    stages = [s for s in STAGE_ORDER if values.get(s)]
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(stages), 1)))
    for colour, stage in zip(colours, stages):
        data = np.sort(np.maximum(np.asarray(values[stage]), 1e-5))
        data = np.concatenate([data[:1], data])  # the curve starts at 0 at the fastest job
        fraction = np.arange(0, data.size) / (data.size - 1)
        label = f"{stage}  p50 {np.percentile(data, 50) * 1e3:.0f} ms, p99 {np.percentile(data, 99) * 1e3:.0f} ms"
        ax.step(data, fraction, where="post", color=colour, linewidth=2 if stage in ("end_to_end", "infer") else 1.3,
                label=label)
    if stages:
        ax.set_xscale("log")
        ax.set_xlabel("seconds (log scale)")
        ax.set_ylabel("fraction of jobs at or below")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="stage", title_fontsize=9)
    else:
        _empty(ax, "no completed jobs")
    ax.set_title("Latency per stage (CDF)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_stage_breakdown(result: dict[str, Any], path: Path) -> Path:
    """Per model, the median seconds of each pipeline stage from last instance received to result filed, stacked.

    ``receive`` (the send itself) is left out: it measures the network and the
    sender, and is shown by the CDF and the tables.
    """
    per_model = _models(result)
    fig, ax = plt.subplots(figsize=(12, 1.8 + 0.9 * max(len(per_model), 1)))
    if per_model:
        colours = plt.get_cmap("tab10")(np.arange(len(PIPELINE)) % 10)
        names = sorted(per_model)
        for row, model in enumerate(names):
            left = 0.0
            total = sum(float(np.median(per_model[model].get(s, [0.0]))) for s in PIPELINE)
            for colour, stage in zip(colours, PIPELINE):
                width = float(np.median(per_model[model].get(stage, [0.0])))
                ax.barh(row, width, left=left, color=colour, edgecolor="white",
                        label=stage if row == 0 else None)
                if total and width / total > 0.07:
                    ax.text(left + width / 2, row, f"{stage}\n{width * 1e3:.0f} ms", ha="center", va="center",
                            fontsize=8, color="white")
                left += width
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("median seconds")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="stage", title_fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    else:
        _empty(ax, "no completed jobs")
    ax.set_title("Where the time goes, per model (last instance received -> result filed)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_throughput(result: dict[str, Any], path: Path) -> Path:
    """Studies finished and MB sent per time bin since the first send (bins of ~1/30 of the run, at least 1 s)."""
    studies = result.get("studies", [])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    if studies:
        start = min(s["first_sent"] for s in studies)
        finished = [s["result_written"] - start for s in studies if s.get("result_written")]
        sent_end = [s["last_sent"] - start for s in studies]
        span = max(finished + sent_end + [1.0])
        width = max(1.0, span / 30)
        edges = np.arange(0, span + width, width)
        done, _ = np.histogram(finished, bins=edges)
        # Spread each study's bytes evenly over its send (first to last instance) rather than at its end.
        points = [np.linspace(s["first_sent"] - start, s["last_sent"] - start, 32) for s in studies]
        weights = [np.full(32, s["bytes"] / 1e6 / 32) for s in studies]
        mb, _ = np.histogram(np.concatenate(points), bins=edges, weights=np.concatenate(weights))
        top.bar(edges[:-1], done / width, width=width, align="edge", color="tab:green", edgecolor="white")
        top.set_ylabel("studies finished / s")
        bottom.bar(edges[:-1], mb / width, width=width, align="edge", color="tab:blue", edgecolor="white")
        bottom.set_ylabel("MB sent / s")
        bottom.set_xlabel("seconds since the first send")
        for ax in (top, bottom):
            ax.grid(True, axis="y", alpha=0.3)
    else:
        _empty(top, "no studies")
    top.set_title("Throughput over time")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def markdown_report(result: dict[str, Any]) -> str:
    """The report as Markdown: machine, settings, summary, latency table, the plots."""
    summary, config, machine = result["summary"], result["config"], result.get("machine", {})
    checks = summary["split_series"] + summary["lost_series"]
    lines = [
        "# ScanStream bench report", "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch {machine.get('torch', '?')}, "
        f"ONNX Runtime {machine.get('onnxruntime', '?')}; {machine.get('date', '')}.", "",
        f"Run: {config['mode']} loop, concurrency {config['concurrency']}"
        + (f", rate {config['rate_per_s']} studies/s" if config.get("rate_per_s") else "")
        + f"; workload: {config['workload']}; engine: {config['engine']}.", "",
        "| studies sent | completed | instances | MB | wall s | studies/s | instances/s | MB/s | split series "
        "| lost series | failed jobs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {summary['studies_sent']} | {summary['studies_completed']} | {summary['instances']} "
        f"| {summary['bytes'] / 1e6:.1f} | {summary['wall_s']:.2f} | {summary['studies_per_s']:.3f} "
        f"| {summary['instances_per_s']:.1f} | {summary['mb_per_s']:.2f} | {summary['split_series']} "
        f"| {summary['lost_series']} | {summary['failed_jobs']} |", "",
    ]
    if checks:
        lines += [f"**Warning: {checks} series were split or lost; they must be 0.**", ""]
    lines += ["Latency per stage (ms):", "", "| stage | count | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]
    for stage, row in result.get("latency_s", {}).items():
        lines.append(f"| {stage} | {row['count']} | {row['p50'] * 1e3:.1f} | {row['p95'] * 1e3:.1f} "
                     f"| {row['p99'] * 1e3:.1f} | {row['max'] * 1e3:.1f} |")
    lines += ["", "![latency CDF](latency_cdf.png)", "", "![stage breakdown](stage_breakdown.png)", "",
              "![throughput](throughput.png)", ""]
    return "\n".join(lines)


def write_report(result: dict[str, Any], folder: Path) -> list[Path]:
    """``result.json``, ``report.md`` and the three plots in ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    (folder / "report.md").write_text(markdown_report(result))
    return [folder / "result.json", folder / "report.md",
            plot_latency_cdf(result, folder / "latency_cdf.png"),
            plot_stage_breakdown(result, folder / "stage_breakdown.png"),
            plot_throughput(result, folder / "throughput.png")]


def terminal_table(result: dict[str, Any]) -> Table:
    """Summary and per-stage percentiles (ms) for the terminal."""
    summary = result["summary"]
    table = Table(title=f"scanstream bench: {summary['studies_completed']}/{summary['studies_sent']} studies, "
                        f"{summary['studies_per_s']:.3f} studies/s, {summary['instances_per_s']:.1f} instances/s, "
                        f"{summary['mb_per_s']:.2f} MB/s, split {summary['split_series']}, "
                        f"lost {summary['lost_series']}, failed jobs {summary['failed_jobs']}")
    for column in ("stage", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, row in result.get("latency_s", {}).items():
        table.add_row(stage, str(row["count"]), *(f"{row[k] * 1e3:.1f}" for k in ("p50", "p95", "p99", "max")))
    return table
