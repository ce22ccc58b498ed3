"""Sign-in throttling: after repeated failures a user name, and separately an address, is locked out a while.

Counting both keys stops one address guessing many passwords and many
addresses guessing one user's. The first lockout lasts ``lockout_s``; each
further failure while the count is over the limit doubles it, up to
:data:`MAX_LOCKOUT_S`. A success clears the user name's count (not the
address's: one good password must not reset a guessing address). State is in
memory: a restart forgets it, which costs a guesser a restart of the engine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

MAX_LOCKOUT_S = 900.0
FORGET_AFTER_S = 3600.0  # a key with no failure this long starts from zero again
MAX_KEYS = 10_000  # the book's bound, so a flood of made-up names cannot grow it without end


@dataclass
class _Count:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    """Failure counts per key ("user:NAME", "address:IP"), shared by every request thread."""

    def __init__(self, max_failures: int, lockout_s: float) -> None:
        self._max_failures = max_failures
        self._lockout_s = lockout_s
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds until every one of ``keys`` may try again (0 when none is locked)."""
        with self._lock:
            waits = [self._counts[key].locked_until - now for key in keys if key in self._counts]
        return max([0.0, *waits])

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        """Count one failed sign-in against each key, locking those over the limit."""
        with self._lock:
            self._prune(now)
            for key in keys:
                count = self._counts.setdefault(key, _Count())
                if now - count.last_failure > FORGET_AFTER_S:
                    count.failures = 0
                count.failures += 1
                count.last_failure = now
                over = count.failures - self._max_failures
                if over >= 0:
                    count.locked_until = now + min(MAX_LOCKOUT_S, self._lockout_s * 2 ** over)

    def succeeded(self, key: str) -> None:
        """A correct password: the key's count starts again."""
        with self._lock:
            self._counts.pop(key, None)

    def _prune(self, now: float) -> None:
        if len(self._counts) < MAX_KEYS:
            return
        for key in [k for k, c in self._counts.items() if now - c.last_failure > FORGET_AFTER_S
                    and c.locked_until <= now]:
            del self._counts[key]
        if len(self._counts) >= MAX_KEYS:  # all recent: drop the oldest half rather than grow
            for key in sorted(self._counts, key=lambda k: self._counts[k].last_failure)[:MAX_KEYS // 2]:
                del self._counts[key]
