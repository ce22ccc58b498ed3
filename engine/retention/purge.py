"""Removing finished studies, safe to repeat after a crash.

A removal is one ledger transaction (the study's rows deleted, its files listed in
``removals``) and then the file deletions, each confirmed in the ledger once done.
A crash between the two leaves files that ``removals`` still names: the next pass
(:func:`finish_removals`, run first by every purge) deletes them. So no ledger row
ever names a missing file, and after the next pass no file is left that no row names.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.ledger.store import Ledger
from engine.logs import get_logger
from engine.receiver.spool import Spool

log = get_logger(__name__)


@dataclass
class PurgeOutcome:
    """What a purge removed (or, dry, would remove)."""

    studies: int = 0
    files: int = 0
    refused: list[str] = field(default_factory=list)


def _remove(spool: Spool, results_root: Path, path: str, kind: str) -> None:
    """Delete one listed file or folder; gone already is fine (a repeat after a crash)."""
    if kind == "spool":
        spool.remove(path)
    else:
        target = results_root.joinpath(*Path(path).parts[-3:])
        shutil.rmtree(target, ignore_errors=True)
        if target.exists():
            raise OSError(f"cannot remove {target}")


def finish_removals(ledger: Ledger, spool: Spool, results_root: Path) -> int:
    """Delete every file a past removal listed and confirm each; returns how many were confirmed."""
    done = []
    for path, kind in ledger.removals():
        _remove(spool, results_root, path, kind)
        done.append(path)
    if done:
        ledger.removed(done)
    return len(done)


def purge(ledger: Ledger, spool: Spool, results_root: Path, study_uids: list[str], now: float,
          dry_run: bool = False) -> PurgeOutcome:
    """Remove the named studies, each only if all its work is finished (unfinished ones are refused)."""
    outcome = PurgeOutcome()
    if not dry_run:
        finish_removals(ledger, spool, results_root)
    finished = set(ledger.finished_studies())
    for uid in study_uids:
        if uid not in finished:
            outcome.refused.append(uid)
            continue
        if dry_run:
            outcome.studies += 1
            continue
        files = ledger.remove_study(uid, now)
        if files is None:  # work arrived since the check
            outcome.refused.append(uid)
            continue
        outcome.studies += 1
        outcome.files += finish_removals(ledger, spool, results_root)
        log.info("retention.study_removed", files=len(files))
    return outcome
