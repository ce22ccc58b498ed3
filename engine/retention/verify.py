"""``scanstream verify``: the ledger and the spool and results folders, checked against each other.

Orphans both ways: a ledger row naming a file or folder that is gone (an instance's
spool file, a done job's results folder), and a file or folder no row names (a spool
file no instance has, a results folder no done job has, a partial ``.part``/``.tmp``/
``.old`` left by a crash). Findings name opaque keys and paths, never UIDs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.ledger.store import Ledger
from engine.receiver.spool import Spool


@dataclass
class VerifyReport:
    """What was checked and every disagreement found, one line each."""

    instances: int = 0
    result_folders: int = 0
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Whether ledger and files agree."""
        return not self.missing and not self.orphans


def verify(ledger: Ledger, spool: Spool, results_root: Path) -> VerifyReport:
    """Walk the ledger's instance files and done jobs' folders, then the spool and results trees."""
    report = VerifyReport()
    named_files = set()
    for series_key, spool_name in ledger.instance_files():
        report.instances += 1
        named_files.add(spool_name)
        if not spool.has(spool_name):
            report.missing.append(f"instance of series {series_key}: spool file {spool_name} is missing")
    for folder in sorted(spool.root.iterdir()):
        if not folder.is_dir():
            report.orphans.append(f"spool: {folder.name} is not a spool folder")
            continue
        for path in sorted(folder.iterdir()):
            if path.name not in named_files:
                report.orphans.append(f"spool: {folder.name}/{path.name} is named by no instance")
    named_folders = set()
    for job_id, result_dir in ledger.result_folders():
        report.result_folders += 1
        parts = Path(result_dir).parts[-3:]  # <study key>/<model>/<series key>, wherever the engine ran from
        named_folders.add(parts)
        if not results_root.joinpath(*parts).is_dir():
            report.missing.append(f"job {job_id}: results folder {'/'.join(parts)} is missing")
    if results_root.is_dir():
        for folder in sorted(results_root.glob("*/*/*")):
            relative = folder.relative_to(results_root)
            if relative.parts not in named_folders:
                report.orphans.append(f"results: {relative} is named by no done job")
    return report
