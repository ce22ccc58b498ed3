"""What every ``scanstream`` subcommand shares: how it is added to the parser and how it reads its config."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from engine.config import EngineConfig, load_config, with_overrides
from engine.ledger.store import Ledger

Command = Callable[[argparse.Namespace], int]


def add_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, func: Command,
                help_text: str) -> argparse.ArgumentParser:
    """A subcommand that runs ``func(args)`` and takes ``--config``."""
    command = sub.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(func=func)
    command.add_argument("--config", help="TOML config file (default ./scanstream.toml when present)")
    return command


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The config file and environment, with the command-line flags the command has applied and validated."""
    flags = {
        "receiver": {"port": "--port"},
        "storage": {"data_dir": "--data-dir"},
        "worker": {"count": "--workers"},
        "http": {"port": "--http-port"},
        "broker": {"bind": "--broker-bind"},
    }
    overrides = {section: {key: (getattr(args, flag[2:].replace("-", "_"), None), flag) for key, flag in keys.items()}
                 for section, keys in flags.items()}
    return with_overrides(load_config(args.config), **overrides)


def open_ledger(config: EngineConfig) -> Ledger | None:
    """The ledger of the configured data folder, or None (and a line on stderr) when nothing was received yet."""
    path = config.storage.ledger_path
    if not path.exists():
        print(f"no ledger at {path}: nothing received yet", file=sys.stderr)
        return None
    return Ledger(path)
