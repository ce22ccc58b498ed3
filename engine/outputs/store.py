"""Files a job's artifacts under ``results/<study key>/<model>/<series key>/``, atomically.

The series level exists because a study often holds several series a model takes
(e.g. two reconstructions of one CT); keys are opaque ledger keys, never UIDs.

Artifacts land in a fresh folder that is fsynced and then swapped in with
``os.replace``, so a reader sees the old result or the new one, never a mix,
and a re-run of the series (a new revision) replaces the previous result.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


class ResultStoreError(Exception):
    """An artifact name or the results folder is unusable."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultStore:
    """The results folder of one engine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, study_key: str, model: str, series_key: str) -> Path:
        """Where the results of ``model`` for one series of a study live."""
        for part in (study_key, model, series_key):
            if not _SAFE_NAME.match(part):
                raise ResultStoreError(f"unsafe path component {part!r}")
        return self.root / study_key / model / series_key

    def file(self, study_key: str, model: str, series_key: str,
             artifacts: Iterable[tuple[str, bytes | memoryview]]) -> Path:
        """Write every artifact, fsync, then swap the folder in; returns the final folder."""
        final = self.folder(study_key, model, series_key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".{series_key}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        try:
            for name, data in artifacts:
                if not _SAFE_NAME.match(name):
                    raise ResultStoreError(f"unsafe artifact name {name!r}")
                with open(staging / name, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            _fsync_dir(staging)
            previous = None
            if final.exists():
                previous = final.parent / f".{series_key}.{uuid.uuid4().hex}.old"
                os.replace(final, previous)
            os.replace(staging, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return final
