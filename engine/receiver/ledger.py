"""The ledger: SQLite (WAL, synchronous=FULL) of studies, series, instances and jobs.

It is the source of truth for what was received and what must still run; the
broker's memory is not. One connection guarded by a lock serves every thread
(association threads, assembler, broker); each public method is one transaction.
Keys shown to people and used in paths (``st_…``, ``se_…``) are random, never UIDs.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
from pydicom.dataset import Dataset

from engine.api import SeriesInfo
from engine.receiver.spool import SpoolEntry

SCHEMA_VERSION = 1
DuplicatePolicy = Literal["keep_first", "replace"]
JOB_STATES = ("queued", "leased", "done", "failed", "dead")
FINAL_JOB_STATES = ("done", "failed", "dead")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, study_key TEXT UNIQUE NOT NULL,
    first_received REAL NOT NULL, last_received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, series_key TEXT UNIQUE NOT NULL, study_uid TEXT NOT NULL REFERENCES studies,
    modality TEXT NOT NULL, sop_class_uid TEXT NOT NULL, body_part TEXT NOT NULL, series_description TEXT NOT NULL,
    calling_ae TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'open', revision INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL, last_received REAL NOT NULL, completed_at REAL, completion_reason TEXT);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL REFERENCES series, sop_class_uid TEXT NOT NULL,
    spool_name TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, instance_number INTEGER,
    position REAL, orientation TEXT, images_in_acquisition INTEGER, number_of_frames INTEGER,
    received_at REAL NOT NULL, calling_ae TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, series_uid TEXT NOT NULL REFERENCES series, series_revision INTEGER NOT NULL,
    model TEXT NOT NULL, model_version TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL, priority INTEGER NOT NULL DEFAULT 0, worker TEXT, reason TEXT,
    result_dir TEXT, created REAL NOT NULL, leased REAL, finished REAL,
    UNIQUE (series_uid, series_revision, model, model_version));
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, priority DESC, created);
"""


class AddOutcome(Enum):
    """What ``add_instance`` did."""

    STORED = "stored"
    DUPLICATE_SAME = "duplicate_same"
    DUPLICATE_KEPT_FIRST = "duplicate_kept_first"
    REPLACED = "replaced"


@dataclass(frozen=True)
class InstanceMeta:
    """Header facts of one instance that the assembler and router need (no patient data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    instance_number: int | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, ...] | None = None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "InstanceMeta":
        """Read the facts from a dataset without touching pixel data."""
        def number(keyword: str) -> int | None:
            value = ds.get(keyword)
            return int(value) if value not in (None, "") else None

        def floats(keyword: str, count: int) -> tuple[float, ...] | None:
            value = ds.get(keyword)
            if value is None or len(value) != count:
                return None
            return tuple(float(v) for v in value)

        position = floats("ImagePositionPatient", 3)
        return cls(
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            modality=str(ds.get("Modality", "") or ""),
            body_part=str(ds.get("BodyPartExamined", "") or ""),
            series_description=str(ds.get("SeriesDescription", "") or ""),
            instance_number=number("InstanceNumber"),
            image_position=position,  # type: ignore[arg-type]
            image_orientation=floats("ImageOrientationPatient", 6),
            images_in_acquisition=number("ImagesInAcquisition"),
            number_of_frames=number("NumberOfFrames"),
        )

    def position_along_normal(self) -> float | None:
        """Distance of the slice along its normal, or None without geometry."""
        if self.image_position is None or self.image_orientation is None:
            return None
        normal = np.cross(self.image_orientation[:3], self.image_orientation[3:6])
        return float(np.dot(normal, self.image_position))


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    spool_name: str
    position: float | None
    orientation: str | None
    images_in_acquisition: int | None
    number_of_frames: int | None
    instance_number: int | None


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    series_key: str
    study_uid: str
    state: str
    revision: int
    last_received: float
    instance_count: int


@dataclass(frozen=True)
class JobRow:
    job_id: str
    series_uid: str
    series_revision: int
    model: str
    model_version: str
    state: str
    attempts: int
    max_attempts: int
    priority: int
    worker: str | None
    reason: str | None
    result_dir: str | None
    created: float
    leased: float | None
    finished: float | None


def _key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


class Ledger:
    """All persistent state of one receiver."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        with self._tx() as db:
            if db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- instances, series, studies -------------------------------------------------------

    def add_instance(self, meta: InstanceMeta, entry: SpoolEntry, calling_ae: str, now: float,
                     duplicate_policy: DuplicatePolicy = "keep_first") -> tuple[AddOutcome, str | None]:
        """Record a spooled instance; returns the outcome and a spool name the caller should delete."""
        with self._tx() as db:
            old = db.execute("SELECT spool_name, sha256, series_uid FROM instances WHERE sop_instance_uid = ?",
                             (meta.sop_instance_uid,)).fetchone()
            if old is not None and old["sha256"] == entry.sha256:
                return AddOutcome.DUPLICATE_SAME, entry.name
            if old is not None and duplicate_policy == "keep_first":
                return AddOutcome.DUPLICATE_KEPT_FIRST, entry.name
            self._upsert_study_series(db, meta, calling_ae, now)
            values = (meta.series_uid, meta.sop_class_uid, entry.name, entry.sha256, entry.size,
                      meta.instance_number, meta.position_along_normal(),
                      ",".join(f"{v:.6f}" for v in meta.image_orientation) if meta.image_orientation else None,
                      meta.images_in_acquisition, meta.number_of_frames, now, calling_ae)
            if old is None:
                db.execute("INSERT INTO instances (series_uid, sop_class_uid, spool_name, sha256, size, instance_number,"
                           " position, orientation, images_in_acquisition, number_of_frames, received_at, calling_ae,"
                           " sop_instance_uid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", (*values, meta.sop_instance_uid))
                return AddOutcome.STORED, None
            db.execute("UPDATE instances SET series_uid=?, sop_class_uid=?, spool_name=?, sha256=?, size=?,"
                       " instance_number=?, position=?, orientation=?, images_in_acquisition=?, number_of_frames=?,"
                       " received_at=?, calling_ae=? WHERE sop_instance_uid=?", (*values, meta.sop_instance_uid))
            return AddOutcome.REPLACED, old["spool_name"]

    @staticmethod
    def _upsert_study_series(db: sqlite3.Connection, meta: InstanceMeta, calling_ae: str, now: float) -> None:
        db.execute("INSERT INTO studies (study_uid, study_key, first_received, last_received) VALUES (?,?,?,?)"
                   " ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received",
                   (meta.study_uid, _key("st"), now, now))
        db.execute(
            "INSERT INTO series (series_uid, series_key, study_uid, modality, sop_class_uid, body_part,"
            " series_description, calling_ae, first_received, last_received) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(series_uid) DO UPDATE SET last_received = excluded.last_received, state = 'open'",
            (meta.series_uid, _key("se"), meta.study_uid, meta.modality, meta.sop_class_uid, meta.body_part,
             meta.series_description, calling_ae, now, now))

    def series(self, series_uid: str) -> SeriesRow | None:
        """One series with its instance count."""
        with self._lock:
            row = self._db.execute(
                "SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) AS n"
                " FROM series s WHERE series_uid = ?", (series_uid,)).fetchone()
        return None if row is None else SeriesRow(row["series_uid"], row["series_key"], row["study_uid"],
                                                   row["state"], row["revision"], row["last_received"], row["n"])

    def open_series(self) -> list[SeriesRow]:
        """Every series still waiting to complete."""
        with self._lock:
            uids = [r[0] for r in self._db.execute("SELECT series_uid FROM series WHERE state = 'open'")]
        return [row for row in map(self.series, uids) if row is not None]

    def series_instances(self, series_uid: str) -> list[InstanceRow]:
        """The series' instances, ordered along the slice normal where known."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, spool_name, position, orientation, images_in_acquisition,"
                " number_of_frames, instance_number FROM instances WHERE series_uid = ?"
                " ORDER BY position, instance_number, sop_instance_uid", (series_uid,)).fetchall()
        return [InstanceRow(*row) for row in rows]

    def complete_series(self, series_uid: str, reason: str, now: float) -> int:
        """Mark an open series complete; returns its new revision (0 if it was not open)."""
        with self._tx() as db:
            updated = db.execute("UPDATE series SET state = 'complete', revision = revision + 1, completed_at = ?,"
                                 " completion_reason = ? WHERE series_uid = ? AND state = 'open'",
                                 (now, reason, series_uid)).rowcount
            if not updated:
                return 0
            return int(db.execute("SELECT revision FROM series WHERE series_uid = ?", (series_uid,)).fetchone()[0])

    def complete_series_revisions(self) -> list[tuple[str, int]]:
        """(series UID, revision) of every complete series, for idempotent re-routing at start."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                "SELECT series_uid, revision FROM series WHERE state = 'complete'")]

    def series_info(self, series_uid: str) -> SeriesInfo:
        """What selectors see of a series."""
        with self._lock:
            row = self._db.execute(
                "SELECT s.*, COUNT(i.sop_instance_uid) AS n, COALESCE(SUM(COALESCE(i.number_of_frames, 1)), 0) AS f"
                " FROM series s LEFT JOIN instances i ON i.series_uid = s.series_uid WHERE s.series_uid = ?"
                " GROUP BY s.series_uid", (series_uid,)).fetchone()
        if row is None:
            raise KeyError(f"unknown series {series_uid}")
        return SeriesInfo(study_uid=row["study_uid"], series_uid=row["series_uid"], modality=row["modality"],
                          sop_class_uid=row["sop_class_uid"], body_part=row["body_part"],
                          series_description=row["series_description"], calling_ae=row["calling_ae"],
                          instance_count=int(row["n"]), frame_count=int(row["f"]))

    def study_key(self, study_uid: str) -> str:
        """The opaque key of a study (used in result paths and logs)."""
        with self._lock:
            row = self._db.execute("SELECT study_key FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        if row is None:
            raise KeyError("unknown study")
        return str(row[0])

    def series_key(self, series_uid: str) -> str:
        """The opaque key of a series."""
        row = self.series(series_uid)
        if row is None:
            raise KeyError("unknown series")
        return row.series_key

    # -- jobs ----------------------------------------------------------------------------

    def create_job(self, series_uid: str, revision: int, model: str, model_version: str, now: float,
                   priority: int = 0, max_attempts: int = 3) -> str | None:
        """Queue a job; None when the (series, revision, model, version) job already exists."""
        job_id = uuid.uuid4().hex[:16]
        with self._tx() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, series_uid, series_revision, model, model_version, state,"
                " max_attempts, priority, created) VALUES (?,?,?,?,?, 'queued', ?,?,?)",
                (job_id, series_uid, revision, model, model_version, max_attempts, priority, now)).rowcount
        return job_id if inserted else None

    def claim_job(self, worker: str, now: float, models: Sequence[str] | None = None) -> JobRow | None:
        """Lease the most urgent queued job (of ``models`` when given) to ``worker``."""
        with self._tx() as db:
            query = "SELECT job_id FROM jobs WHERE state = 'queued'"
            params: list[object] = []
            if models is not None:
                query += f" AND model IN ({','.join('?' * len(models))})"
                params.extend(models)
            row = db.execute(query + " ORDER BY priority DESC, created LIMIT 1", params).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'leased', attempts = attempts + 1, worker = ?, leased = ?"
                       " WHERE job_id = ?", (worker, now, row[0]))
        return self.job(row[0])

    def job(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else JobRow(*(row[f] for f in JobRow.__dataclass_fields__))

    def complete_job(self, job_id: str, attempt: int, result_dir: str, now: float) -> bool:
        """Leased at ``attempt`` -> done; False (and no change) for a stale attempt."""
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state = 'done', result_dir = ?, finished = ?, reason = NULL"
                              " WHERE job_id = ? AND state = 'leased' AND attempts = ?",
                              (result_dir, now, job_id, attempt)).rowcount == 1

    def fail_job(self, job_id: str, attempt: int, reason: str, retryable: bool, now: float) -> str | None:
        """Requeue a retryable failure with attempts left, else 'failed'; returns the new state."""
        with self._tx() as db:
            row = db.execute("SELECT attempts, max_attempts FROM jobs WHERE job_id = ? AND state = 'leased'"
                             " AND attempts = ?", (job_id, attempt)).fetchone()
            if row is None:
                return None
            state = "queued" if retryable and row[0] < row[1] else ("dead" if retryable else "failed")
            db.execute("UPDATE jobs SET state = ?, reason = ?, finished = ? WHERE job_id = ?",
                       (state, reason, None if state == "queued" else now, job_id))
            return state

    def release_job(self, job_id: str, attempt: int, reason: str, now: float) -> str | None:
        """A lease was lost (worker died): queue again, or dead-letter after max attempts."""
        return self.fail_job(job_id, attempt, f"lease lost: {reason}", True, now)

    def requeue_leased_on_start(self) -> int:
        """Jobs leased when the receiver stopped go back to the queue; returns how many."""
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state = 'queued', worker = NULL WHERE state = 'leased'").rowcount

    def study_jobs(self, study_uid: str) -> list[JobRow]:
        """Every job of a study's series."""
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT j.job_id FROM jobs j JOIN series s ON s.series_uid = j.series_uid WHERE s.study_uid = ?"
                " ORDER BY j.created", (study_uid,))]
        return [job for job in map(self.job, ids) if job is not None]

    def final_study_jobs(self, study_uid: str, minimum: int = 1) -> list[JobRow] | None:
        """The study's jobs once there are ``minimum`` and none is queued or leased, else None."""
        jobs = self.study_jobs(study_uid)
        if len(jobs) >= minimum and all(job.state in FINAL_JOB_STATES for job in jobs):
            return jobs
        return None

    def list_jobs(self, state: str | None = None) -> list[JobRow]:
        with self._lock:
            query = "SELECT job_id FROM jobs" + (" WHERE state = ?" if state else "") + " ORDER BY created"
            ids = [r[0] for r in self._db.execute(query, (state,) if state else ())]
        return [job for job in map(self.job, ids) if job is not None]

    def job_counts(self) -> dict[str, int]:
        """Jobs per state (every state present, zero included)."""
        with self._lock:
            found = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in JOB_STATES}

    def status_counts(self) -> dict[str, int]:
        """What `scanstream status` shows."""
        jobs = self.job_counts()
        with self._lock:
            studies = self._db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
            series = dict(self._db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall())
            instances = self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        return {"studies": studies, "series open": series.get("open", 0),
                "series complete": series.get("complete", 0), "instances": instances,
                "queue depth": jobs["queued"], "in flight": jobs["leased"], "done": jobs["done"],
                "failed": jobs["failed"], "dead-lettered": jobs["dead"]}
