"""The most recently stored instance files, kept in memory for the broker's next lease.

A series is leased to a worker moments after its last instance was stored, and
again for every other model that takes it. Reading its files back from the
spool costs one open/read/close per instance on the broker thread (6-9 ms for
48 CT slices inside the receiver, where the threads of every association compete
for the interpreter). The spool keeps the bytes it has just made durable here,
up to a byte budget, oldest dropped first; a miss reads the file as before. The
file on disk stays the record: this is a cache of it, never the only copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class RecentFiles:
    """A thread-safe, byte-bounded, least-recently-stored map of spool name to file bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, int(budget_bytes))
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes) -> None:
        """Keep ``data`` for ``name``, dropping the oldest files beyond the budget (a larger file is not kept)."""
        if len(data) > self.budget_bytes:
            return
        with self._lock:
            previous = self._files.pop(name, None)
            self._bytes -= len(previous) if previous is not None else 0
            self._files[name] = data
            self._bytes += len(data)
            while self._bytes > self.budget_bytes:
                _, dropped = self._files.popitem(last=False)
                self._bytes -= len(dropped)

    def get(self, name: str) -> bytes | None:
        """The bytes kept for ``name``, or None."""
        with self._lock:
            return self._files.get(name)

    def discard(self, name: str) -> None:
        """Forget ``name`` (its file was removed)."""
        with self._lock:
            dropped = self._files.pop(name, None)
            self._bytes -= len(dropped) if dropped is not None else 0

    @property
    def held_bytes(self) -> int:
        """Bytes kept now."""
        with self._lock:
            return self._bytes
