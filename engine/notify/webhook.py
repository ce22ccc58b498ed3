"""The ``webhook`` notification kind: the event as a JSON body POSTed to a URL, signed with HMAC-SHA256.

Receivers check ``X-ScanStream-Signature: sha256=<hex>``, the HMAC-SHA256 of the
exact body bytes under the shared ``secret``; ``X-ScanStream-Event`` is the
trigger and ``X-ScanStream-Delivery`` the event id (the same on every retry, so
a receiver can drop duplicates). 2xx is sent; 408, 429, 5xx and connection
errors are retried; any other status fails at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Mapping

import httpx2

from engine.config.entries import NotificationConfig
from engine.notify.registry import SendOutcome, StudyFacts

SIGNATURE_HEADER = "X-ScanStream-Signature"
RETRY_STATUSES = frozenset({408, 425, 429})


def signature(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=`` and the hex HMAC-SHA256 under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time compare; for receivers and tests)."""
    return hmac.compare_digest(signature(secret, body), header)


class WebhookNotifier:
    """POSTs each event to ``config.url``, signed; one HTTP client (kept-alive connections) per target."""

    def __init__(self, config: NotificationConfig) -> None:
        self._config = config
        self._client = httpx2.Client(timeout=config.timeout_s, follow_redirects=False)

    def send(self, event: Mapping[str, Any], facts: StudyFacts) -> SendOutcome:
        """One POST; the body carries no patient data (``facts`` are not used)."""
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self._config.secret, body),
                   "X-ScanStream-Event": str(event.get("trigger", "")),
                   "X-ScanStream-Delivery": str(event.get("event_id", ""))}
        try:
            response = self._client.post(self._config.url, content=body, headers=headers)
        except httpx2.HTTPError as exc:
            return SendOutcome("retry", f"POST failed: {type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return SendOutcome("sent")
        reason = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if response.status_code >= 500 or response.status_code in RETRY_STATUSES:
            return SendOutcome("retry", reason)
        return SendOutcome("failed", reason)

    def close(self) -> None:
        self._client.close()
