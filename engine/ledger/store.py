"""The ledger: SQLite (WAL, synchronous=FULL) of studies, series, instances and jobs.

It is the source of truth for what was received and what must still run; the
broker's memory is not. One connection guarded by a lock serves every thread
(association threads, assembler, broker); each public method is one transaction.
Keys shown to people and used in paths (``st_…``, ``se_…``) are random, never UIDs.
The schema is created or migrated on open, step by step, from ``schema_version``.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from engine.api import SeriesInfo
from engine.dicom.values import RawHeader
from engine.ledger.latency import JobTimeline
from engine.receiver.spool import SpoolEntry

DuplicatePolicy = Literal["keep_first", "replace"]
JOB_STATES = ("queued", "leased", "done", "failed", "dead")
DELIVERY_STATES = ("pending", "sent", "failed")
FINAL_JOB_STATES = ("done", "failed", "dead")
LEASE_EXPIRED = "lease expired: held by no connected worker"

# Each step takes the ledger from version i to i + 1; released steps are never edited.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY, study_key TEXT UNIQUE NOT NULL,
        first_received REAL NOT NULL, last_received REAL NOT NULL);
    CREATE TABLE series (
        series_uid TEXT PRIMARY KEY, series_key TEXT UNIQUE NOT NULL, study_uid TEXT NOT NULL REFERENCES studies,
        modality TEXT NOT NULL, sop_class_uid TEXT NOT NULL, body_part TEXT NOT NULL,
        series_description TEXT NOT NULL, calling_ae TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'open',
        revision INTEGER NOT NULL DEFAULT 0, first_received REAL NOT NULL, last_received REAL NOT NULL,
        completed_at REAL, completion_reason TEXT);
    CREATE TABLE instances (
        sop_instance_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL REFERENCES series, sop_class_uid TEXT NOT NULL,
        spool_name TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, instance_number INTEGER,
        position REAL, orientation TEXT, images_in_acquisition INTEGER, number_of_frames INTEGER,
        received_at REAL NOT NULL, calling_ae TEXT NOT NULL);
    CREATE INDEX instances_by_series ON instances(series_uid);
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY, series_uid TEXT NOT NULL REFERENCES series, series_revision INTEGER NOT NULL,
        model TEXT NOT NULL, model_version TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL, priority INTEGER NOT NULL DEFAULT 0, worker TEXT, reason TEXT,
        result_dir TEXT, created REAL NOT NULL, leased REAL, finished REAL,
        UNIQUE (series_uid, series_revision, model, model_version));
    CREATE INDEX jobs_by_state ON jobs(state, priority DESC, created);
    """,
    """
    ALTER TABLE series ADD COLUMN expected_count INTEGER;
    ALTER TABLE series ADD COLUMN updates INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_expires REAL;
    """,
    """
    CREATE TABLE job_stages (
        job_id TEXT NOT NULL REFERENCES jobs, stage TEXT NOT NULL, seconds REAL NOT NULL,
        PRIMARY KEY (job_id, stage));
    """,
    """
    ALTER TABLE series ADD COLUMN priority_value TEXT NOT NULL DEFAULT '';
    CREATE TABLE deliveries (
        job_id TEXT NOT NULL REFERENCES jobs, destination TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, created REAL NOT NULL, finished REAL,
        reason TEXT, warnings INTEGER NOT NULL DEFAULT 0, result_dir TEXT NOT NULL,
        PRIMARY KEY (job_id, destination));
    CREATE INDEX deliveries_due ON deliveries(state, next_attempt);
    """,
    # Issue 17: a ledger that stays fast with history: indexes for the study report, the assembler tick and
    # the latency ledger, and totals (instances, bytes, jobs and deliveries per state) kept by triggers in the
    # writing transaction, so a /metrics scrape or `status` reads a few rows instead of every instance.
    """
    CREATE INDEX series_by_study ON series(study_uid);
    CREATE INDEX series_by_state ON series(state);
    CREATE INDEX jobs_by_finished ON jobs(state, finished);
    CREATE INDEX deliveries_by_job ON deliveries(job_id, state, finished);
    CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO totals SELECT 'instances', COUNT(*) FROM instances;
    INSERT INTO totals SELECT 'instance_bytes', COALESCE(SUM(size), 0) FROM instances;
    INSERT INTO totals SELECT 'jobs:' || state, COUNT(*) FROM jobs GROUP BY state;
    INSERT INTO totals SELECT 'deliveries:' || state, COUNT(*) FROM deliveries GROUP BY state;
    CREATE TRIGGER totals_instance_added AFTER INSERT ON instances BEGIN
        INSERT INTO totals VALUES ('instances', 1), ('instance_bytes', NEW.size)
        ON CONFLICT(name) DO UPDATE SET value = value + excluded.value; END;
    CREATE TRIGGER totals_instance_resized AFTER UPDATE OF size ON instances BEGIN
        UPDATE totals SET value = value + NEW.size - OLD.size WHERE name = 'instance_bytes'; END;
    CREATE TRIGGER totals_instance_removed AFTER DELETE ON instances BEGIN
        UPDATE totals SET value = value - 1 WHERE name = 'instances';
        UPDATE totals SET value = value - OLD.size WHERE name = 'instance_bytes'; END;
    CREATE TRIGGER totals_job_added AFTER INSERT ON jobs BEGIN
        INSERT INTO totals VALUES ('jobs:' || NEW.state, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1; END;
    CREATE TRIGGER totals_job_moved AFTER UPDATE OF state ON jobs WHEN NEW.state != OLD.state BEGIN
        UPDATE totals SET value = value - 1 WHERE name = 'jobs:' || OLD.state;
        INSERT INTO totals VALUES ('jobs:' || NEW.state, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1; END;
    CREATE TRIGGER totals_job_removed AFTER DELETE ON jobs BEGIN
        UPDATE totals SET value = value - 1 WHERE name = 'jobs:' || OLD.state; END;
    CREATE TRIGGER totals_delivery_added AFTER INSERT ON deliveries BEGIN
        INSERT INTO totals VALUES ('deliveries:' || NEW.state, 1)
        ON CONFLICT(name) DO UPDATE SET value = value + 1; END;
    CREATE TRIGGER totals_delivery_moved AFTER UPDATE OF state ON deliveries WHEN NEW.state != OLD.state BEGIN
        UPDATE totals SET value = value - 1 WHERE name = 'deliveries:' || OLD.state;
        INSERT INTO totals VALUES ('deliveries:' || NEW.state, 1)
        ON CONFLICT(name) DO UPDATE SET value = value + 1; END;
    CREATE TRIGGER totals_delivery_removed AFTER DELETE ON deliveries BEGIN
        UPDATE totals SET value = value - 1 WHERE name = 'deliveries:' || OLD.state; END;
    """,
    # Issue 17: backfill is a choice. A series revision remembers that it was routed, so start-up routes only
    # revisions a crash left unrouted (a new model or version no longer runs on all history), and a job
    # remembers whether its results go to the destinations (backfilled ones only when asked).
    """
    ALTER TABLE series ADD COLUMN routed_revision INTEGER NOT NULL DEFAULT 0;
    UPDATE series SET routed_revision = revision WHERE state = 'complete';
    ALTER TABLE jobs ADD COLUMN deliver INTEGER NOT NULL DEFAULT 1;
    """,
    # Issue 21: notifications, queued in the ledger per event and target like deliveries.
    """
    CREATE TABLE notifications (
        event_id TEXT NOT NULL, notifier TEXT NOT NULL, trigger TEXT NOT NULL, study_uid TEXT NOT NULL,
        job_id TEXT, payload TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL, created REAL NOT NULL, finished REAL, reason TEXT,
        PRIMARY KEY (event_id, notifier));
    CREATE INDEX notifications_due ON notifications(state, next_attempt);
    """,
    # Issue 17: crash-safe removal. Purging a study deletes its rows and records the files to remove in the
    # same transaction; the files go after, and a pass after a crash removes what is still listed.
    """
    CREATE TABLE removals (path TEXT PRIMARY KEY, kind TEXT NOT NULL, since REAL NOT NULL);
    """,
    # Notifications per state kept by triggers like deliveries', so a /metrics scrape reads rows, not history.
    """
    INSERT INTO totals SELECT 'notifications:' || state, COUNT(*) FROM notifications GROUP BY state;
    CREATE TRIGGER totals_notification_added AFTER INSERT ON notifications BEGIN
        INSERT INTO totals VALUES ('notifications:' || NEW.state, 1)
        ON CONFLICT(name) DO UPDATE SET value = value + 1; END;
    CREATE TRIGGER totals_notification_moved AFTER UPDATE OF state ON notifications WHEN NEW.state != OLD.state
    BEGIN
        UPDATE totals SET value = value - 1 WHERE name = 'notifications:' || OLD.state;
        INSERT INTO totals VALUES ('notifications:' || NEW.state, 1)
        ON CONFLICT(name) DO UPDATE SET value = value + 1; END;
    CREATE TRIGGER totals_notification_removed AFTER DELETE ON notifications BEGIN
        UPDATE totals SET value = value - 1 WHERE name = 'notifications:' || OLD.state; END;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

Header = Dataset | RawHeader  # a parsed header, or the receiver's raw-element view of one


class LedgerError(Exception):
    """The ledger file cannot be used (written by a newer ScanStream, or not a ledger)."""


class AddOutcome(Enum):
    """What ``add_instance`` did with an instance."""

    STORED = "stored"
    DUPLICATE_SAME = "duplicate_same"  # same SOP Instance UID, same bytes: nothing changes
    DUPLICATE_KEPT_FIRST = "duplicate_kept_first"  # different bytes, policy keep_first: nothing changes
    REPLACED = "replaced"  # different bytes, policy replace: the new file wins


@dataclass(frozen=True)
class AddResult:
    """The outcome, the spool file the caller must delete (if any), and the study's opaque key.

    ``reopened`` is True when the instance reopened a complete series (it will run again
    as a new revision).
    """

    outcome: AddOutcome
    discard: str | None
    study_key: str
    reopened: bool = False


def _text(ds: Header, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _number(ds: Header, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return int(value)


def priority_key(tag: str) -> str | int:
    """``routing.priority_tag`` as a lookup key: 8 hex digits are a tag number, anything else a keyword."""
    return int(tag, 16) if len(tag) == 8 and all(c in "0123456789abcdefABCDEF" for c in tag) else tag


def _priority_text(ds: Header, tag: str) -> str:
    """The stripped upper-case text of the priority element, "" when not configured or absent."""
    if not tag:
        return ""
    element = ds.get(priority_key(tag))
    value = getattr(element, "value", element)
    return "" if value is None else str(value).strip().upper()[:64]


def _floats(ds: Header, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = tuple(float(v) for v in (value if isinstance(value, (MultiValue, list, tuple)) else [value]))
    if len(values) != count or not all(np.isfinite(values)):
        raise ValueError(f"{keyword} needs {count} finite numbers, got {len(values)}")
    return values


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
    priority_value: str = ""

    @classmethod
    def from_dataset(cls, ds: Header, priority_tag: str = "") -> "InstanceMeta":
        """Read the facts from a (header-only) dataset; a malformed number raises ValueError.

        A missing UID reads as "" (the caller's UID check refuses it). ``priority_tag``
        (a keyword or 8 hex digits) names the element whose text orders the queue.
        """
        try:
            position = _floats(ds, "ImagePositionPatient", 3)
            return cls(
                study_uid=_text(ds, "StudyInstanceUID"),
                series_uid=_text(ds, "SeriesInstanceUID"),
                sop_instance_uid=_text(ds, "SOPInstanceUID"),
                sop_class_uid=_text(ds, "SOPClassUID"),
                modality=_text(ds, "Modality"),
                body_part=_text(ds, "BodyPartExamined"),
                series_description=_text(ds, "SeriesDescription"),
                instance_number=_number(ds, "InstanceNumber"),
                image_position=position,  # type: ignore[arg-type]
                image_orientation=_floats(ds, "ImageOrientationPatient", 6),
                images_in_acquisition=_number(ds, "ImagesInAcquisition"),
                number_of_frames=_number(ds, "NumberOfFrames"),
                priority_value=_priority_text(ds, priority_tag),
            )
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"a header value is malformed ({exc})") from exc

    def position_along_normal(self) -> float | None:
        """Distance of the slice along its normal (row x column direction), or None without geometry."""
        if self.image_position is None or self.image_orientation is None:
            return None
        (rx, ry, rz), (cx, cy, cz) = self.image_orientation[:3], self.image_orientation[3:6]
        x, y, z = self.image_position  # plain arithmetic: numpy's cross costs ~20 us for every instance received
        return float((ry * cz - rz * cy) * x + (rz * cx - rx * cz) * y + (rx * cy - ry * cx) * z)


@dataclass(frozen=True)
class InstanceRow:
    """What the assembler and the job source need of a stored instance."""

    sop_instance_uid: str
    spool_name: str
    position: float | None
    orientation: tuple[float, ...] | None
    images_in_acquisition: int | None
    number_of_frames: int | None
    instance_number: int | None


@dataclass(frozen=True)
class SeriesRow:
    """A series' state; ``updates`` counts instance changes (a guard against completing stale views)."""

    series_uid: str
    series_key: str
    study_uid: str
    state: str
    revision: int
    last_received: float
    instance_count: int
    expected_count: int | None
    updates: int
    completion_reason: str | None


@dataclass(frozen=True)
class JobRow:
    """One job; ``attempts`` is also the attempt number of the current lease."""

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
    lease_expires: float | None
    deliver: int = 1  # 0: a backfilled job whose results stay out of the destinations


_JOB_COLUMNS = ", ".join(f.name for f in fields(JobRow))


@dataclass(frozen=True)
class DeliveryRow:
    """One job's results on their way to one destination."""

    job_id: str
    destination: str
    state: str
    attempts: int
    next_attempt: float
    created: float
    finished: float | None
    reason: str | None
    warnings: int
    result_dir: str


_DELIVERY_COLUMNS = ", ".join(f.name for f in fields(DeliveryRow))

_STUDY_FINISHED = (
    "NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = st.study_uid AND (s.state = 'open'"
    " OR s.routed_revision < s.revision OR EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid"
    " AND (j.state IN ('queued', 'leased') OR EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.job_id"
    " AND d.state = 'pending'))))) AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.study_uid = st.study_uid"
    " AND n.state = 'pending')")
"""SQL on ``studies st``: no open or unrouted series, no queued or leased job, no pending delivery or
notification."""


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a migration step, split where a statement is complete (a trigger's body keeps
    its inner semicolons)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        yield pending


@dataclass(frozen=True)
class NotificationRow:
    """One event (a job done or failed, a study final) on its way to one notification target.

    ``payload`` is the event as JSON text, fixed when the event happened, so every
    attempt sends the same facts.
    """

    event_id: str
    notifier: str
    trigger: str
    study_uid: str
    job_id: str | None
    payload: str
    state: str
    attempts: int
    next_attempt: float
    created: float
    finished: float | None
    reason: str | None


_NOTIFICATION_COLUMNS = ", ".join(f.name for f in fields(NotificationRow))


def _key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def _orientation_text(orientation: tuple[float, ...] | None) -> str | None:
    return None if orientation is None else ",".join(repr(float(v)) for v in orientation)


def _orientation(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in text.split(","))


class Ledger:
    """All persistent state of one receiver."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._job_changes = 0  # jobs queued, done or failed and deliveries recorded since start
        self._job_changed = threading.Condition(self._lock)
        self._closed = False
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(f"{self.path} is not a usable ledger: {exc}") from exc
        except LedgerError:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = int(row[0] or 0)
            if version > SCHEMA_VERSION:
                raise LedgerError(f"{self.path} has schema version {version}; this ScanStream knows up to "
                                  f"{SCHEMA_VERSION} (upgrade ScanStream, or use another data_dir)")
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(_MIGRATIONS[step]):
                    db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version VALUES (?)", (step + 1,))

    def schema_version(self) -> int:
        """The schema version of the open ledger."""
        with self._lock:
            return int(self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    @contextmanager
    def _tx(self, job_change: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``job_change`` wakes :meth:`wait_job_change` callers once it commits."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if job_change:
                self._job_changes += 1
                self._job_changed.notify_all()

    def probe_write(self, timeout: float = 2.0) -> str | None:
        """Take the write lock and change one row, then roll back (waiting at most ``timeout`` for the lock):
        None when the ledger takes writes, else why not. For readiness: a ledger that cannot be written cannot
        store or finish anything. Nothing is committed, so the probe does not move the data version that the
        console's change events watch (a committed probe woke every open page each second)."""
        with self._lock:
            try:
                self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.execute("INSERT INTO totals VALUES ('write_probes', 1)"
                                         " ON CONFLICT(name) DO UPDATE SET value = value + 1")
                    finally:
                        self._db.execute("ROLLBACK")
                finally:
                    self._db.execute("PRAGMA busy_timeout = 30000")
            except sqlite3.Error as exc:
                return f"cannot be written ({exc})"
        return None

    def job_changes(self) -> int:
        """How many job or delivery state changes were committed since the ledger opened."""
        with self._lock:
            return self._job_changes

    def wait_job_change(self, seen: int, timeout: float) -> int:
        """Block until a job is queued, done or failed or a delivery recorded after ``seen`` changes (see
        :meth:`job_changes`), the ledger closes, or ``timeout`` seconds pass; returns the count now."""
        with self._job_changed:
            self._job_changed.wait_for(lambda: self._job_changes != seen or self._closed, timeout)
            return self._job_changes

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite) and wake anyone waiting on a change."""
        with self._lock:
            self._closed = True
            self._job_changed.notify_all()
            self._db.close()

    # -- instances, series, studies -------------------------------------------------------

    def add_instance(self, meta: InstanceMeta, entry: SpoolEntry, calling_ae: str, now: float,
                     duplicate_policy: DuplicatePolicy = "keep_first") -> AddResult:
        """Record a spooled instance; a late instance reopens its complete series for a new revision."""
        with self._tx() as db:
            old = db.execute("SELECT i.spool_name, i.sha256, st.study_key FROM instances i"
                             " JOIN series s ON s.series_uid = i.series_uid"
                             " JOIN studies st ON st.study_uid = s.study_uid"
                             " WHERE i.sop_instance_uid = ?", (meta.sop_instance_uid,)).fetchone()
            if old is not None and (old["sha256"] == entry.sha256 or duplicate_policy == "keep_first"):
                same = old["sha256"] == entry.sha256
                outcome = AddOutcome.DUPLICATE_SAME if same else AddOutcome.DUPLICATE_KEPT_FIRST
                return AddResult(outcome, entry.name, str(old["study_key"]))
            reopened = self._upsert_study_series(db, meta, calling_ae, now)
            values = (meta.series_uid, meta.sop_class_uid, entry.name, entry.sha256, entry.size,
                      meta.instance_number, meta.position_along_normal(), _orientation_text(meta.image_orientation),
                      meta.images_in_acquisition, meta.number_of_frames, now, calling_ae, meta.sop_instance_uid)
            if old is None:
                db.execute("INSERT INTO instances (series_uid, sop_class_uid, spool_name, sha256, size,"
                           " instance_number, position, orientation, images_in_acquisition, number_of_frames,"
                           " received_at, calling_ae, sop_instance_uid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", values)
                outcome, discard = AddOutcome.STORED, None
            else:
                db.execute("UPDATE instances SET series_uid=?, sop_class_uid=?, spool_name=?, sha256=?, size=?,"
                           " instance_number=?, position=?, orientation=?, images_in_acquisition=?,"
                           " number_of_frames=?, received_at=?, calling_ae=? WHERE sop_instance_uid=?", values)
                outcome, discard = AddOutcome.REPLACED, old["spool_name"]
            return AddResult(outcome, discard, self._study_key(db, meta.study_uid), reopened)

    @staticmethod
    def _upsert_study_series(db: sqlite3.Connection, meta: InstanceMeta, calling_ae: str, now: float) -> bool:
        """Create or touch the study and series; returns True when a complete series was reopened."""
        db.execute("INSERT INTO studies (study_uid, study_key, first_received, last_received) VALUES (?,?,?,?)"
                   " ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received",
                   (meta.study_uid, _key("st"), now, now))
        state = db.execute("SELECT state FROM series WHERE series_uid = ?", (meta.series_uid,)).fetchone()
        db.execute(
            "INSERT INTO series (series_uid, series_key, study_uid, modality, sop_class_uid, body_part,"
            " series_description, calling_ae, first_received, last_received, expected_count, updates, priority_value)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,1,?)"
            " ON CONFLICT(series_uid) DO UPDATE SET last_received = excluded.last_received, state = 'open',"
            " priority_value = CASE WHEN excluded.priority_value != '' THEN excluded.priority_value"
            " ELSE series.priority_value END,"
            " expected_count = COALESCE(excluded.expected_count, series.expected_count),"
            " updates = series.updates + 1",
            (meta.series_uid, _key("se"), meta.study_uid, meta.modality, meta.sop_class_uid, meta.body_part,
             meta.series_description, calling_ae, now, now, meta.images_in_acquisition, meta.priority_value))
        return state is not None and state[0] == "complete"

    @staticmethod
    def _study_key(db: sqlite3.Connection, study_uid: str) -> str:
        row = db.execute("SELECT study_key FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        if row is None:
            raise KeyError("unknown study")
        return str(row[0])

    def series(self, series_uid: str) -> SeriesRow | None:
        """One series with its instance count, or None."""
        rows = self._series_rows("WHERE s.series_uid = ?", (series_uid,))
        return rows[0] if rows else None

    def open_series(self) -> list[SeriesRow]:
        """Every series still waiting to complete (what the assembler's tick checks)."""
        return self._series_rows("WHERE s.state = 'open'", ())

    def _series_rows(self, where: str, params: tuple) -> list[SeriesRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.series_uid, s.series_key, s.study_uid, s.state, s.revision, s.last_received,"
                " (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) AS instance_count,"
                f" s.expected_count, s.updates, s.completion_reason FROM series s {where}", params).fetchall()
        return [SeriesRow(*row) for row in rows]

    def finished_studies(self, before: float | None = None) -> list[str]:
        """UIDs of studies whose work is all finished (no open series, no queued or leased job, no pending
        delivery), last received before ``before`` when given, oldest first: what may be removed."""
        where, params = ("", ()) if before is None else (" AND st.last_received < ?", (before,))
        with self._lock:
            return [r[0] for r in self._db.execute(
                f"SELECT st.study_uid FROM studies st WHERE {_STUDY_FINISHED}{where} ORDER BY st.last_received",
                params)]

    def oldest_study_received(self) -> float | None:
        """When the oldest retained study last received an instance, or None without studies."""
        with self._lock:
            row = self._db.execute("SELECT MIN(last_received) FROM studies").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def remove_study(self, study_uid: str, now: float) -> list[tuple[str, str]] | None:
        """Delete a finished study's rows and list its files in ``removals``, in one transaction; returns the
        (path, kind) to remove (spool names as kind "spool", results folders as "results"), or None when the
        study is unknown or has unfinished work."""
        with self._tx(job_change=True) as db:
            if db.execute(f"SELECT 1 FROM studies st WHERE st.study_uid = ? AND {_STUDY_FINISHED}",
                          (study_uid,)).fetchone() is None:
                return None
            series = [r[0] for r in db.execute("SELECT series_uid FROM series WHERE study_uid = ?", (study_uid,))]
            marks = ",".join("?" * len(series))
            jobs = [r[0] for r in db.execute(f"SELECT job_id FROM jobs WHERE series_uid IN ({marks})", series)]
            job_marks = ",".join("?" * len(jobs))
            files = [(r[0], "spool") for r in db.execute(
                f"SELECT spool_name FROM instances WHERE series_uid IN ({marks})", series)]
            files += [(r[0], "results") for r in db.execute(
                f"SELECT DISTINCT result_dir FROM jobs WHERE job_id IN ({job_marks}) AND result_dir IS NOT NULL",
                jobs)]
            db.executemany("INSERT OR IGNORE INTO removals VALUES (?, ?, ?)", [(p, k, now) for p, k in files])
            db.execute(f"DELETE FROM deliveries WHERE job_id IN ({job_marks})", jobs)
            db.execute(f"DELETE FROM job_stages WHERE job_id IN ({job_marks})", jobs)
            db.execute(f"DELETE FROM jobs WHERE job_id IN ({job_marks})", jobs)
            db.execute(f"DELETE FROM instances WHERE series_uid IN ({marks})", series)
            db.execute(f"DELETE FROM series WHERE series_uid IN ({marks})", series)
            db.execute("DELETE FROM notifications WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))
            return files

    def removals(self) -> list[tuple[str, str]]:
        """(path, kind) of files a removal listed and that are not confirmed gone yet."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute("SELECT path, kind FROM removals ORDER BY since, path")]

    def removed(self, paths: Sequence[str]) -> None:
        """Confirm that these listed files are gone."""
        with self._tx() as db:
            db.executemany("DELETE FROM removals WHERE path = ?", [(p,) for p in paths])

    def instance_files(self) -> list[tuple[str, str]]:
        """(series key, spool name) of every stored instance, for ``scanstream verify``."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                "SELECT s.series_key, i.spool_name FROM instances i JOIN series s USING (series_uid)")]

    def result_folders(self) -> list[tuple[str, str]]:
        """(job id, results folder) of every done job, for ``scanstream verify``."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                "SELECT job_id, result_dir FROM jobs WHERE state = 'done' AND result_dir IS NOT NULL")]

    def series_instances(self, series_uid: str) -> list[InstanceRow]:
        """The series' instances, ordered along the slice normal where known."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, spool_name, position, orientation, images_in_acquisition,"
                " number_of_frames, instance_number FROM instances WHERE series_uid = ?"
                " ORDER BY position, instance_number, sop_instance_uid", (series_uid,)).fetchall()
        return [InstanceRow(r[0], r[1], r[2], _orientation(r[3]), r[4], r[5], r[6]) for r in rows]

    def complete_series(self, series_uid: str, reason: str, now: float, seen_updates: int | None = None) -> int:
        """Mark an open series complete; returns its new revision, or 0 if it was not open.

        With ``seen_updates`` it completes only if no instance arrived since the caller
        looked (so a completion decision never covers instances it did not see).
        """
        guard, params = ("", ()) if seen_updates is None else (" AND updates = ?", (seen_updates,))
        with self._tx() as db:
            updated = db.execute("UPDATE series SET state = 'complete', revision = revision + 1, completed_at = ?,"
                                 " completion_reason = ? WHERE series_uid = ? AND state = 'open'" + guard,
                                 (now, reason, series_uid, *params)).rowcount
            if not updated:
                return 0
            return int(db.execute("SELECT revision FROM series WHERE series_uid = ?", (series_uid,)).fetchone()[0])

    def complete_series_revisions(self, since: float | None = None) -> list[tuple[str, int]]:
        """(series UID, revision) of every complete series (completed at or after ``since`` when given)."""
        where, params = ("", ()) if since is None else (" AND completed_at >= ?", (since,))
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                f"SELECT series_uid, revision FROM series WHERE state = 'complete'{where} ORDER BY completed_at",
                params)]

    def unrouted_series_revisions(self) -> list[tuple[str, int]]:
        """(series UID, revision) of complete series whose revision was never routed (a crash in between)."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                "SELECT series_uid, revision FROM series WHERE state = 'complete' AND routed_revision < revision"
                " ORDER BY completed_at")]

    def mark_routed(self, series_uid: str, revision: int) -> None:
        """Record that ``revision`` of the series went through the router (its jobs, if any, are queued)."""
        with self._tx() as db:
            db.execute("UPDATE series SET routed_revision = MAX(routed_revision, ?) WHERE series_uid = ?",
                       (revision, series_uid))

    def series_info(self, series_uid: str) -> SeriesInfo:
        """What selectors see of a series (raises KeyError for an unknown series)."""
        with self._lock:
            row = self._db.execute(
                "SELECT s.*, COUNT(i.sop_instance_uid) AS n, COALESCE(SUM(COALESCE(i.number_of_frames, 1)), 0) AS f"
                " FROM series s LEFT JOIN instances i ON i.series_uid = s.series_uid WHERE s.series_uid = ?"
                " GROUP BY s.series_uid", (series_uid,)).fetchone()
        if row is None:
            raise KeyError("unknown series")
        return SeriesInfo(study_uid=row["study_uid"], series_uid=row["series_uid"], modality=row["modality"],
                          sop_class_uid=row["sop_class_uid"], body_part=row["body_part"],
                          series_description=row["series_description"], calling_ae=row["calling_ae"],
                          instance_count=int(row["n"]), frame_count=int(row["f"]))

    def series_priority_value(self, series_uid: str) -> str:
        """The text of the configured priority element seen on the series ("" when none)."""
        with self._lock:
            row = self._db.execute("SELECT priority_value FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return "" if row is None else str(row[0])

    def study_key(self, study_uid: str) -> str:
        """The opaque key of a study (used in result paths and logs); KeyError if unknown."""
        with self._lock:
            return self._study_key(self._db, study_uid)

    def series_key(self, series_uid: str) -> str:
        """The opaque key of a series; KeyError if unknown."""
        with self._lock:
            row = self._db.execute("SELECT series_key FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        if row is None:
            raise KeyError("unknown series")
        return str(row[0])

    # -- jobs ----------------------------------------------------------------------------

    def create_job(self, series_uid: str, revision: int, model: str, model_version: str, now: float,
                   priority: int = 0, max_attempts: int = 3, deliver: bool = True) -> str | None:
        """Queue a job; None when the (series, revision, model, version) job already exists.

        ``deliver=False`` keeps its results out of the destinations (a backfill not asked to deliver).
        """
        job_id = uuid.uuid4().hex[:16]
        with self._tx(job_change=True) as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, series_uid, series_revision, model, model_version, state,"
                " max_attempts, priority, created, deliver) VALUES (?,?,?,?,?, 'queued', ?,?,?,?)",
                (job_id, series_uid, revision, model, model_version, max_attempts, priority, now,
                 int(deliver))).rowcount
        return job_id if inserted else None

    def claim_job(self, worker: str, now: float, models: Sequence[str] | None = None,
                  lease_seconds: float | None = None) -> JobRow | None:
        """Lease the most urgent queued job (of ``models`` when given) to ``worker``; attempts += 1."""
        with self._tx() as db:
            query = "SELECT job_id FROM jobs WHERE state = 'queued'"
            params: list[object] = []
            if models is not None:
                query += f" AND model IN ({','.join('?' * len(models))})"
                params.extend(models)
            row = db.execute(query + " ORDER BY priority DESC, created, job_id LIMIT 1", params).fetchone()
            if row is None:
                return None
            expires = None if lease_seconds is None else now + lease_seconds
            db.execute("UPDATE jobs SET state = 'leased', attempts = attempts + 1, worker = ?, leased = ?,"
                       " lease_expires = ? WHERE job_id = ?", (worker, now, expires, row[0]))
            return self._job(db, row[0])

    @staticmethod
    def _job(db: sqlite3.Connection, job_id: str) -> JobRow | None:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else JobRow(*row)

    def job(self, job_id: str) -> JobRow | None:
        """One job, or None."""
        with self._lock:
            return self._job(self._db, job_id)

    def complete_job(self, job_id: str, attempt: int, result_dir: str, now: float,
                     stages: Mapping[str, float] | None = None, deliveries: Sequence[str] = ()) -> bool:
        """Leased at ``attempt`` -> done, keeping the worker's stage durations (seconds) of that attempt;
        False (and no change) for a stale attempt.

        ``deliveries`` names the destinations the results go to: queued in the same
        transaction, so a crash never leaves a done job whose delivery was forgotten.
        """
        with self._tx(job_change=True) as db:
            done = db.execute("UPDATE jobs SET state = 'done', result_dir = ?, finished = ?, reason = NULL,"
                              " lease_expires = NULL WHERE job_id = ? AND state = 'leased' AND attempts = ?",
                              (result_dir, now, job_id, attempt)).rowcount == 1
            if done:
                db.execute("DELETE FROM job_stages WHERE job_id = ?", (job_id,))
                db.executemany("INSERT INTO job_stages VALUES (?, ?, ?)",
                               [(job_id, str(stage), float(seconds)) for stage, seconds in (stages or {}).items()])
                db.executemany("INSERT OR IGNORE INTO deliveries (job_id, destination, state, next_attempt, created,"
                               " result_dir) VALUES (?, ?, 'pending', ?, ?, ?)",
                               [(job_id, name, now, now, result_dir) for name in deliveries])
            return done

    def timelines(self, job_ids: Sequence[str] | None = None, limit: int = 10000) -> list[JobTimeline]:
        """The latency ledger of done jobs (newest first, at most ``limit``, or just ``job_ids``)."""
        query = ("SELECT j.job_id, j.model, s.first_received, s.last_received, s.completed_at, j.created,"
                 " j.leased, j.finished, (SELECT MAX(d.finished) FROM deliveries d WHERE d.job_id = j.job_id"
                 " AND d.state = 'sent') FROM jobs j JOIN series s USING (series_uid)")
        params: tuple = ()
        if job_ids is None:
            query += " WHERE j.state = 'done'"
        else:  # by primary key: "+" keeps the planner off the state index, which walks every done job
            query += f" WHERE j.job_id IN ({','.join('?' * len(job_ids))}) AND +j.state = 'done'"
            params = tuple(job_ids)
        query += " ORDER BY j.finished DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, params + (limit,)).fetchall()
            stages: dict[str, dict[str, float]] = {}
            for job_id, stage, seconds in self._db.execute(
                    f"SELECT job_id, stage, seconds FROM job_stages WHERE job_id IN ({','.join('?' * len(rows))})",
                    tuple(row[0] for row in rows)).fetchall():
                stages.setdefault(job_id, {})[stage] = seconds
        return [JobTimeline(*row[:8], worker_stages=stages.get(row[0], {}), delivered=row[8]) for row in rows]

    def study_bytes(self, study_uid: str) -> int:
        """Bytes of the instances stored for one study so far."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(i.size), 0) FROM instances i JOIN series s USING (series_uid)"
                                   " WHERE s.study_uid = ?", (study_uid,)).fetchone()
        return int(row[0])

    # -- deliveries ----------------------------------------------------------------------

    def due_deliveries(self, now: float, limit: int = 32) -> list[DeliveryRow]:
        """Pending deliveries whose next attempt is due, oldest first."""
        return [DeliveryRow(*row) for row in self._due("deliveries", _DELIVERY_COLUMNS, now, limit)]

    def next_delivery_due(self) -> float | None:
        """When the earliest pending delivery is due (epoch seconds), or None."""
        return self._next_due("deliveries")

    def _due(self, table: str, columns: str, now: float, limit: int) -> list[tuple]:
        """Rows of a retry queue (deliveries, notifications) pending and due by ``now``, oldest first."""
        with self._lock:
            return self._db.execute(f"SELECT {columns} FROM {table} WHERE state = 'pending'"
                                    " AND next_attempt <= ? ORDER BY next_attempt, created LIMIT ?",
                                    (now, limit)).fetchall()

    def _next_due(self, table: str) -> float | None:
        """When the earliest pending row of a retry queue is due (epoch seconds), or None."""
        with self._lock:
            row = self._db.execute(f"SELECT MIN(next_attempt) FROM {table} WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def record_delivery(self, job_id: str, destination: str, state: str, now: float, *, reason: str | None = None,
                        warnings: int = 0, next_attempt: float | None = None) -> None:
        """Record one attempt: ``sent`` or ``failed`` (final), or ``pending`` again at ``next_attempt``."""
        if state not in DELIVERY_STATES:
            raise ValueError(f"unknown delivery state {state!r}")
        with self._tx(job_change=True) as db:
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, reason = ?, warnings = ?,"
                       " next_attempt = COALESCE(?, next_attempt), finished = ? WHERE job_id = ? AND destination = ?",
                       (state, reason, warnings, next_attempt, None if state == "pending" else now, job_id,
                        destination))

    def deliveries(self, job_ids: Sequence[str] | None = None, state: str | None = None) -> list[DeliveryRow]:
        """Deliveries of ``job_ids`` (every delivery when None), in ``state`` when given, oldest first."""
        clauses, params = [], ()
        if job_ids is not None:
            clauses.append(f"job_id IN ({','.join('?' * len(job_ids))})")
            params = tuple(job_ids)
        if state is not None:
            clauses.append("state = ?")
            params += (state,)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries{where} ORDER BY created, job_id,"
                                    " destination", params).fetchall()
        return [DeliveryRow(*row) for row in rows]

    def delivery_counts(self) -> dict[str, int]:
        """Deliveries per state (every state present, zero included)."""
        return self._per_state("deliveries:")

    def requeue_delivery(self, job_id: str, destination: str, now: float) -> bool:
        """Send a failed delivery again from now, with fresh attempts."""
        with self._tx() as db:
            return db.execute("UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt = ?,"
                              " finished = NULL WHERE job_id = ? AND destination = ? AND state = 'failed'",
                              (now, job_id, destination)).rowcount == 1

    def received_totals(self) -> tuple[int, int]:
        """(instances, bytes) stored so far."""
        totals = self._totals("instance")
        return int(totals.get("s", 0)), int(totals.get("_bytes", 0))

    def fail_job(self, job_id: str, attempt: int, reason: str, retryable: bool, now: float) -> str | None:
        """Requeue a retryable failure with attempts left, else 'failed' (not retryable) or 'dead'
        (retries exhausted); returns the new state, or None for a stale attempt (no change)."""
        with self._tx(job_change=True) as db:
            row = db.execute("SELECT attempts, max_attempts FROM jobs WHERE job_id = ? AND state = 'leased'"
                             " AND attempts = ?", (job_id, attempt)).fetchone()
            if row is None:
                return None
            state = "queued" if retryable and row[0] < row[1] else ("dead" if retryable else "failed")
            db.execute("UPDATE jobs SET state = ?, reason = ?, finished = ?, lease_expires = NULL WHERE job_id = ?",
                       (state, reason, None if state == "queued" else now, job_id))
            return state

    def release_job(self, job_id: str, attempt: int, reason: str, now: float,
                    count_attempt: bool = True) -> str | None:
        """A lease was lost: queue again, or dead-letter after max attempts.

        ``count_attempt=False`` is for a worker that left cleanly (stopped or re-registered):
        the job did not fail, so its attempt is given back and a rolling restart never
        dead-letters work.
        """
        if count_attempt:
            return self.fail_job(job_id, attempt, f"lease lost: {reason}", True, now)
        with self._tx() as db:
            released = db.execute("UPDATE jobs SET state = 'queued', attempts = attempts - 1, worker = NULL,"
                                  " reason = ? WHERE job_id = ? AND state = 'leased' AND attempts = ?",
                                  (f"released: {reason}", job_id, attempt)).rowcount
        return "queued" if released else None

    def requeue(self, job_id: str, now: float) -> bool:
        """Put a failed or dead-lettered job back in the queue with fresh attempts, or a leased one whose
        lease expired (the broker renews the leases its connected workers hold, so it is held by none)."""
        with self._tx(job_change=True) as db:
            return db.execute("UPDATE jobs SET state = 'queued', attempts = 0, worker = NULL, finished = NULL,"
                              " lease_expires = NULL, reason = 'requeued: ' || COALESCE(reason, '') WHERE job_id = ?"
                              " AND (state IN ('failed', 'dead') OR (state = 'leased' AND"
                              " (lease_expires IS NULL OR lease_expires < ?)))", (job_id, now)).rowcount == 1

    def reap_leases(self, held: Collection[str], now: float, lease_seconds: float) -> list[tuple[str, str]]:
        """Renew the leases of ``held`` jobs (those a connected worker holds) and take back every other
        lease past ``lease_expires``: queued again, or dead-lettered after max attempts.

        Returns (job id, new state) of each lease taken back. A lease is renewed once less
        than half of it is left, so a pass writes nothing while every lease is fresh.
        """
        held, holding = tuple(held), set(held)
        renew_before = now + lease_seconds / 2
        with self._tx(job_change=True) as db:
            if held:
                db.execute(f"UPDATE jobs SET lease_expires = ? WHERE state = 'leased' AND job_id IN"
                           f" ({','.join('?' * len(held))}) AND (lease_expires IS NULL OR lease_expires < ?)",
                           (now + lease_seconds, *held, renew_before))
            expired = [row for row in db.execute(
                "SELECT job_id, attempts, max_attempts FROM jobs WHERE state = 'leased'"
                " AND (lease_expires IS NULL OR lease_expires < ?)", (now,)).fetchall() if row[0] not in holding]
            taken: list[tuple[str, str]] = []
            for job_id, attempts, max_attempts in expired:
                state = "queued" if attempts < max_attempts else "dead"
                db.execute("UPDATE jobs SET state = ?, reason = ?, worker = NULL, lease_expires = NULL,"
                           " finished = ? WHERE job_id = ?",
                           (state, LEASE_EXPIRED, None if state == "queued" else now, job_id))
                taken.append((job_id, state))
            return taken

    def requeue_leased_on_start(self) -> int:
        """Jobs leased when the receiver stopped go back to the queue; returns how many."""
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state = 'queued', worker = NULL, lease_expires = NULL"
                              " WHERE state = 'leased'").rowcount

    def study_jobs(self, study_uid: str) -> list[JobRow]:
        """Every job of a study's series, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join('j.' + f.name for f in fields(JobRow))} FROM jobs j"
                " JOIN series s ON s.series_uid = j.series_uid WHERE s.study_uid = ? ORDER BY j.created, j.job_id",
                (study_uid,)).fetchall()
        return [JobRow(*row) for row in rows]

    def study_series(self, study_uid: str) -> list[SeriesRow]:
        """Every series of a study (empty for an unknown study)."""
        return self._series_rows("WHERE s.study_uid = ? ORDER BY s.first_received, s.series_uid", (study_uid,))

    def final_study_jobs(self, study_uid: str, minimum: int = 1) -> list[JobRow] | None:
        """The study's jobs once there are ``minimum`` and none is queued or leased, else None."""
        jobs = self.study_jobs(study_uid)
        if len(jobs) >= minimum and all(job.state in FINAL_JOB_STATES for job in jobs):
            return jobs
        return None

    def list_jobs(self, state: str | None = None) -> list[JobRow]:
        """Every job (in ``state`` when given), oldest first."""
        where, params = (" WHERE state = ?", (state,)) if state else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs{where} ORDER BY created, job_id",
                                    params).fetchall()
        return [JobRow(*row) for row in rows]

    def job_counts(self) -> dict[str, int]:
        """Jobs per state (every state present, zero included)."""
        found = self._totals("jobs:")
        return {state: int(found.get(state, 0)) for state in JOB_STATES}

    def _per_state(self, prefix: str) -> dict[str, int]:
        """A retry queue's (deliveries', notifications') trigger-kept totals for every state, zero included."""
        found = self._totals(prefix)
        return {state: int(found.get(state, 0)) for state in DELIVERY_STATES}

    def _totals(self, prefix: str) -> dict[str, int]:
        """The trigger-kept totals whose name starts with ``prefix``, by the rest of their name."""
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM totals WHERE name >= ? AND name < ?",
                                    (prefix, prefix + "\uffff")).fetchall()
        return {name[len(prefix):]: int(value) for name, value in rows}

    def status_counts(self) -> dict[str, int]:
        """What ``scanstream status`` shows: studies, series, instances, queue depth and job states."""
        jobs = self.job_counts()
        with self._lock:
            studies = self._db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
            series = dict(self._db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall())
            unrouted = self._db.execute("SELECT COUNT(*) FROM series s WHERE s.state = 'complete' AND NOT EXISTS"
                                        " (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid)").fetchone()[0]
        deliveries = self.delivery_counts()
        instances = self.received_totals()[0]
        notifications = self.notification_counts()
        return {"studies": studies, "series open": series.get("open", 0),
                "series complete": series.get("complete", 0), "series unrouted": unrouted, "instances": instances,
                "queue depth": jobs["queued"], "in flight": jobs["leased"], "done": jobs["done"],
                "failed": jobs["failed"], "dead-lettered": jobs["dead"],
                "deliveries pending": deliveries["pending"], "deliveries sent": deliveries["sent"],
                "deliveries failed": deliveries["failed"],
                "notifications pending": notifications["pending"], "notifications sent": notifications["sent"],
                "notifications failed": notifications["failed"]}

    # -- notifications ---------------------------------------------------------------------

    def add_notifications(self, event_id: str, trigger: str, study_uid: str, job_id: str | None, payload: str,
                          notifiers: Sequence[str], now: float) -> int:
        """Queue one event for ``notifiers`` (an event already queued is not queued twice); returns how many."""
        with self._tx(job_change=True) as db:
            return db.executemany(
                "INSERT OR IGNORE INTO notifications (event_id, notifier, trigger, study_uid, job_id, payload, state,"
                " next_attempt, created) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                [(event_id, name, trigger, study_uid, job_id, payload, now, now) for name in notifiers]).rowcount

    def due_notifications(self, now: float, limit: int = 32) -> list[NotificationRow]:
        """Pending notifications whose next attempt is due, oldest first."""
        return [NotificationRow(*row) for row in self._due("notifications", _NOTIFICATION_COLUMNS, now, limit)]

    def next_notification_due(self) -> float | None:
        """When the earliest pending notification is due (epoch seconds), or None."""
        return self._next_due("notifications")

    def record_notification(self, event_id: str, notifier: str, state: str, now: float, *,
                            reason: str | None = None, next_attempt: float | None = None) -> None:
        """Record one attempt: ``sent`` or ``failed`` (final), or ``pending`` again at ``next_attempt``."""
        if state not in DELIVERY_STATES:
            raise ValueError(f"unknown notification state {state!r}")
        with self._tx(job_change=True) as db:
            db.execute("UPDATE notifications SET state = ?, attempts = attempts + 1, reason = ?,"
                       " next_attempt = COALESCE(?, next_attempt), finished = ? WHERE event_id = ? AND notifier = ?",
                       (state, reason, next_attempt, None if state == "pending" else now, event_id, notifier))

    def notifications(self, study_uid: str | None = None, state: str | None = None) -> list[NotificationRow]:
        """Notifications of one study (every one when None), in ``state`` when given, oldest first."""
        clauses = [(column, value) for column, value in (("study_uid", study_uid), ("state", state))
                   if value is not None]
        where = " WHERE " + " AND ".join(f"{column} = ?" for column, _ in clauses) if clauses else ""
        params = tuple(value for _, value in clauses)
        with self._lock:
            rows = self._db.execute(f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications{where}"
                                    " ORDER BY created, event_id, notifier", params).fetchall()
        return [NotificationRow(*row) for row in rows]

    def notification_counts(self) -> dict[str, int]:
        """Notifications per state (every state present, zero included)."""
        return self._per_state("notifications:")
