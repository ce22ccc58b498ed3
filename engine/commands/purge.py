"""``scanstream purge``: remove finished studies by UID or age (``--dry-run`` to see what would go)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.commands.common import add_command, config_from_args, open_ledger


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``purge``."""
    purge = add_command(sub, "purge", cmd_purge, "remove finished studies (ledger rows, spool files, results)")
    purge.add_argument("studies", nargs="*", help="Study Instance UIDs to remove")
    purge.add_argument("--older-than", type=float, metavar="DAYS", help="every finished study last received "
                                                                         "more than DAYS days ago")
    purge.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    purge.add_argument("--data-dir", type=Path)


def cmd_purge(args: argparse.Namespace) -> int:
    """Remove the studies named or old enough; exit 1 if a named one has unfinished work or is unknown."""
    from engine.receiver.spool import Spool
    from engine.retention.purge import purge

    if not args.studies and args.older_than is None:
        print("name studies to purge or give --older-than DAYS", file=sys.stderr)
        return 2
    config = config_from_args(args)
    ledger = open_ledger(config)
    if ledger is None:
        return 1
    now = time.time()
    try:
        uids = list(args.studies)
        if args.older_than is not None:
            uids += ledger.finished_studies(before=now - args.older_than * 86400)
        outcome = purge(ledger, Spool(config.storage.spool_dir), config.storage.results_dir, uids, now,
                        dry_run=args.dry_run)
    finally:
        ledger.close()
    for uid in outcome.refused:
        print(f"not removed: study {uid} is unknown or has unfinished work (open series, jobs or deliveries)",
              file=sys.stderr)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {outcome.studies} finished stud{'y' if outcome.studies == 1 else 'ies'}"
          + ("" if args.dry_run else f" ({outcome.files} file(s) and folder(s))"))
    return 1 if outcome.refused else 0
