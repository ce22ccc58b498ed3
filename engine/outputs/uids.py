"""Result identifiers: UIDs from (source series, revision, model, version, object), series numbers per model.

Deterministic, so re-sending one revision's results is idempotent at a PACS;
each revision gets its own UIDs (and so its own series), so a PACS that keeps
the first copy of an instance never keeps a stale result under a new revision.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from pydicom.uid import generate_uid

if TYPE_CHECKING:
    from engine.api import ModelSpec, SeriesInfo

SCANSTREAM_UID_ROOT = "1.2.826.0.1.3680043.10.1487."


def derived_uid(source_series_uid: str, model: str, model_version: str, what: str, revision: int = 1) -> str:
    """A stable UID for one result object of one model version on one revision of a source series.

    Revision 1 keeps the UIDs of releases before revisions took part, so
    re-processing a study already delivered adds nothing to the PACS.
    """
    sources = [source_series_uid, model, model_version, what]
    if revision != 1:
        sources.append(f"revision-{revision}")
    return str(generate_uid(prefix=SCANSTREAM_UID_ROOT, entropy_srcs=sources))


def result_uid(series: "SeriesInfo", spec: "ModelSpec", what: str) -> str:
    """:func:`derived_uid` for the series (and revision) a writer is writing results of."""
    return derived_uid(series.series_uid, spec.name, spec.version, what, series.revision)


# The last digit of a result series number says what the series holds.
RESULT_SERIES_KINDS = {"seg": 1, "sr": 2, "preview": 3, "derived": 4}


def result_series_number(model: str, kind: str) -> int:
    """A stable SeriesNumber for one kind of result of one model, distinct between models.

    ``9`` + five digits from the model name's CRC-32 + the kind's digit, so a
    viewer lists each model's SEG, SR, preview and derived series apart and a
    model's series keep their number across versions, revisions and restarts.
    """
    return 9_000_000 + (zlib.crc32(model.encode()) % 100_000) * 10 + RESULT_SERIES_KINDS[kind]
