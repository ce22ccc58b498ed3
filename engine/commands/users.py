"""``scanstream users``: the console's users (add, list, remove) and their API tokens.

``users add NAME --role viewer|operator`` asks for the password twice (or reads
the first line of ``--password-file``), stores its argon2id hash in
``users.sqlite`` in the data folder, and prints a new API token once (only its
digest is kept). ``users token NAME`` replaces a user's token. The running
engine sees changes at once (it reads the same file).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any, Callable

from engine.commands.common import add_command, config_from_args


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``users`` with its actions."""
    users = add_command(sub, "users", cmd_users_list, "the operations console's users and their API tokens")
    users.add_argument("--data-dir", type=Path)
    actions = users.add_subparsers(dest="users_command", metavar="{add,list,token,remove}")
    add = actions.add_parser("add", help="add a user (password from a prompt or a file); prints an API token")
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "operator"], required=True,
                     help="viewer: looks; operator: also requeues and resends")
    add.add_argument("--password-file", type=Path, help="read the password from this file's first line")
    add.set_defaults(func=cmd_users_add)
    listing = actions.add_parser("list", help="users, roles and whether each has an API token")
    listing.set_defaults(func=cmd_users_list)
    token = actions.add_parser("token", help="a new API token for a user (the old one stops working)")
    token.add_argument("name")
    token.set_defaults(func=cmd_users_token)
    remove = actions.add_parser("remove", help="remove a user with their token and sessions")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_users_remove)
    for action in (add, listing, token, remove):
        action.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file (as for `users`)")
        action.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)


def _with_store(args: argparse.Namespace, action: Callable[[Any], str]) -> int:
    """Run ``action`` on the data folder's users file and print what it says; an AccessError is exit 2."""
    from engine.web.auth.store import AccessError, AccessStore

    store = AccessStore(config_from_args(args).storage.users_path)
    try:
        print(action(store))
    except AccessError as error:
        print(f"scanstream users: {error}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0


def _password(args: argparse.Namespace) -> str | None:
    """The new password: the file's first line, or typed twice at a prompt (None when they differ)."""
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text().splitlines()
        except OSError as error:
            print(f"scanstream users: --password-file {args.password_file}: {error.strerror}", file=sys.stderr)
            return None
        return lines[0] if lines else ""
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        print("scanstream users: the two passwords differ", file=sys.stderr)
        return None
    return first


def cmd_users_add(args: argparse.Namespace) -> int:
    """Add a user and print their first API token."""
    password = _password(args)
    if password is None:
        return 2

    def add(store: Any) -> str:
        store.add_user(args.name, args.role, password, time.time())
        token = store.issue_token(args.name, time.time())
        return (f"added {args.name} ({args.role}); sign in to the console with the password\n"
                f"API token (shown once; send as 'Authorization: Bearer <token>'): {token}")

    return _with_store(args, add)


def cmd_users_list(args: argparse.Namespace) -> int:
    """Every user, their role and whether they hold an API token."""
    def listing(store: Any) -> str:
        users = store.users()
        return "\n".join(f"{user.name}  {user.role}  {'token' if tokens else 'no token'}" for user, tokens in users) \
            or "no users: add the first with `scanstream users add NAME --role operator`"

    return _with_store(args, listing)


def cmd_users_token(args: argparse.Namespace) -> int:
    """Replace a user's API token with a new one and print it."""
    return _with_store(args, lambda store: f"API token for {args.name} (shown once; the previous one no longer "
                                           f"works): {store.issue_token(args.name, time.time())}")


def cmd_users_remove(args: argparse.Namespace) -> int:
    """Remove a user (their token and sessions stop working at once)."""
    from engine.web.auth.store import AccessError

    def remove(store: Any) -> str:
        if not store.remove_user(args.name):
            raise AccessError(f"no user {args.name!r}")
        return f"removed {args.name}"

    return _with_store(args, remove)
