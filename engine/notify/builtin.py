"""Built-in notification kinds, registered as a plugin like any other: ``webhook`` and ``hl7``."""

from __future__ import annotations

from engine import hookimpl
from engine.notify.hl7 import Hl7Notifier
from engine.notify.registry import NotifierRegistry
from engine.notify.webhook import WebhookNotifier


@hookimpl
def scanstream_register_notifiers(registry: NotifierRegistry) -> None:
    """Register ``webhook`` (signed JSON POST) and ``hl7`` (ORU^R01 over MLLP)."""
    registry.add("webhook", WebhookNotifier)
    registry.add("hl7", Hl7Notifier)
