"""The bench report: percentiles, a terminal table, and a folder with JSON, Markdown and three plots.

Plots (matplotlib, Agg): ``latency_cdf.png`` (one CDF per stage, log time axis),
``stage_breakdown.png`` (median seconds per stage, stacked, one bar per model) and
``throughput.png`` (studies finished and megabytes sent per time bin).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

STAGE_ORDER = ("receive", "assemble", "queue", "decode", "preprocess", "infer", "postprocess", "outputs",
               "transfer", "end_to_end", "sent_to_result", "deliver", "end_to_end_delivered", "sent_to_destination")
# The stages that follow each other from the last instance received to the result filed (stacked in the breakdown).
PIPELINE = ("assemble", "queue", "decode", "preprocess", "infer", "postprocess", "outputs", "transfer")
DPI = 120
# Same colour for a stage in every plot; the three totals are drawn dark and dashed so they stand out.
STAGE_COLOURS = {stage: plt.get_cmap("tab10")(i) for i, stage in enumerate(PIPELINE)}
STAGE_COLOURS.update({"receive": "0.55", "end_to_end": "black", "sent_to_result": "darkred", "deliver": "teal",
                      "end_to_end_delivered": "0.3", "sent_to_destination": "purple"})
TOTALS = ("receive", "end_to_end", "sent_to_result", "end_to_end_delivered", "sent_to_destination")
BIN_WIDTHS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
FLOOR_S = 1e-4  # zero durations (the engine clamps at 0) are drawn here on the log axis


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing or unusable stage values are skipped)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _ms(seconds: float) -> str:
    """Seconds as a short human duration: ``0.42 ms``, ``37 ms``, ``1.25 s``."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms"


def _seconds_axis(axis: Any) -> None:
    """Log-axis ticks as ``1 ms``, ``100 ms``, ``1 s`` instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda x, _: (f"{x:g} s" if x >= 1 else f"{x * 1e3:g} ms")))


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
    """Every done job's stage seconds, plus per study ``sent_to_result`` (last instance sent to result written)
    and, with destinations, ``sent_to_destination`` (to the last destination's acknowledgement).

    Jobs that did not finish (failed, still running) are left out: their stages
    stop part way and would drag the percentiles down. Non-numeric values are skipped.
    """
    values: dict[str, list[float]] = {}
    for study in result.get("studies", []):
        for job in study.get("jobs", []):
            if job.get("state") != "done":
                continue
            for stage, seconds in (job.get("stages_s") or {}).items():
                if (number := _number(seconds)) is not None:
                    values.setdefault(stage, []).append(number)
        written, last_sent = _number(study.get("result_written")), _number(study.get("last_sent"))
        if written is not None and last_sent:
            values.setdefault("sent_to_result", []).append(max(0.0, written - last_sent))
        delivered = _number(study.get("result_delivered"))
        if delivered is not None and last_sent:
            values.setdefault("sent_to_destination", []).append(max(0.0, delivered - last_sent))
    return values


def _models(result: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    per_model: dict[str, dict[str, list[float]]] = {}
    for study in result.get("studies", []):
        for job in study.get("jobs", []):
            if job.get("state") == "done":
                stages = per_model.setdefault(str(job.get("model", "?")), {})
                for stage, seconds in (job.get("stages_s") or {}).items():
                    if (number := _number(seconds)) is not None:
                        stages.setdefault(stage, []).append(number)
    return per_model


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def plot_latency_cdf(result: dict[str, Any], path: Path) -> Path:
    """One CDF per stage on a log time axis; the legend gives each stage's count, p50 and p99.

    The percentiles are those of :func:`latency_summary` (so they match the
    tables); dotted guides mark the 50th and 99th percentile levels. Job stages
    count one sample per done job, ``sent_to_result`` one per study. Durations
    below 0.1 ms (the engine reports 0 for a stage with no wait) are drawn at 0.1 ms.
    """
    values = stage_values(result)
    summary = latency_summary(values)
    fig, ax = plt.subplots(figsize=(12, 6))
    stages = [s for s in STAGE_ORDER if values.get(s)] + sorted(s for s in values if s not in STAGE_ORDER and values[s])
    extra = itertools.cycle(plt.get_cmap("Dark2")(np.arange(8)).tolist())  # stages this module does not know
    for stage in stages:
        data = np.sort(np.maximum(np.asarray(values[stage], dtype=float), FLOOR_S))
        x = np.concatenate([data[:1], data])  # the step starts at 0 at the fastest sample
        fraction = np.arange(x.size) / data.size
        row = summary[stage]
        label = f"{stage} (n={row['count']})  p50 {_ms(row['p50'])}, p99 {_ms(row['p99'])}"
        total = stage in TOTALS
        ax.step(x, fraction, where="post", color=STAGE_COLOURS.get(stage) or next(extra), label=label,
                linewidth=2.2 if total or stage == "infer" else 1.4, linestyle="--" if total else "-")
    if stages:
        for level, name in ((0.5, "p50"), (0.99, "p99")):
            ax.axhline(level, color="grey", linestyle=":", linewidth=1)
            ax.annotate(name, (1.0, level), xycoords=("axes fraction", "data"), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8, color="grey")
        ax.set_xscale("log")
        _seconds_axis(ax.xaxis)
        ax.set_xlabel("duration (log scale; values below 0.1 ms drawn at 0.1 ms)")
        ax.set_ylabel("fraction of samples at or below")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=8, title="stage", title_fontsize=9,
                  frameon=False)
    else:
        _empty(ax, "no completed jobs: no latency to plot")
    ax.set_title("Latency per stage (CDF; one sample per done job, per study for sent_to_result)")
    fig.tight_layout()
    return _save(fig, path)


def plot_stage_breakdown(result: dict[str, Any], path: Path) -> Path:
    """Per model, the median seconds of each pipeline stage from last instance received to result filed, stacked.

    ``receive`` (first to last instance of the series) is left out: it measures
    the sender and the network rather than the engine, overlaps the other
    stages of earlier series, and would dwarf them; the CDF and the tables show
    it. The bar ends at the sum of the medians (printed), which is close to but
    not the median ``end_to_end``.
    """
    per_model = _models(result)
    names = sorted(per_model)
    fig, ax = plt.subplots(figsize=(12, 2.2 + 0.8 * max(len(names), 1)))
    if names:
        medians = {m: {s: float(np.median(per_model[m][s])) if per_model[m].get(s) else 0.0 for s in PIPELINE}
                   for m in names}
        totals = {m: sum(medians[m].values()) for m in names}
        span = max(max(totals.values()), 1e-9)
        for row, model in enumerate(names):
            left = 0.0
            for stage in PIPELINE:
                width = medians[model][stage]
                ax.barh(row, width, left=left, height=0.6, color=STAGE_COLOURS[stage], edgecolor="white",
                        linewidth=0.8, label=stage if row == 0 else None)
                share = width / span
                if share > 0.09:
                    ax.text(left + width / 2, row, f"{stage}\n{_ms(width)}", ha="center", va="center", fontsize=8,
                            color="white", fontweight="bold")
                elif share > 0.045:
                    ax.text(left + width / 2, row, _ms(width).replace(" ", "\n"), ha="center", va="center",
                            fontsize=7, color="white")
                left += width
            jobs = len(per_model[model].get("end_to_end") or next(iter(per_model[model].values()), []))
            ax.text(left + span * 0.01, row, f"{_ms(totals[model])}  (n={jobs})", va="center", fontsize=9)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()  # first model (alphabetically) on top
        ax.set_xlim(0, span * 1.18)
        ax.set_xlabel("median seconds per stage, stacked (receive not shown: it is the send)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="stage", title_fontsize=9,
                  frameon=False)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    else:
        _empty(ax, "no completed jobs")
    ax.set_title("Where the time goes, per model (last instance received \u2192 result filed)")
    fig.tight_layout()
    return _save(fig, path)


def plot_throughput(result: dict[str, Any], path: Path) -> Path:
    """Studies finished per second and MB sent per second over time since the first send, two stacked panels.

    Bins are the narrowest of :data:`BIN_WIDTHS_S` (0.25 s to 1 h) that gives at
    most 30 of them: 0.25 s for a few-second run, 1 s for 30 s, 30 s for 15 min. Each
    study's bytes are spread evenly over its send (first to last instance); a
    study with no usable send window (a send that failed at once) is left out of
    the MB panel. Dashed lines are the run's means.
    """
    studies = [s for s in result.get("studies", []) if _number(s.get("first_sent")) is not None]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    if studies:
        start = min(float(s["first_sent"]) for s in studies)
        finished = [float(s["result_written"]) - start for s in studies
                    if _number(s.get("result_written")) is not None]
        windows = [(float(s["first_sent"]) - start, float(s["last_sent"]) - start, float(s.get("bytes") or 0))
                   for s in studies if (_number(s.get("last_sent")) or 0.0) >= float(s["first_sent"])]
        span = max(finished + [w[1] for w in windows] + [1.0])
        width = next((w for w in BIN_WIDTHS_S if span / w <= 30), BIN_WIDTHS_S[-1])
        edges = np.arange(0, span + width, width)
        done, _ = np.histogram(finished, bins=edges)
        points = [np.linspace(a, b, 32) for a, b, _ in windows] or [np.zeros(0)]
        weights = [np.full(32, n / 1e6 / 32) for _, _, n in windows] or [np.zeros(0)]
        mb, _ = np.histogram(np.concatenate(points), bins=edges, weights=np.concatenate(weights))
        top.bar(edges[:-1], done / width, width=width, align="edge", color="tab:green", edgecolor="white",
                linewidth=0.5)
        top.set_ylabel("studies finished / s")
        if finished:
            mean = len(finished) / max(max(finished), 1e-9)
            top.axhline(mean, color="darkgreen", linestyle="--", linewidth=1.2,
                        label=f"mean {mean:.2f} studies/s ({len(finished)} finished)")
            top.legend(loc="upper right", fontsize=8)
        else:
            top.text(0.5, 0.5, "no study finished", ha="center", va="center", transform=top.transAxes,
                     fontsize=12, color="grey")
            top.set_ylim(0, 1)
        bottom.bar(edges[:-1], mb / width, width=width, align="edge", color="tab:blue", edgecolor="white",
                   linewidth=0.5)
        bottom.set_ylabel("MB sent / s")
        if windows:
            sent_mb = sum(n for _, _, n in windows) / 1e6
            send_span = max(max(b for _, b, _ in windows), 1e-9)
            rate = sent_mb / send_span
            bottom.axhline(rate, color="navy", linestyle="--", linewidth=1.2,
                           label=f"mean while sending {rate:.{1 if rate >= 10 else 2}f} MB/s "
                                 f"({sent_mb:.{0 if sent_mb >= 100 else 1}f} MB sent)")
            bottom.legend(loc="upper right", fontsize=8)
        bottom.set_xlabel(f"seconds since the first send ({width:g} s bins)")
        for ax in (top, bottom):
            ax.set_ylim(0, max(ax.get_ylim()[1], 1e-9) * 1.18)  # headroom so the legend clears the bars
            ax.grid(True, axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        bottom.set_xlim(0, edges[-1])
    else:
        _empty(top, "no studies")
        _empty(bottom, "no studies")
    top.set_title("Throughput over time")
    fig.tight_layout()
    return _save(fig, path)


def _bold_if(value: int) -> str:
    return f"**{value}**" if value else str(value)


CPU_PARTIES = (("receiver", "receiver (serve process)"), ("workers", "workers"),
               ("modality", "modality simulator (this process and its storescu)"))


def cpu_line(result: dict[str, Any]) -> str:
    """CPU seconds per study of each party that was measured (see :mod:`engine.bench.cpu`), or ""."""
    cpu = result.get("cpu_s_per_study") or {}
    return ", ".join(f"{label} {cpu[key]:.3f} s" for key, label in CPU_PARTIES if cpu.get(key) is not None)


def markdown_report(result: dict[str, Any]) -> str:
    """The report as Markdown: machine, settings, summary, latency table (ms), the plots."""
    summary, config, machine = result["summary"], result.get("config", {}), result.get("machine", {})
    split, lost = int(summary.get("split_series", 0)), int(summary.get("lost_series", 0))
    failed, send_errors = int(summary.get("failed_jobs", 0)), int(summary.get("send_errors", 0))
    versions = ", ".join(f"{name} {machine[key]}" for key, name in
                         (("python", "Python"), ("torch", "torch"), ("onnxruntime", "ONNX Runtime")) if key in machine)
    machine_line = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
    machine_line += f"; {versions}" if versions else ""
    run = [f"{config.get('mode', '?')} loop", f"concurrency {config.get('concurrency', '?')}"]
    run += [f"rate {config['rate_per_s']} studies/s"] if config.get("rate_per_s") else []
    run += [f"{config['studies']} studies"] if config.get("studies") else []
    run += [f"{config['duration_s']} s"] if config.get("duration_s") else []
    run += [f"sender {config['sender']}"] if config.get("sender") else []
    lines = [
        "# ScanStream bench report", "",
        f"Machine: {machine_line}" + (f" ({machine['date']})" if machine.get("date") else "") + ".", "",
        f"Run: {', '.join(run)}; workload: {config.get('workload', '?')}; engine: {config.get('engine', '?')}.", "",
        "| studies sent | completed | instances | MB | wall s | studies/s | instances/s | MB/s | split series "
        "| lost series | failed jobs | send errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {summary['studies_sent']} | {summary['studies_completed']} | {summary['instances']} "
        f"| {summary['bytes'] / 1e6:.1f} | {summary['wall_s']:.2f} | {summary['studies_per_s']:.3f} "
        f"| {summary['instances_per_s']:.1f} | {summary['mb_per_s']:.2f} | {_bold_if(split)} "
        f"| {_bold_if(lost)} | {_bold_if(failed)} | {_bold_if(send_errors)} |", "",
    ]
    cpu = cpu_line(result)
    if cpu:
        lines += [f"CPU per study: {cpu}.", ""]
    if summary.get("failed_deliveries"):
        lines += [f"**Warning: {summary['failed_deliveries']} result deliveries to a destination failed.**", ""]
    if split + lost:
        lines += [f"**Warning: {split + lost} series were split or lost ({split} split, {lost} lost); "
                  "they must be 0.**", ""]
    if failed + send_errors:
        lines += [f"**Warning: {failed} failed jobs, {send_errors} send errors.**", ""]
    latency = result.get("latency_s") or {}
    lines += ["Latency per stage (ms; job stages per done job, sent_to_result per study):", ""]
    if latency:
        lines += ["| stage | count | p50 | p95 | p99 | max |", "|---|---:|---:|---:|---:|---:|"]
        for stage in [s for s in STAGE_ORDER if s in latency] + [s for s in latency if s not in STAGE_ORDER]:
            row = latency[stage]
            lines.append(f"| {stage} | {row['count']} | {row['p50'] * 1e3:.1f} | {row['p95'] * 1e3:.1f} "
                         f"| {row['p99'] * 1e3:.1f} | {row['max'] * 1e3:.1f} |")
    else:
        lines.append("No latency samples (no job finished).")
    lines += ["", "![latency CDF](latency_cdf.png)", "", "![stage breakdown](stage_breakdown.png)", "",
              "![throughput](throughput.png)", ""]
    return "\n".join(lines)


def write_report(result: dict[str, Any], folder: Path) -> list[Path]:
    """``result.json``, ``report.md`` and the three plots in ``folder`` (created); returns the five paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    (folder / "report.md").write_text(markdown_report(result))
    return [folder / "result.json", folder / "report.md",
            plot_latency_cdf(result, folder / "latency_cdf.png"),
            plot_stage_breakdown(result, folder / "stage_breakdown.png"),
            plot_throughput(result, folder / "throughput.png")]


def terminal_table(result: dict[str, Any]) -> Table:
    """Summary (title) and per-stage percentiles in ms (rows) for the terminal; bad counts in red."""
    summary, cpu = result["summary"], cpu_line(result)

    def count(name: str, key: str) -> str:
        value = int(summary.get(key, 0))
        return f"[bold red]{name} {value}[/bold red]" if value else f"{name} {value}"

    table = Table(title=f"scanstream bench: {summary['studies_completed']}/{summary['studies_sent']} studies, "
                        f"{summary['studies_per_s']:.3f} studies/s, {summary['instances_per_s']:.1f} instances/s, "
                        f"{summary['mb_per_s']:.2f} MB/s, {count('split', 'split_series')}, "
                        f"{count('lost', 'lost_series')}, {count('failed jobs', 'failed_jobs')}"
                        + (f", {count('failed deliveries', 'failed_deliveries')}"
                           if "sent_to_destination" in (result.get("latency_s") or {})
                           or summary.get("failed_deliveries") else ""),
                  caption=f"CPU per study: {cpu}" if cpu else None)
    for column in ("stage", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    latency = result.get("latency_s") or {}
    for stage in [s for s in STAGE_ORDER if s in latency] + [s for s in latency if s not in STAGE_ORDER]:
        row = latency[stage]
        table.add_row(stage, str(row["count"]), *(f"{row[k] * 1e3:.1f}" for k in ("p50", "p95", "p99", "max")),
                      style="bold" if stage in ("end_to_end", "sent_to_result") else None)
    if not latency:
        table.add_row("(no samples)", "0", "-", "-", "-", "-")
    return table
