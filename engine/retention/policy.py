"""The retention policy: which finished studies go in one pass, by age and then to stay under a quota.

Every removal goes through :func:`engine.retention.purge.purge` (one ledger
transaction, then the file deletions), so a study with unfinished work (open
series, queued or leased jobs, pending deliveries or notifications) is never
removed. The clock is passed in, so a test or a simulation decides what "now" is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.config.sections import RetentionConfig
from engine.ledger.store import Ledger
from engine.logs import get_logger
from engine.receiver.spool import Spool
from engine.retention.purge import finish_removals, purge

log = get_logger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class PassOutcome:
    """What one pass did and where it left the data folder."""

    expired: int
    recycled: int
    used_bytes: int
    quota_full: bool
    """Still over ``quota_bytes`` with nothing left that may be recycled: new associations must be refused."""


def folder_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (0 when it does not exist)."""
    if not root.is_dir():
        return 0
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


class RetentionPolicy:
    """Applies ``[retention]`` to one data folder's ledger, spool and results."""

    def __init__(self, config: RetentionConfig, ledger: Ledger, spool: Spool, results_root: Path,
                 ledger_path: Path, clock: Callable[[], float]) -> None:
        self._config = config
        self._ledger = ledger
        self._spool = spool
        self._results = results_root
        self._ledger_path = ledger_path
        self._clock = clock

    def used_bytes(self) -> int:
        """Spool (the ledger's kept total of stored instances) + results folders + the ledger's database file.

        The WAL is left out: SQLite's checkpoint bounds it (about 4 MB) and a file that grows with every write
        and never shrinks would make a pass recycle studies for bytes that removing them cannot free.
        """
        ledger = self._ledger_path.stat().st_size if self._ledger_path.exists() else 0
        return self._ledger.received_totals()[1] + folder_bytes(self._results) + ledger

    def _purge(self, uids: list[str], now: float) -> int:
        return purge(self._ledger, self._spool, self._results, uids, now).studies if uids else 0

    def run_pass(self) -> PassOutcome:
        """Remove finished studies older than ``keep_days``, then the oldest finished ones while over quota."""
        now = self._clock()
        finish_removals(self._ledger, self._spool, self._results)  # a crash's leftovers first
        settled = now - self._config.grace_hours * 3600.0
        expired = 0
        if self._config.keep_days is not None:
            cutoff = min(settled, now - self._config.keep_days * DAY_S)
            expired = self._purge(self._ledger.finished_studies(before=cutoff), now)
        recycled = 0
        used = self.used_bytes()
        quota = self._config.quota_bytes
        while quota is not None and used > quota:
            oldest = self._ledger.finished_studies(before=settled)[:1]  # oldest first
            if not self._purge(oldest, now):
                break
            recycled += 1
            used = self.used_bytes()
        full = quota is not None and used > quota
        if expired or recycled:
            log.info("retention.pass", expired=expired, recycled=recycled, used_bytes=used, quota_bytes=quota)
        return PassOutcome(expired, recycled, used, full)
