"""The latency ledger's view of a job: when each stage happened, how long each took, and the metrics.

Receiver-side times (first and last instance received, series complete, queued,
leased, result filed) come from the ledger's clock; the worker reports how long
its own stages took (decode, preprocess, infer, postprocess, outputs), so no
stage mixes two hosts' clocks. ``transfer`` is what is left between lease and
filing: frames to the worker, the result back, and filing it. ``deliver`` is
filing to the last destination acknowledging the result (when destinations are
configured), and ``end_to_end_delivered`` last instance received to that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

WORKER_STAGES = ("decode", "preprocess", "infer", "postprocess", "outputs")
DELIVERY_STAGES = ("deliver", "end_to_end_delivered")
STAGES = ("receive", "assemble", "queue", *WORKER_STAGES, "transfer", "end_to_end", "deliver",
          "end_to_end_delivered")
# Buckets from 1 ms (a queue hop) to 10 min (a big study on a CPU); Prometheus-style upper bounds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 600.0)


@dataclass(frozen=True)
class JobTimeline:
    """One done job's timestamps (epoch seconds, receiver clock) and the worker's stage durations."""

    job_id: str
    model: str
    first_received: float
    last_received: float
    series_complete: float | None
    queued: float
    leased: float | None
    finished: float | None
    worker_stages: dict[str, float] = field(default_factory=dict)
    delivered: float | None = None

    def stage_seconds(self) -> dict[str, float]:
        """Duration of every stage that can be computed for this job.

        ``receive``: first to last instance; ``assemble``: last instance to series
        complete (0 when geometric completion needed no idle wait); ``queue``:
        queued to leased; worker stages as reported (keys without ``_s``);
        ``transfer``: leased to filed minus the worker's stages; ``end_to_end``:
        last instance received to result filed.
        """
        stages: dict[str, float] = {"receive": self.last_received - self.first_received}
        if self.series_complete is not None:
            stages["assemble"] = max(0.0, self.series_complete - self.last_received)
        if self.leased is not None:
            stages["queue"] = max(0.0, self.leased - self.queued)
        worker = {name.removesuffix("_s"): seconds for name, seconds in self.worker_stages.items()}
        stages.update({name: worker[name] for name in WORKER_STAGES if name in worker})
        if self.leased is not None and self.finished is not None:
            stages["transfer"] = max(0.0, self.finished - self.leased - sum(worker.get(n, 0.0) for n in WORKER_STAGES))
        if self.finished is not None:
            stages["end_to_end"] = max(0.0, self.finished - self.last_received)
        if self.finished is not None and self.delivered is not None:
            stages["deliver"] = max(0.0, self.delivered - self.finished)
            stages["end_to_end_delivered"] = max(0.0, self.delivered - self.last_received)
        return stages


def percentiles(timelines: Iterable[JobTimeline], points: tuple[float, ...] = (50, 95, 99)) -> dict[str, dict[str, float]]:
    """Per stage: count, the given percentiles and the maximum, in seconds, over ``timelines``."""
    values: dict[str, list[float]] = {}
    for timeline in timelines:
        for stage, seconds in timeline.stage_seconds().items():
            values.setdefault(stage, []).append(seconds)
    summary: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        if stage not in values:
            continue
        data = np.asarray(values[stage])
        summary[stage] = {"count": int(data.size), **{f"p{p:g}": float(np.percentile(data, p)) for p in points},
                          "max": float(data.max())}
    return summary


class StageHistograms:
    """``scanstream_stage_seconds{stage, model}``: a Prometheus histogram per stage and model, fed as jobs finish."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = Histogram("scanstream_stage_seconds", "Seconds per pipeline stage and model, finished jobs",
                                    ["stage", "model"], buckets=BUCKETS, registry=registry)

    def observe(self, timeline: JobTimeline, stages: tuple[str, ...] | None = None) -> None:
        """Add one job's stage durations (only ``stages`` when given: a delivery adds its own two later)."""
        for stage, seconds in timeline.stage_seconds().items():
            if stages is None or stage in stages:
                self._histogram.labels(stage=stage, model=timeline.model).observe(seconds)
