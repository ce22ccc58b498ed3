"""Helpers shared by the engine-level benchmarks (overhead, latency, scaling): one bench run with given settings."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from engine.bench.run import BenchSettings, run_bench

MODEL = "nodule-seg"


def bench(studies: int, *, concurrency: int = 1, workers: int = 1, slices: int = 48, size: int = 256,
          work_dir: Path | None = None, torch_threads: int = 0, model: str = "",
          plugin_options: dict[str, str] | None = None) -> dict[str, Any]:
    """A closed-loop run against an engine started for it, routing to ``model`` only (default nodule-seg, the
    model the bare-loop baselines run); raises if any series was split or lost.

    ``torch_threads`` 0 lets each worker's runtime use every core.
    """
    sender = "storescu" if shutil.which("storescu") else "pynetdicom"  # DCMTK is the faster modality simulator
    result = run_bench(BenchSettings(studies=studies, concurrency=concurrency, workers=workers, slices=slices,
                                     size=size, work_dir=work_dir, torch_threads=torch_threads, sender=sender,
                                     model=model or MODEL, plugin_options=plugin_options or {}))
    summary = result["summary"]
    if summary["split_series"] or summary["lost_series"] or summary["studies_completed"] != studies:
        raise RuntimeError(f"engine run incomplete: {summary}")
    return result


def done_jobs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every done job (model, stage seconds, the files it filed)."""
    return [job for study in result["studies"] for job in study["jobs"] if job["state"] == "done"]


def job_stages(result: dict[str, Any]) -> list[dict[str, float]]:
    """Every done job's stage seconds."""
    return [job["stages_s"] for job in done_jobs(result)]
