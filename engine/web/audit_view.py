"""The audit log (``audit.log``, one JSON object a line) read newest first, a page at a time.

The file only grows, so it is read backwards in blocks from its end: a page
costs the lines up to it, not the whole file. Lines that are not JSON objects
(a torn last line after a crash) are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

BLOCK = 64 * 1024


def lines_backwards(path: Path) -> Iterator[bytes]:
    """The file's lines from last to first (without their newlines); nothing when it does not exist."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        position = handle.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            step = min(BLOCK, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines.pop(0)  # may continue in the block before
            yield from (line for line in reversed(lines) if line)
        if rest:
            yield rest


def audit_page(path: Path, offset: int, limit: int, event: str = "") -> tuple[list[dict[str, Any]], bool]:
    """Entries ``offset`` to ``offset + limit`` (newest first, of ``event`` when given) and whether more follow."""
    entries: list[dict[str, Any]] = []
    skipped = 0
    for line in lines_backwards(path):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or (event and entry.get("event") != event):
            continue
        if skipped < offset:
            skipped += 1
            continue
        if len(entries) == limit:
            return entries, True
        entries.append(entry)
    return entries, False
