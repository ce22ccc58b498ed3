"""The notifier contract and registry: what a notification kind implements and how it is found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from engine.api import PluginError
from engine.config.entries import NotificationConfig


@dataclass(frozen=True)
class SendOutcome:
    """What one attempt came to: ``sent``, ``retry`` (try again after the backoff) or ``failed``, and why."""

    verdict: str
    reason: str | None = None


@dataclass(frozen=True)
class StudyFacts:
    """Patient and order facts of a study, for kinds whose receivers match on them (HL7 PID/OBR).

    Read from the stored DICOM header at send time (the ledger keeps none);
    never logged.
    """

    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""


@runtime_checkable
class Notifier(Protocol):
    """One configured notification target; ``send`` never raises for network or peer errors."""

    def send(self, event: Mapping[str, Any], facts: StudyFacts) -> SendOutcome:
        """Send one event (the JSON-ready dict of :mod:`engine.notify.events`)."""

    def close(self) -> None:
        """Release connections (the service is stopping)."""


NotifierFactory = Callable[[NotificationConfig], Notifier]


class NotifierRegistry:
    """Notification kinds by name (handed to ``scanstream_register_notifiers``)."""

    def __init__(self) -> None:
        self._factories: dict[str, NotifierFactory] = {}

    def add(self, kind: str, factory: NotifierFactory) -> None:
        """Register ``factory`` (config -> notifier) for ``kind``; a duplicate raises :class:`PluginError`."""
        if not callable(factory):
            raise PluginError(f"notification kind {kind!r}: the factory must be callable")
        if kind in self._factories:
            raise PluginError(f"notification kind {kind!r} is registered twice")
        self._factories[kind] = factory

    def build(self, config: NotificationConfig, index: int) -> Notifier:
        """The notifier for one ``[[notifications]]`` entry; an unknown kind raises naming the entry and the kinds."""
        factory = self._factories.get(config.kind)
        if factory is None:
            known = ", ".join(sorted(self._factories)) or "none"
            raise PluginError(f'notifications[{index}] ("{config.name}").kind: unknown kind {config.kind!r}; '
                              f"registered kinds: {known}")
        notifier = factory(config)
        if not isinstance(notifier, Notifier):
            raise PluginError(f"notification kind {config.kind!r}: the factory did not return a notifier "
                              "(send(event, facts) and close())")
        return notifier

    def kinds(self) -> list[str]:
        """Registered kinds, sorted."""
        return sorted(self._factories)
