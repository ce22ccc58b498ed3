"""Notifications against real peers: an MLLP listener built on hl7apy and an HTTP webhook receiver.

The ledger is a real SQLite ledger with a done job whose result folder holds real
DICOM files; the listener ACKs, NAKs (AE) or drops the connection from a
script, and the webhook receiver checks the HMAC-SHA256 signature of every body
it gets. The service's clock is the test's, so backoff costs no waiting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from engine.config.entries import NotificationConfig
from engine.ledger.store import InstanceMeta, Ledger
from engine.notify.builtin import scanstream_register_notifiers
from engine.notify.registry import NotifierRegistry, StudyFacts
from engine.notify.service import NotificationService
from engine.notify.webhook import SIGNATURE_HEADER, verify_signature
from engine.receiver.spool import SpoolEntry
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess
from engine.testing.harness import make_phantom_study, send_and_wait
from engine.testing.ports import free_port

SECRET = "s3cret-key"
FINDINGS = [{"label": "nodule", "volume_ml": 0.73, "centroid_mm": [90.0, -44.0, -25.0]}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedMllp:
    """An hl7apy MLLP server: each ORU^R01 gets the next scripted answer ("AA", "AE", "AR" or "drop")."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.received: list[str] = []
        self.port = free_port()
        listener = self

        class Handler(AbstractHandler):
            def reply(self) -> str:
                listener.received.append(self.incoming_message)
                answer = listener.script.pop(0) if listener.script else "AA"
                if answer == "drop":
                    raise ConnectionAbortedError("scripted drop")  # the server closes without answering
                incoming = parse_message(self.incoming_message, find_groups=False)
                ack = Message("ACK", version="2.5")
                ack.msh.msh_3 = "RIS"
                ack.msh.msh_9 = "ACK^R01^ACK"
                ack.msh.msh_10 = "ACK" + incoming.msh.msh_10.value[:17]
                ack.msh.msh_11 = "P"
                ack.msa.msa_1 = answer
                ack.msa.msa_2 = incoming.msh.msh_10.value
                return "\x0b" + ack.to_er7() + "\x1c\x0d"

        self._server = MLLPServer("127.0.0.1", self.port, {"ORU^R01^ORU_R01": (Handler,)})

    def __enter__(self) -> "ScriptedMllp":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class WebhookReceiver:
    """An HTTP server that answers scripted statuses and keeps each body with whether its signature held."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict, bool, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = verify_signature(SECRET, body, self.headers.get(SIGNATURE_HEADER, ""))
                receiver.received.append((json.loads(body), valid, dict(self.headers)))
                status = receiver.statuses.pop(0) if receiver.statuses else (200 if valid else 401)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/scanstream"

    def __enter__(self) -> "WebhookReceiver":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def done_job(tmp_path: Path) -> tuple[Ledger, str, Path]:
    """A ledger with one done job of model-a whose results are two DICOM files and a result.json with a finding."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    meta = InstanceMeta(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5", sop_class_uid="1.2")
    ledger.add_instance(meta, SpoolEntry("a.dcm", "00", 1), "CT", 1.0)
    ledger.complete_series("1.2.3.4", "test", 2.0)
    job_id = ledger.create_job("1.2.3.4", 1, "model-a", "1.0", 3.0)
    ledger.claim_job("w", 4.0)
    results = tmp_path / "results"
    write_ct_series(generate_ct_phantom(3, slices=2, size=32, nodules=0), results)
    (results / "result.json").write_text(json.dumps({"summary": "1 nodule", "findings": FINDINGS}))
    assert ledger.complete_job(job_id, 1, str(results), 5.0, {}, [])
    return ledger, job_id, results


def _service(ledger: Ledger, clock: Clock, *configs: NotificationConfig) -> NotificationService:
    registry = NotifierRegistry()
    scanstream_register_notifiers(registry)
    return NotificationService(ledger, configs, registry, clock=clock,
                               facts=lambda _uid: StudyFacts("PAT-7", "DOE JANE", "ACC-42"))


def _hl7(port: int, **overrides) -> NotificationConfig:
    settings = {"name": "ris", "max_attempts": 4, "backoff_initial_s": 5.0, "timeout_s": 5.0, **overrides}
    return NotificationConfig(kind="hl7", host="127.0.0.1", port=port, receiving_application="RIS",
                              **settings)


def test_the_oru_reaches_an_mllp_listener_and_is_acknowledged(done_job) -> None:
    ledger, job_id, results = done_job
    clock = Clock()
    with ScriptedMllp(["AA"]) as listener:
        service = _service(ledger, clock, _hl7(listener.port, triggers=["findings"]))
        service.job_finished(job_id)
        assert service.send_due() == 1
    (row,) = ledger.notifications()
    assert (row.trigger, row.state, row.attempts, row.job_id) == ("findings", "sent", 1, job_id)
    (raw,) = listener.received
    oru = parse_message(raw)
    assert oru.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert oru.msh.msh_5.value == "RIS"
    segments = raw.split("\r")
    pid = next(s for s in segments if s.startswith("PID|")).split("|")
    assert pid[3] == "PAT-7" and pid[5] == "DOE^JANE"
    obr = next(s for s in segments if s.startswith("OBR|")).split("|")
    assert obr[3] == "ACC-42" and obr[4].startswith("model-a^")
    obx = [s.split("|") for s in segments if s.startswith("OBX|")]
    by_code = {}
    for fields in obx:
        by_code.setdefault(fields[3].split("^")[0], []).append(fields[5])
    assert by_code["SUMMARY"] == ["1 nodule"] and by_code["FINDINGS"] == ["1"]
    assert by_code["FINDING"] == ["nodule 0.73 ml at (90, -44, -25) mm"]
    assert by_code["STUDY_UID"] == ["1.2.3"]
    import pydicom
    expected = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in results.glob("*.dcm"))
    assert sorted(by_code["RESULT_UID"]) == expected and len(expected) == 2


def test_a_nak_and_a_dropped_connection_are_retried_then_acknowledged(done_job) -> None:
    ledger, job_id, _ = done_job
    clock = Clock()
    with ScriptedMllp(["AE", "drop", "AA"]) as listener:
        config = _hl7(listener.port, triggers=["findings"])
        service = _service(ledger, clock, config)
        service.job_finished(job_id)
        service.send_due()
        (row,) = ledger.notifications()
        assert (row.state, row.attempts) == ("pending", 1) and "ACK AE" in row.reason
        assert row.next_attempt == pytest.approx(clock.now + config.backoff_initial_s)
        assert service.send_due() == 0, "attempted before the backoff ran out"
        clock.now += config.backoff_s(1)
        service.send_due()
        (row,) = ledger.notifications()
        assert (row.state, row.attempts) == ("pending", 2) and "closed the connection" in row.reason
        clock.now += config.backoff_s(2)
        service.send_due()
    (row,) = ledger.notifications()
    assert (row.state, row.attempts, row.reason) == ("sent", 3, None)
    control_ids = {parse_message(raw, find_groups=False).msh.msh_10.value for raw in listener.received}
    assert len(listener.received) == 3 and len(control_ids) == 1, "every retry is the same message"


def test_a_rejection_fails_at_once_and_a_listener_that_never_acks_gives_up(done_job) -> None:
    ledger, job_id, _ = done_job
    clock = Clock()
    with ScriptedMllp(["AR"]) as listener:
        service = _service(ledger, clock, _hl7(listener.port, triggers=["findings"]))
        service.job_finished(job_id)
        service.send_due()
    (row,) = ledger.notifications()
    assert (row.state, row.attempts) == ("failed", 1) and "rejected" in row.reason
    assert ledger.status_counts()["notifications failed"] == 1

    gone = free_port()  # nobody listens: every attempt is a refused connection
    service = _service(ledger, clock, _hl7(gone, name="ris2", max_attempts=2, triggers=["findings"]))
    service.job_finished(job_id)
    service.send_due()
    clock.now += 5.0
    service.send_due()
    rows = {r.notifier: r for r in ledger.notifications()}
    assert rows["ris2"].state == "failed" and rows["ris2"].reason.startswith("gave up after 2 attempts")


def test_the_webhook_body_is_signed_and_server_errors_are_retried(done_job) -> None:
    ledger, job_id, results = done_job
    clock = Clock()
    with WebhookReceiver([503]) as hook:
        config = NotificationConfig(name="hook", kind="webhook", url=hook.url, secret=SECRET, backoff_initial_s=2.0)
        service = _service(ledger, clock, config)
        service.job_finished(job_id)
        service.send_due()
        (row,) = ledger.notifications()
        assert (row.state, row.reason) == ("pending", "HTTP 503 Service Unavailable")
        clock.now += 2.0
        service.send_due()
    (row,) = ledger.notifications()
    assert (row.state, row.attempts) == ("sent", 2)
    assert [valid for _, valid, _ in hook.received] == [True, True]
    body, _, headers = hook.received[-1]
    assert headers["X-ScanStream-Event"] == "findings"
    assert body["job"]["id"] == job_id and body["findings"] == FINDINGS and len(body["results"]) == 2
    assert "PAT-7" not in json.dumps(body) and "DOE" not in json.dumps(body), "no patient data in the body"


def test_a_webhook_with_a_wrong_secret_is_refused_and_not_retried(done_job) -> None:
    ledger, job_id, _ = done_job
    clock = Clock()
    with WebhookReceiver([]) as hook:
        config = NotificationConfig(name="hook", kind="webhook", url=hook.url, secret="not-the-key")
        service = _service(ledger, clock, config)
        service.job_finished(job_id)
        service.send_due()
    (row,) = ledger.notifications()
    assert (row.state, row.attempts, row.reason) == ("failed", 1, "HTTP 401 Unauthorized")
    assert [valid for _, valid, _ in hook.received] == [False]


def test_triggers_pick_the_events_and_a_final_study_is_told_once(done_job) -> None:
    ledger, job_id, _ = done_job
    clock = Clock()
    with WebhookReceiver([]) as hook:
        only_final = NotificationConfig(name="final", kind="webhook", url=hook.url, secret=SECRET,
                                        triggers=["study_final"])
        no_findings = NotificationConfig(name="quiet", kind="webhook", url=hook.url, secret=SECRET,
                                         triggers=["no_findings", "failed"])
        service = _service(ledger, clock, only_final, no_findings)
        service.job_finished(job_id)
        service.job_finished(job_id)  # told twice (a redelivered DONE): one event
        assert service.check_studies() == 1
        assert service.check_studies() == 0
        assert service.send_due() == 1
    (row,) = ledger.notifications()
    assert (row.notifier, row.trigger, row.state) == ("final", "study_final", "sent")
    (body, valid, _), = hook.received
    assert valid and body["trigger"] == "study_final" and body["study_instance_uid"] == "1.2.3"
    assert body["jobs"] == [{"id": job_id, "model": "model-a", "state": "done", "series_instance_uid": "1.2.3.4"}]


def _wait_notifications(engine, count: int, timeout: float = 180.0) -> list:
    deadline = time.monotonic() + timeout
    ledger = engine.ledger()
    try:
        while time.monotonic() < deadline:
            rows = ledger.notifications()
            if len(rows) >= count and all(row.state != "pending" for row in rows):
                return rows
            time.sleep(0.2)
    finally:
        ledger.close()
    raise AssertionError(f"notifications not all sent after {timeout} s: {rows}\n{engine.log_tail()}")


def test_the_engine_tells_a_webhook_and_a_ris_when_a_study_is_done(tmp_path: Path) -> None:
    """``scanstream serve`` with both kinds: a phantom sent by DCMTK storescu, the events reach both peers."""
    study = make_phantom_study(tmp_path / "study", slices=24)
    with WebhookReceiver([]) as hook, ScriptedMllp(["drop"]) as listener:
        notifications = [
            {"name": "hook", "kind": "webhook", "url": hook.url, "secret": SECRET},
            {"name": "ris", "kind": "hl7", "host": "127.0.0.1", "port": listener.port,
             "triggers": ["findings", "no_findings"], "backoff_initial_s": 0.2},
        ]
        engine = EngineProcess(tmp_path / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]}},
                               env={"SCANSTREAM_NOTIFICATIONS": json.dumps(notifications)})
        with engine:
            results = send_and_wait(study, engine)
            assert results.sender == "storescu"
            rows = _wait_notifications(engine, 3)
            status = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--data-dir",
                                     str(engine.data_dir)], capture_output=True, text=True, timeout=60)
            metrics = urllib.request.urlopen(f"{engine.http_url}/metrics", timeout=10).read().decode()
    (job,) = results.jobs
    assert sorted((r.notifier, r.trigger, r.state) for r in rows) == [
        ("hook", "findings", "sent"), ("hook", "study_final", "sent"), ("ris", "findings", "sent")]
    ris_row = next(r for r in rows if r.notifier == "ris")
    assert ris_row.attempts == 2, "the dropped connection was retried"
    assert [valid for _, valid, _ in hook.received] == [True, True]
    by_trigger = {body["trigger"]: body for body, _, _ in hook.received}
    assert by_trigger["findings"]["study_instance_uid"] == study.study_uid
    assert by_trigger["findings"]["findings_count"] == len(job.document["findings"]) > 0
    assert by_trigger["study_final"]["jobs"][0]["state"] == "done"
    oru = listener.received[-1].split("\r")
    assert next(s for s in oru if s.startswith("PID|")).split("|")[3] == "PHANTOM"
    assert next(s for s in oru if s.startswith("OBR|")).split("|")[3] == "PHANTOM1"
    assert "notifications sent: 3" in status.stdout, status.stdout
    assert 'scanstream_notifications{state="sent"} 3.0' in metrics
