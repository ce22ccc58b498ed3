"""The ``scanstream`` command: each subcommand lives in :mod:`engine.commands`; this module assembles them."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from engine import __version__
from engine.api import PluginError
from engine.broker.security import CurveError
from engine.commands import (backfill, bench, demo, keys, models, plugins, purge, requeue, send, serve, status,
                             users, verify)
from engine.config import ConfigError, load_config
from engine.dicom.tls import TlsError
from engine.logs import configure_logging

COMMANDS = (serve, send, demo, plugins, models, bench, keys, status, requeue, backfill, purge, verify, users)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, in the order ``scanstream --help`` lists them."""
    parser = argparse.ArgumentParser(prog="scanstream", description="Streaming inference engine for imaging devices")
    parser.add_argument("--version", action="version", version=f"scanstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scanstream`` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level)
    try:
        return int(args.func(args))
    except (ConfigError, PluginError, CurveError, TlsError) as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
