"""What the console's pages and API read and act on, handed in by the receiver role: one object, no globals.

The actions (requeue a job, resend a delivery) live here too, so a page's form
and the API do the same thing: change the ledger, wake whoever acts on it, and
write the audit line naming who did it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.broker.broker import WorkerSnapshot
from engine.config.sections import HttpConfig
from engine.ledger.store import Ledger
from engine.logs import get_logger
from engine.receiver.audit import AuditTrail
from engine.receiver.spool import Spool
from engine.web.auth.store import AccessStore, User
from engine.web.auth.throttle import LoginThrottle
from engine.web.models_view import ModelCatalogue
from engine.web.previews import PreviewImages
from engine.web.queries import LedgerReader
from engine.web.study_headers import StudyHeaders

log = get_logger(__name__)

StudyReport = Callable[[str, float], "dict[str, Any] | None"]


@dataclass
class Console:
    """The receiver's parts the console uses; built by :class:`engine.roles.receiver.ReceiverRole`."""

    ledger: Ledger
    spool: Spool
    access: AccessStore
    audit: AuditTrail
    models: ModelCatalogue
    study_report: StudyReport
    workers: Callable[[], Sequence[WorkerSnapshot]]
    job_queued: Callable[[], object]
    delivery_due: Callable[[], object]
    settings: HttpConfig
    reader: LedgerReader = field(init=False)
    headers: StudyHeaders = field(init=False)
    previews: PreviewImages = field(default_factory=PreviewImages)
    throttle: LoginThrottle = field(init=False)

    def __post_init__(self) -> None:
        self.reader = LedgerReader(self.ledger.path)
        self.headers = StudyHeaders(self.spool, self.reader.first_instance)
        self.throttle = LoginThrottle(self.settings.login_max_failures, self.settings.login_lockout_s)

    @property
    def audit_path(self) -> Path:
        return self.audit.path

    def record(self, event: str, user: str, address: str, **fields: Any) -> None:
        """One console audit line (who, from where, what); the same trail as the DICOM associations."""
        self.audit.write({"event": event, "user": user, "address": address, **fields})

    def requeue_job(self, user: User, job_id: str, address: str) -> bool:
        """Queue a failed or dead-lettered job again with fresh attempts; False when it is neither."""
        done = self.ledger.requeue(job_id, time.time())
        self.record("console-requeue", user.name, address, job=job_id, outcome="requeued" if done else "refused")
        if done:
            log.info("console.requeued", job=job_id, user=user.name)
            self.job_queued()
        return done

    def resend_delivery(self, user: User, job_id: str, destination: str, address: str) -> bool:
        """Send a failed delivery again from now with fresh attempts; False when it is not failed."""
        done = self.ledger.requeue_delivery(job_id, destination, time.time())
        self.record("console-resend", user.name, address, job=job_id, destination=destination,
                    outcome="resent" if done else "refused")
        if done:
            log.info("console.resent", job=job_id, destination=destination, user=user.name)
            self.delivery_due()
        return done
