"""The router: each model's selector decides which complete series it takes; one job each.

Several models may take one series; a series no model takes stays stored and is
reported (``series.unrouted`` in the log, ``unrouted`` in ``scanstream status``).
``routing.models`` limits routing to the named models (benchmark-only models
such as the zoo stay off unless named). Jobs get the series' priority (``routing.priority_tag`` / ``priority_values``),
which orders the queue before age.

Jobs are keyed by (series, revision, model, model version) in the ledger, so routing
the same completion twice (a restart, a repeated call) creates nothing new. Each
routed revision is marked in the ledger: start-up routes only revisions a crash left
unrouted, so a new model or version runs on new series only; history is backfilled
when asked (``routing.backfill_since``, ``scanstream backfill MODEL --since DATE``).

A selector that raises is one model's fault: it is logged with the model named, that
model skips the series, and the others (and start-up, which routes complete series
again) go on.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Callable, Mapping, Sequence

from engine.api import ModelRegistry, ModelSpec, PluginError, SeriesInfo
from engine.logs import get_logger
from engine.ledger.store import Ledger

log = get_logger(__name__)


def run_selector(spec: ModelSpec, info: SeriesInfo) -> tuple[bool, str]:
    """Whether ``spec``'s selector takes the series, and the error it raised ("" when none; then not taken)."""
    try:
        return bool(spec.selector(info)), ""
    except Exception as exc:  # a plugin's code: its failure must not block the other models
        return False, f"{type(exc).__name__}: {exc}"[:300]


class Router:
    """Creates jobs for a completed series revision and wakes the broker when it did."""

    def __init__(self, ledger: Ledger, models: ModelRegistry, on_jobs_queued: Callable[[], object], *,
                 max_attempts: int = 3, priority_values: Mapping[str, int] | None = None,
                 enabled: Sequence[str] = ()) -> None:
        self._ledger = ledger
        self._models = models
        self._on_jobs_queued = on_jobs_queued
        self._max_attempts = max_attempts
        self._priority_values = dict(priority_values or {})
        self._enabled = set(enabled)
        unknown = self._enabled - {spec.name for spec in models.all()}
        if unknown:
            raise PluginError(f"routing.models names unregistered model(s) {', '.join(sorted(unknown))}; registered: "
                              f"{', '.join(spec.name for spec in models.all()) or 'none'}")

    def models(self) -> list[ModelSpec]:
        """The models this router may use (``routing.models`` when set, else every registered one)."""
        return [spec for spec in self._models.all() if not self._enabled or spec.name in self._enabled]

    def has_model(self, name: str) -> bool:
        """Whether ``name`` is a model this router may use."""
        return any(spec.name == name for spec in self.models())

    def priority(self, series_uid: str) -> int:
        """The queue priority of a series: its priority element's text looked up in ``routing.priority_values``."""
        return self._priority_values.get(self._ledger.series_priority_value(series_uid), 0)

    def route(self, series_uid: str, revision: int, *, only: str | None = None, deliver: bool = True) -> list[str]:
        """Queue one job per model that takes the series; returns the ids of jobs created now.

        ``only`` limits it to one model and leaves the series' routed mark alone (a
        backfill); ``deliver=False`` keeps those jobs' results out of the destinations.
        """
        info = self._ledger.series_info(series_uid)
        series_key = self._ledger.series_key(series_uid)
        selected = []
        for spec in self._models.all():
            if (self._enabled and spec.name not in self._enabled) or (only is not None and spec.name != only):
                continue
            taken, error = run_selector(spec, info)
            if error:
                log.error("router.selector_failed", model=spec.name, series_key=series_key, revision=revision,
                          error=error)
            elif taken:
                selected.append(spec)
        if not selected:
            if only is None:
                log.info("series.unrouted", series_key=series_key, revision=revision, modality=info.modality,
                         instances=info.instance_count)
                self._ledger.mark_routed(series_uid, revision)
            return []
        now = time.time()
        priority = self.priority(series_uid)
        created = [job for job in (
            self._ledger.create_job(series_uid, revision, spec.name, spec.version, now, priority=priority,
                                    max_attempts=self._max_attempts, deliver=deliver)
            for spec in selected) if job is not None]
        if only is None:
            self._ledger.mark_routed(series_uid, revision)
        if created:
            log.info("jobs.queued", series_key=series_key, revision=revision, jobs=len(created), priority=priority,
                     models=",".join(spec.name for spec in selected))
            self._on_jobs_queued()
        return created


def backfill(ledger: Ledger, router: Router, since: date, *, models: Sequence[str] = (),
             deliver: bool = False) -> int:
    """Run ``models`` (every model when empty) on the complete series completed on or after ``since`` (local
    midnight) that they have not run on; returns how many jobs were queued."""
    start = datetime.combine(since, datetime.min.time()).timestamp()
    names = list(models) or [spec.name for spec in router.models()]
    queued = 0
    for series_uid, revision in ledger.complete_series_revisions(since=start):
        for name in names:
            queued += len(router.route(series_uid, revision, only=name, deliver=deliver))
    log.info("backfill.queued", since=since.isoformat(), models=",".join(names), jobs=queued, deliver=deliver)
    return queued
