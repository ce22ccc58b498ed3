"""The console's reads of the ledger: lists with filters and paging, on read-only connections of their own.

Each call opens the ledger read-only (SQLite WAL lets readers run beside the
receiver's writer), so a page view never waits on the lock that association
threads and the broker take. Writes (requeue, resend) go through
:class:`engine.ledger.store.Ledger`.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time as clock, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.api import SeriesInfo

STUDY_STATES = ("receiving", "stored", "processing", "failed", "done")


@dataclass(frozen=True)
class StudyFilters:
    """What the study list narrows to; empty fields do not filter. Dates are receipt dates, local time."""

    received_from: date | None = None
    received_to: date | None = None
    calling_ae: str = ""
    state: str = ""
    modality: str = ""


@dataclass
class StudyRow:
    """One line of the study list (ledger facts; the API adds header facts for signed-in users)."""

    study_uid: str
    study_key: str
    first_received: float
    last_received: float
    series: int
    instances: int
    modalities: list[str]
    calling_aes: list[str]
    jobs: int
    state: str


@dataclass(frozen=True)
class JobFilters:
    state: str = ""
    model: str = ""
    reason: str = ""  # a part of the reason, case-insensitive


@dataclass
class JobListRow:
    """A job with the keys of its study and series (never UIDs in what the pages link to)."""

    job_id: str
    study_key: str
    series_key: str
    model: str
    model_version: str
    state: str
    attempts: int
    max_attempts: int
    worker: str | None
    reason: str | None
    created: float
    finished: float | None


@dataclass(frozen=True)
class DeliveryFilters:
    state: str = ""
    destination: str = ""


@dataclass
class DeliveryListRow:
    job_id: str
    study_key: str
    model: str
    destination: str
    state: str
    attempts: int
    created: float
    finished: float | None
    next_attempt: float
    reason: str | None
    warnings: int


@dataclass
class UnroutedSeries:
    """A complete series no job was made for, with what the selectors saw of it."""

    series_key: str
    study_key: str
    completed_at: float | None
    info: SeriesInfo


def day_bounds(first: date | None, last: date | None) -> tuple[float | None, float | None]:
    """Epoch seconds of local midnight starting ``first`` and ending ``last`` (None where not given)."""
    start = datetime.combine(first, clock.min).timestamp() if first else None
    end = datetime.combine(last + timedelta(days=1), clock.min).timestamp() if last else None
    return start, end


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere, its own % and _ taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _equal(*pairs: tuple[str, str]) -> tuple[list[str], list[Any]]:
    """``column = ?`` clauses and their parameters for the (column, value) pairs with a value."""
    given = [(column, value) for column, value in pairs if value]
    return [f"{column} = ?" for column, _ in given], [value for _, value in given]


def _split(text: str | None) -> list[str]:
    return sorted(set(filter(None, (text or "").split("\x1f"))))


_STUDY_LIST = """
WITH ser AS (SELECT study_uid, COUNT(*) AS n, SUM(state = 'open') AS open,
                    GROUP_CONCAT(modality, char(31)) AS modalities, GROUP_CONCAT(calling_ae, char(31)) AS aes
             FROM series GROUP BY study_uid),
     ins AS (SELECT s.study_uid, COUNT(*) AS n FROM instances i JOIN series s USING (series_uid) GROUP BY s.study_uid),
     jb AS (SELECT s.study_uid, COUNT(*) AS n, SUM(j.state IN ('failed', 'dead')) AS failed,
                   SUM(j.state IN ('queued', 'leased')) AS active
            FROM jobs j JOIN series s USING (series_uid) GROUP BY s.study_uid),
     listed AS (
       SELECT st.study_uid, st.study_key, st.first_received, st.last_received, ser.n AS series,
              COALESCE(ins.n, 0) AS instances, ser.modalities, ser.aes, COALESCE(jb.n, 0) AS jobs,
              CASE WHEN ser.open > 0 THEN 'receiving' WHEN COALESCE(jb.failed, 0) > 0 THEN 'failed'
                   WHEN COALESCE(jb.active, 0) > 0 THEN 'processing' WHEN COALESCE(jb.n, 0) = 0 THEN 'stored'
                   ELSE 'done' END AS state
       FROM studies st JOIN ser USING (study_uid) LEFT JOIN ins USING (study_uid) LEFT JOIN jb USING (study_uid))
SELECT * FROM listed
"""


class LedgerReader:
    """Read-only queries over one ledger file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._uri, uri=True, timeout=10, check_same_thread=False)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def watch(self) -> Iterator[Callable[[], int]]:
        """A function reading the ledger's data version: it changes whenever the receiver commits anything."""
        with self._read() as db:
            yield lambda: int(db.execute("PRAGMA data_version").fetchone()[0])

    def studies(self, filters: StudyFilters) -> list[StudyRow]:
        """Every study the filters keep, newest first (the API pages them, after its own header filter)."""
        where, params = self._study_where(filters)
        with self._read() as db:
            rows = db.execute(_STUDY_LIST + where + " ORDER BY last_received DESC, study_key", params).fetchall()
        return [StudyRow(r["study_uid"], r["study_key"], r["first_received"], r["last_received"], r["series"],
                         r["instances"], _split(r["modalities"]), _split(r["aes"]), r["jobs"], r["state"])
                for r in rows]

    @staticmethod
    def _study_where(filters: StudyFilters) -> tuple[str, list[Any]]:
        clauses, params = [], []
        start, end = day_bounds(filters.received_from, filters.received_to)
        if start is not None:
            clauses.append("last_received >= ?")
            params.append(start)
        if end is not None:
            clauses.append("first_received < ?")
            params.append(end)
        if filters.state:
            clauses.append("state = ?")
            params.append(filters.state)
        for column, value in (("calling_ae", filters.calling_ae), ("modality", filters.modality)):
            if value:
                clauses.append(f"EXISTS (SELECT 1 FROM series s WHERE s.study_uid = listed.study_uid"
                               f" AND s.{column} = ?)")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def study_uid(self, study_key: str) -> str | None:
        """The Study Instance UID behind an opaque key (what page URLs carry), or None."""
        with self._read() as db:
            row = db.execute("SELECT study_uid FROM studies WHERE study_key = ?", (study_key,)).fetchone()
        return None if row is None else str(row[0])

    def first_instance(self, study_uid: str) -> str | None:
        """The spool name of the study's first stored instance (its header has the patient and study facts)."""
        with self._read() as db:
            row = db.execute("SELECT i.spool_name FROM instances i JOIN series s USING (series_uid)"
                             " WHERE s.study_uid = ? ORDER BY i.received_at LIMIT 1", (study_uid,)).fetchone()
        return None if row is None else str(row[0])

    def series_facts(self, study_uid: str) -> dict[str, dict[str, Any]]:
        """Per series UID of a study: modality, description, body part, calling AE (the study page's series)."""
        with self._read() as db:
            rows = db.execute("SELECT series_uid, modality, series_description, body_part, calling_ae FROM series"
                              " WHERE study_uid = ?", (study_uid,)).fetchall()
        return {r["series_uid"]: {"modality": r["modality"], "description": r["series_description"],
                                  "body_part": r["body_part"], "calling_ae": r["calling_ae"]} for r in rows}

    def jobs(self, filters: JobFilters, offset: int, limit: int) -> tuple[list[JobListRow], int]:
        """One page of jobs the filters keep, newest first, and how many there are in all."""
        clauses, params = _equal(("j.state", filters.state), ("j.model", filters.model))
        if filters.reason:
            clauses.append("j.reason LIKE ? ESCAPE '\\'")
            params.append(_like(filters.reason))
        rows, total = self._page(
            "SELECT j.job_id, st.study_key, s.series_key, j.model, j.model_version, j.state, j.attempts,"
            " j.max_attempts, j.worker, j.reason, j.created, j.finished",
            " FROM jobs j JOIN series s USING (series_uid) JOIN studies st ON st.study_uid = s.study_uid",
            clauses, params, " ORDER BY j.created DESC, j.job_id", offset, limit)
        return [JobListRow(*row) for row in rows], total

    def deliveries(self, filters: DeliveryFilters, offset: int, limit: int) -> tuple[list[DeliveryListRow], int]:
        """One page of deliveries the filters keep, newest first, and how many there are in all."""
        clauses, params = _equal(("d.state", filters.state), ("d.destination", filters.destination))
        rows, total = self._page(
            "SELECT d.job_id, st.study_key, j.model, d.destination, d.state, d.attempts, d.created, d.finished,"
            " d.next_attempt, d.reason, d.warnings",
            " FROM deliveries d JOIN jobs j USING (job_id) JOIN series s ON s.series_uid = j.series_uid"
            " JOIN studies st ON st.study_uid = s.study_uid",
            clauses, params, " ORDER BY d.created DESC, d.job_id, d.destination", offset, limit)
        return [DeliveryListRow(*row) for row in rows], total

    def _page(self, select: str, tables: str, clauses: list[str], params: list[Any], order: str, offset: int,
              limit: int) -> tuple[list[sqlite3.Row], int]:
        """The rows of one page and the count of every match, in one read."""
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._read() as db:
            total = int(db.execute("SELECT COUNT(*)" + tables + where, params).fetchone()[0])
            rows = db.execute(select + tables + where + order + " LIMIT ? OFFSET ?",
                              [*params, limit, offset]).fetchall()
        return rows, total

    def received_since(self, since: float) -> tuple[int, int]:
        """(studies first seen, instances stored) since ``since`` (epoch seconds)."""
        with self._read() as db:
            studies = db.execute("SELECT COUNT(*) FROM studies WHERE first_received >= ?", (since,)).fetchone()[0]
            instances = db.execute("SELECT COUNT(*) FROM instances WHERE received_at >= ?", (since,)).fetchone()[0]
        return int(studies), int(instances)

    def unrouted_series(self, limit: int = 50) -> list[UnroutedSeries]:
        """The newest complete series without any job, with what selectors saw of them."""
        with self._read() as db:
            rows = db.execute(
                "SELECT s.series_key, st.study_key, s.completed_at, s.study_uid, s.series_uid, s.modality,"
                " s.sop_class_uid, s.body_part, s.series_description, s.calling_ae, COUNT(i.sop_instance_uid),"
                " COALESCE(SUM(COALESCE(i.number_of_frames, 1)), 0) FROM series s"
                " JOIN studies st ON st.study_uid = s.study_uid LEFT JOIN instances i ON i.series_uid = s.series_uid"
                " WHERE s.state = 'complete' AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid)"
                " GROUP BY s.series_uid ORDER BY s.completed_at DESC LIMIT ?", (limit,)).fetchall()
        return [UnroutedSeries(row[0], row[1], row[2], SeriesInfo(*row[3:10], instance_count=int(row[10]),
                                                                   frame_count=int(row[11]))) for row in rows]
