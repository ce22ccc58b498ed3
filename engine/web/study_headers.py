"""Patient and study facts for signed-in users, read from a study's first spooled instance.

The ledger keeps no demographics (by design: it and the logs carry opaque keys),
so the console reads them where they already are, the stored DICOM header, and
keeps the answers in memory, bounded. They reach only signed-in users' pages and
API answers; they are never logged and never put in a URL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable

import pydicom
from pydicom.errors import InvalidDicomError

from engine.receiver.spool import Spool, SpoolError

CACHE_STUDIES = 4096
_TAGS = ["PatientName", "PatientID", "AccessionNumber", "StudyDate", "StudyDescription"]


@dataclass(frozen=True)
class StudyHeader:
    """What a person needs to recognise a study; empty strings where the header has nothing."""

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""  # YYYY-MM-DD when the header's DA value is well formed, else as stored
    study_description: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def read_header(spool: Spool, spool_name: str) -> StudyHeader | None:
    """The facts of one spooled file, or None when it is gone (retention) or unreadable."""
    try:
        ds = pydicom.dcmread(spool.path(spool_name), stop_before_pixels=True, specific_tags=_TAGS)
    except (OSError, SpoolError, InvalidDicomError, ValueError):
        return None
    text = {tag: str(ds.get(tag, "") or "").strip() for tag in _TAGS}
    return StudyHeader(text["PatientName"].replace("^", " ").strip(), text["PatientID"], text["AccessionNumber"],
                       _date(text["StudyDate"]), text["StudyDescription"])


class StudyHeaders:
    """Header facts per study UID, read once from the spool and kept (LRU, :data:`CACHE_STUDIES` studies)."""

    def __init__(self, spool: Spool, first_instance: Callable[[str], str | None]) -> None:
        self._spool = spool
        self._first_instance = first_instance
        self._cache: OrderedDict[str, StudyHeader] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_uid: str) -> StudyHeader:
        """The study's facts (all empty when no file of it can be read now; asked again next time)."""
        with self._lock:
            if study_uid in self._cache:
                self._cache.move_to_end(study_uid)
                return self._cache[study_uid]
        name = self._first_instance(study_uid)
        header = read_header(self._spool, name) if name else None
        if header is None:
            return StudyHeader()
        with self._lock:
            self._cache[study_uid] = header
            while len(self._cache) > CACHE_STUDIES:
                self._cache.popitem(last=False)
        return header
