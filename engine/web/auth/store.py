"""The console's users, API tokens and sessions: one SQLite file (``users.sqlite``) beside the ledger.

Kept apart from the ledger so its schema (and other helpers' migrations) never
meet the console's. Passwords are argon2id hashes; API tokens and session ids
are random and stored as SHA-256 digests only, so a copy of the file signs no
one in. Each public method is one transaction under one lock.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from engine.web.auth.passwords import hash_password, needs_rehash, verify_password

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_PREFIX = "sst_"
MIN_PASSWORD_LENGTH = 10

_SCHEMA = (
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created REAL NOT NULL);
    CREATE TABLE tokens (
        digest TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users ON DELETE CASCADE, created REAL NOT NULL);
    CREATE TABLE sessions (
        digest TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users ON DELETE CASCADE, csrf TEXT NOT NULL,
        created REAL NOT NULL, last_seen REAL NOT NULL);
    """,
)


class AccessError(Exception):
    """A user cannot be added or changed as asked; the message says why (never the password)."""


@dataclass(frozen=True)
class User:
    """A signed-in person or API client."""

    name: str
    role: Role

    @property
    def operator(self) -> bool:
        """Operators may requeue and resend; viewers only look."""
        return self.role == "operator"


@dataclass(frozen=True)
class Session:
    """A browser's sign-in: whose, and the CSRF token its forms and scripts must send back."""

    user: User
    csrf: str


def digest(secret: str) -> str:
    """The stored form of a token or session id (both are 256-bit random, so one SHA-256 is enough)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    """A user name as stored, or AccessError saying the expected form."""
    if not NAME_RE.match(name):
        raise AccessError(f"user name {name!r}: expected 1-64 letters, digits, '.', '_', '@' or '-' "
                          "(starting with a letter or digit)")
    return name


class AccessStore:
    """Users, tokens and sessions in one SQLite file, safe from every thread of the receiver."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # password hashes: the engine's account only
        self.path.chmod(0o600)  # SQLite gives its WAL and shared-memory files the same mode
        # isolation "IMMEDIATE": each ``with self._db`` block is one write transaction, committed or rolled back
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level="IMMEDIATE", timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > len(_SCHEMA):
                raise AccessError(f"{self.path} was written by a newer ScanStream (schema {version})")
            for step in range(version, len(_SCHEMA)):
                for statement in filter(str.strip, _SCHEMA[step].split(";")):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(_SCHEMA)}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- users and tokens (``scanstream users``) ------------------------------------------

    def add_user(self, name: str, role: str, password: str, now: float) -> None:
        """Create a user; AccessError for a taken or malformed name, an unknown role or a short password."""
        check_name(name)
        if role not in ROLES:
            raise AccessError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccessError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
        hashed = hash_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AccessError(f"user {name!r} exists already")
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (name, role, hashed, now))

    def remove_user(self, name: str) -> bool:
        """Delete a user with their tokens and sessions; False when there was none."""
        with self._tx() as db:
            return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1

    def users(self) -> list[tuple[User, int]]:
        """Every user with how many API tokens they hold, by name."""
        with self._lock:
            rows = self._db.execute("SELECT u.name, u.role, (SELECT COUNT(*) FROM tokens t WHERE t.user = u.name)"
                                    " FROM users u ORDER BY u.name").fetchall()
        return [(User(name, role), int(tokens)) for name, role, tokens in rows]

    def issue_token(self, name: str, now: float) -> str:
        """A new API token for ``name``, replacing any earlier one (shown once: only its digest is kept)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AccessError(f"no user {name!r}")
            db.execute("DELETE FROM tokens WHERE user = ?", (name,))
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (digest(token), name, now))
        return token

    def user_for_token(self, token: str) -> User | None:
        """Whose API token this is, or None."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._lock:
            row = self._db.execute("SELECT u.name, u.role FROM tokens t JOIN users u ON u.name = t.user"
                                   " WHERE t.digest = ?", (digest(token),)).fetchone()
        return None if row is None else User(row[0], row[1])

    def check_password(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else None; an unknown name costs one hash all the same."""
        with self._lock:
            row = self._db.execute("SELECT role, password_hash FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            verify_password(_dummy_hash(), password)  # the same work as for a real user: no timing tell
            return None
        role, hashed = row
        if not verify_password(hashed, password):
            return None
        if needs_rehash(hashed):
            with self._tx() as db:
                db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (hash_password(password), name))
        return User(name, role)

    # -- sessions ------------------------------------------------------------------------

    def open_session(self, user: User, now: float) -> tuple[str, Session]:
        """A new session: (the id for the cookie, the session with its CSRF token)."""
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._tx() as db:
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (digest(session_id), user.name, csrf, now, now))
        return session_id, Session(user, csrf)

    def session(self, session_id: str, now: float, idle_s: float, max_s: float) -> Session | None:
        """The live session of a cookie (its use noted), or None when unknown, idle too long or too old."""
        key = digest(session_id)
        with self._tx() as db:
            row = db.execute("SELECT u.name, u.role, s.csrf, s.created, s.last_seen FROM sessions s"
                             " JOIN users u ON u.name = s.user WHERE s.digest = ?", (key,)).fetchone()
            if row is None:
                return None
            name, role, csrf, created, last_seen = row
            if now - last_seen > idle_s or now - created > max_s:
                db.execute("DELETE FROM sessions WHERE digest = ?", (key,))
                return None
            db.execute("UPDATE sessions SET last_seen = ? WHERE digest = ?", (now, key))
        return Session(User(name, role), csrf)

    def close_session(self, session_id: str) -> None:
        """Sign out: the cookie's session is gone."""
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE digest = ?", (digest(session_id),))

    def expire_sessions(self, now: float, idle_s: float, max_s: float) -> int:
        """Remove sessions past either limit; returns how many."""
        with self._tx() as db:
            return db.execute("DELETE FROM sessions WHERE last_seen < ? OR created < ?",
                              (now - idle_s, now - max_s)).rowcount


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, made once, for sign-ins with unknown names."""
    return hash_password(secrets.token_urlsafe(16))
