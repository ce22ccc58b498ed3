"""STOW-RS (DICOMweb store, PS3.18 10.5) to a ``kind = "dicomweb"`` destination, over httpx2.

One POST to ``<url>/studies`` per attempt carries every result file as a part of
``multipart/related; type="application/dicom"``. The answer becomes one status
per file, the same shape as C-STORE's, so the delivery service judges both
alike: 200 is every instance stored (a part's Warning Reason counts as a
warning); 202 and 409 name the failed instances in the Failed SOP Sequence with
their Failure Reason (0xA7xx retries, others fail). Other statuses raise
:class:`StowError`: 5xx, 408, 429 and connection errors transient (retry),
other 4xx permanent (fail at once).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Sequence

import httpx2
import pydicom
from pydicom.errors import InvalidDicomError

from engine.config.entries import DestinationConfig

DICOM_JSON = "application/dicom+json"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
PROCESSING_FAILURE = 0x0110
TRANSIENT_HTTP = frozenset({408, 425, 429})


class StowError(Exception):
    """The STOW request as a whole did not succeed; ``transient`` says whether a retry may."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


def multipart_body(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """``parts`` as one multipart/related body of application/dicom parts, and its Content-Type."""
    boundary = f"scanstream-{secrets.token_hex(16)}"
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    value = (answer.get(tag) or {}).get("Value") or []
    return [item for item in value if isinstance(item, dict)]


def _first(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def instance_statuses(answer: dict[str, Any], uids: Sequence[str], http_status: int) -> list[int | None]:
    """One status per UID from a STOW response (DICOM JSON): its Failure or Warning Reason, else 0x0000.

    A UID the response does not mention is taken as stored after a 200 or 202
    (which names its failures) and as failed (0x0110, processing failure) after
    a 409 (every instance failed).
    """
    failed = {str(_first(item, REFERENCED_SOP_INSTANCE_UID)): _first(item, FAILURE_REASON)
              for item in _items(answer, FAILED_SOP_SEQUENCE)}
    stored = {str(_first(item, REFERENCED_SOP_INSTANCE_UID)): _first(item, WARNING_REASON)
              for item in _items(answer, REFERENCED_SOP_SEQUENCE)}
    statuses: list[int | None] = []
    for uid in uids:
        if uid in failed:
            statuses.append(int(failed[uid]) if failed[uid] is not None else PROCESSING_FAILURE)
        elif uid in stored:
            statuses.append(int(stored[uid]) if stored[uid] is not None else 0x0000)
        else:
            statuses.append(PROCESSING_FAILURE if http_status == 409 else 0x0000)
    return statuses


class StowClient:
    """Sends result files to one DICOMweb destination (basic or bearer auth, TLS and mutual TLS)."""

    def __init__(self, destination: DestinationConfig) -> None:
        self._url = destination.url.rstrip("/") + "/studies"
        headers = {"Accept": DICOM_JSON}
        if destination.bearer_token:
            headers["Authorization"] = f"Bearer {destination.bearer_token}"
        auth = (destination.username, destination.password) if destination.username else None
        context = destination.tls_context()
        self._client = httpx2.Client(timeout=destination.timeout_s, headers=headers, auth=auth,
                                     verify=context if context is not None else True, follow_redirects=False)

    def store(self, files: Sequence[Path]) -> list[tuple[Path, int | None]]:
        """POST every file; returns (file, status) per file, or raises :class:`StowError`."""
        uids, parts = [], []
        for path in files:
            try:
                uids.append(str(pydicom.dcmread(path, stop_before_pixels=True,
                                                specific_tags=["SOPInstanceUID"]).SOPInstanceUID))
                parts.append(path.read_bytes())
            except (OSError, InvalidDicomError, AttributeError) as exc:
                raise StowError(f"{path.name} is not readable DICOM: {type(exc).__name__}", False) from None
        body, content_type = multipart_body(parts)
        try:
            response = self._client.post(self._url, content=body, headers={"Content-Type": content_type})
        except httpx2.HTTPError as exc:
            raise StowError(f"STOW to {self._url} failed: {type(exc).__name__}: {exc}", True) from None
        status = response.status_code
        if status in (200, 202, 409):
            try:
                answer = response.json() if response.content else {}
            except ValueError:
                answer = {}
            if isinstance(answer, list):  # some servers wrap the one dataset in an array
                answer = answer[0] if answer and isinstance(answer[0], dict) else {}
            return list(zip(files, instance_statuses(answer, uids, status)))
        reason = f"STOW to {self._url}: HTTP {status} {response.reason_phrase}".strip()
        raise StowError(reason, status >= 500 or status in TRANSIENT_HTTP)

    def close(self) -> None:
        self._client.close()
