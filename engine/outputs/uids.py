"""Result UIDs derived from (source series, model, version, object), so a re-run replaces."""

from __future__ import annotations

from pydicom.uid import generate_uid

SCANSTREAM_UID_ROOT = "1.2.826.0.1.3680043.10.1487."


def derived_uid(source_series_uid: str, model: str, model_version: str, what: str) -> str:
    """A stable UID for one result object of one model version on one source series."""
    return str(generate_uid(prefix=SCANSTREAM_UID_ROOT, entropy_srcs=[source_series_uid, model, model_version, what]))
