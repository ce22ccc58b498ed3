"""``scanstream keys NAME``: a CurveZMQ key pair for the broker or a worker."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.broker.security import create_keys
from engine.commands.common import add_command


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keys``."""
    keys = add_command(sub, "keys", cmd_keys,
                       "create a CurveZMQ key pair (NAME.key, NAME.key_secret) for the broker or a worker")
    keys.add_argument("name", help="e.g. broker, or the worker's host name")
    keys.add_argument("--out", type=Path, default=Path("."), help="folder for the two files (default .)")


def cmd_keys(args: argparse.Namespace) -> int:
    """Create a CurveZMQ key pair for the broker or a worker."""
    public, secret = create_keys(args.out, args.name)
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (keep it on this host, mode 0600)")
    print("broker: broker.curve_secret_key = <its .key_secret>, broker.curve_authorized_keys = <folder of worker .key>")
    print("worker: worker.curve_secret_key = <its .key_secret>, worker.curve_server_key = <the broker's .key>")
    return 0
