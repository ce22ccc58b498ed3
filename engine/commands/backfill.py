"""``scanstream backfill MODEL --since DATE``: run a model on history it has not run on.

A new model or version runs on new series only; this queues it on the complete series
completed since DATE (the running receiver's broker picks the jobs up at its next
heartbeat). Their results reach the destinations only with ``--deliver``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from engine.commands.common import add_command, config_from_args, open_ledger


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--since takes a date as YYYY-MM-DD, got {text!r}") from exc


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``backfill``."""
    backfill = add_command(sub, "backfill", cmd_backfill, "run a model on complete series since a date")
    backfill.add_argument("model", help="model name, as `scanstream plugins` lists it")
    backfill.add_argument("--since", type=_date, required=True, help="series completed on or after YYYY-MM-DD")
    backfill.add_argument("--deliver", action="store_true", help="send the results to the destinations too")
    backfill.add_argument("--data-dir", type=Path)


def cmd_backfill(args: argparse.Namespace) -> int:
    """Queue ``model`` on the complete series since ``--since``; exit 2 for a model the router cannot use."""
    from engine.plugins import load_plugins
    from engine.receiver.router import Router, backfill

    config = config_from_args(args)
    ledger = open_ledger(config)
    if ledger is None:
        return 1
    try:
        router = Router(ledger, load_plugins(config).models, lambda: None, max_attempts=config.broker.max_attempts,
                        priority_values=config.routing.priority_values, enabled=config.routing.models)
        if not router.has_model(args.model):
            names = ", ".join(spec.name for spec in router.models()) or "none"
            print(f"no model {args.model!r} to backfill (routing may use: {names})", file=sys.stderr)
            return 2
        queued = backfill(ledger, router, args.since, models=[args.model], deliver=args.deliver)
    finally:
        ledger.close()
    print(f"queued {queued} job(s) of {args.model} on series completed since {args.since.isoformat()}"
          f"{'' if args.deliver else ' (results not sent to destinations)'}")
    return 0
