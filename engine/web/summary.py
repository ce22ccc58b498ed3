"""The dashboard's figures: received today, queue, in flight, failed, workers, and latency per model."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from engine.ledger.latency import percentiles
from engine.web.console import Console
from engine.web.queries import day_bounds

LATENCY_JOBS = 2000  # the newest done jobs the percentiles are taken over
LATENCY_STAGES = ("end_to_end", "infer", "queue")


def latency_by_model(console: Console) -> dict[str, dict[str, dict[str, float]]]:
    """Per model, per stage of :data:`LATENCY_STAGES`: count, p50, p99 and max seconds over the newest done jobs."""
    by_model: dict[str, list] = {}
    for timeline in console.ledger.timelines(limit=LATENCY_JOBS):
        by_model.setdefault(timeline.model, []).append(timeline)
    return {model: {stage: figures for stage, figures in percentiles(timelines, (50, 99)).items()
                    if stage in LATENCY_STAGES}
            for model, timelines in sorted(by_model.items())}


def dashboard(console: Console) -> dict[str, Any]:
    """Everything the dashboard shows, as one JSON-ready dict."""
    start, _ = day_bounds(date.today(), None)
    studies, instances = console.reader.received_since(start or 0.0)
    jobs = console.ledger.job_counts()
    deliveries = console.ledger.delivery_counts()
    return {"received_today": {"studies": studies, "instances": instances},
            "queue_depth": jobs["queued"], "in_flight": jobs["leased"], "failed": jobs["failed"],
            "dead_lettered": jobs["dead"], "done": jobs["done"], "workers": len(console.workers()),
            "deliveries": deliveries, "latency_s": latency_by_model(console), "as_of": time.time()}
