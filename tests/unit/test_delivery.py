"""Delivery of results to a destination: status verdicts, retry with backoff, give-up, recovery.

The destination is a real pynetdicom Storage SCP on a free loopback port that
answers a scripted sequence of statuses; the clock is the test's, so backoff
waits cost nothing.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine.config.entries import DestinationConfig
from engine.delivery.service import DeliveryService, judge_statuses
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing.ports import free_port
from engine.ledger.store import InstanceMeta, Ledger
from engine.receiver.spool import SpoolEntry


class ScriptedPacs:
    """A Storage SCP answering statuses from a script (0x0000 once the script runs out)."""

    def __init__(self, port: int, statuses: list[int] | None = None, tls: "ssl.SSLContext | None" = None) -> None:
        self.port = port
        self.tls = tls
        self.statuses = list(statuses or [])
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._ae = ae
        self._server = None

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            status = self.statuses.pop(0) if self.statuses else 0x0000
            if status == 0x0000 or status & 0xF000 == 0xB000:
                self.received.append(str(event.request.AffectedSOPInstanceUID))
        return status

    def __enter__(self) -> "ScriptedPacs":
        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=self.tls,
                                             evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def done_job(tmp_path: Path) -> tuple[Ledger, str, Path, list[Path]]:
    """A ledger with one done job whose result folder holds two DICOM files and a JSON file."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    meta = InstanceMeta(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5", sop_class_uid="1.2")
    ledger.add_instance(meta, SpoolEntry("a.dcm", "00", 1), "CT", 1.0)
    ledger.complete_series("1.2.3.4", "test", 2.0)
    job_id = ledger.create_job("1.2.3.4", 1, "model-a", "1", 3.0)
    ledger.claim_job("w", 4.0)
    results = tmp_path / "results"
    files = write_ct_series(generate_ct_phantom(3, slices=2, size=32, nodules=0), results)
    (results / "result.json").write_text("{}")
    return ledger, job_id, results, files


def _service(ledger: Ledger, port: int, clock: Clock, **overrides) -> tuple[DeliveryService, DestinationConfig]:
    settings = {"max_attempts": 3, "backoff_initial_s": 5.0, "backoff_max_s": 60.0, "timeout_s": 5.0, **overrides}
    destination = DestinationConfig(name="pacs", ae_title="PACS", host="127.0.0.1", port=port, **settings)
    return DeliveryService(ledger, [destination], clock=clock), destination


def _complete(ledger: Ledger, job_id: str, results: Path, service: DeliveryService) -> None:
    names = service.destinations_for("model-a", results)
    assert ledger.complete_job(job_id, 1, str(results), 5.0, {}, names)


def test_verdicts_follow_the_status_table() -> None:
    path = Path("x.dcm")
    assert judge_statuses([(path, 0x0000)]).verdict == "sent"
    warned = judge_statuses([(path, 0xB000), (path, 0xB006), (path, 0xB007), (path, 0x0000)])
    assert warned.verdict == "sent" and warned.warnings == 3
    for code in (0xA700, 0xA7FF, None):
        assert judge_statuses([(path, 0x0000), (path, code)]).verdict == "retry"
    for code in (0xA900, 0xA9FF, 0xC000, 0xC211, 0x0122, 0x0110):
        outcome = judge_statuses([(path, code), (path, 0xA700)])
        assert outcome.verdict == "failed" and f"0x{code:04X}" in outcome.reason


def test_results_reach_the_destination_once(done_job) -> None:
    ledger, job_id, results, files = done_job
    clock = Clock()
    with ScriptedPacs(free_port()) as pacs:
        service, _ = _service(ledger, pacs.port, clock)
        _complete(ledger, job_id, results, service)
        assert service.deliver_due() == 1
        assert service.deliver_due() == 0
    (row,) = ledger.deliveries()
    assert (row.state, row.attempts, row.warnings) == ("sent", 1, 0)
    assert len(pacs.received) == len(files)
    (timeline,) = ledger.timelines([job_id])
    assert timeline.stage_seconds()["deliver"] == pytest.approx(clock.now - 5.0)


def test_out_of_resources_retries_after_backoff_then_sends(done_job) -> None:
    ledger, job_id, results, files = done_job
    clock = Clock()
    with ScriptedPacs(free_port(), [0xA700]) as pacs:
        service, destination = _service(ledger, pacs.port, clock)
        _complete(ledger, job_id, results, service)
        service.deliver_due()
        (row,) = ledger.deliveries()
        assert (row.state, row.attempts) == ("pending", 1) and "0xA700" in row.reason
        assert row.next_attempt == pytest.approx(clock.now + destination.backoff_initial_s)
        clock.now += destination.backoff_initial_s - 0.1
        assert service.deliver_due() == 0, "attempted before the backoff ran out"
        clock.now += 0.2
        assert service.deliver_due() == 1
    (row,) = ledger.deliveries()
    assert (row.state, row.attempts) == ("sent", 2)
    assert len(pacs.received) == len(files) + 1, "the refused instance is sent again, the others once more"
    assert len(set(pacs.received)) == len(files)


@pytest.mark.parametrize("status", [0xA900, 0xC000, 0x0122])
def test_refusals_fail_at_once_with_the_reason(done_job, status: int) -> None:
    ledger, job_id, results, _ = done_job
    with ScriptedPacs(free_port(), [status]) as pacs:
        service, _ = _service(ledger, pacs.port, Clock())
        _complete(ledger, job_id, results, service)
        service.deliver_due()
    (row,) = ledger.deliveries()
    assert (row.state, row.attempts) == ("failed", 1) and f"0x{status:04X}" in row.reason


def test_warning_statuses_count_as_sent(done_job) -> None:
    ledger, job_id, results, _ = done_job
    with ScriptedPacs(free_port(), [0xB007, 0xB000]) as pacs:
        service, _ = _service(ledger, pacs.port, Clock())
        _complete(ledger, job_id, results, service)
        service.deliver_due()
    (row,) = ledger.deliveries()
    assert (row.state, row.warnings) == ("sent", 2)


def test_a_destination_that_is_down_backs_off_and_gives_up(done_job) -> None:
    ledger, job_id, results, _ = done_job
    clock = Clock()
    service, destination = _service(ledger, free_port(), clock)  # nothing listens there
    _complete(ledger, job_id, results, service)
    waits = []
    for _ in range(destination.max_attempts):
        assert service.deliver_due() == 1
        (row,) = ledger.deliveries()
        if row.state == "pending":
            waits.append(row.next_attempt - clock.now)
            clock.now = row.next_attempt
    (row,) = ledger.deliveries()
    assert row.state == "failed" and row.attempts == destination.max_attempts
    assert "gave up after 3 attempts" in row.reason and "association" in row.reason
    assert waits == pytest.approx([5.0, 10.0])
    assert ledger.status_counts()["deliveries failed"] == 1


def test_a_destination_that_comes_back_gets_the_results(done_job) -> None:
    ledger, job_id, results, files = done_job
    clock = Clock()
    port = free_port()
    service, destination = _service(ledger, port, clock)
    _complete(ledger, job_id, results, service)
    service.deliver_due()
    assert ledger.deliveries()[0].state == "pending"
    clock.now += destination.backoff_initial_s
    with ScriptedPacs(port) as pacs:
        service.deliver_due()
    (row,) = ledger.deliveries()
    assert (row.state, row.attempts) == ("sent", 2) and len(pacs.received) == len(files)


def test_model_filter_and_results_without_dicom(done_job, tmp_path: Path) -> None:
    ledger, _, results, _ = done_job
    service, _ = _service(ledger, free_port(), Clock(), models=["model-b"])
    assert service.destinations_for("model-a", results) == []
    assert service.destinations_for("model-b", results) == ["pacs"]
    only_json = tmp_path / "json-only"
    only_json.mkdir()
    (only_json / "result.json").write_text("{}")
    assert service.destinations_for("model-b", only_json) == []


def test_destination_config_names_bad_keys() -> None:
    from engine.config import ConfigError, load_config

    with pytest.raises(ConfigError) as error:
        load_config(environ={"SCANSTREAM_DESTINATIONS": '[{"name": "pacs", "ae_title": "A\\\\B", "host": "h",'
                                                         ' "port": 0}]'})
    text = str(error.value)
    assert 'destinations[0] ("pacs").ae_title' in text and 'destinations[0] ("pacs").port' in text
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(environ={"SCANSTREAM_DESTINATIONS": '[{"name": "p", "ae_title": "A", "host": "h", "port": 1},'
                                                         ' {"name": "p", "ae_title": "B", "host": "h", "port": 2}]'})


def test_requeue_sends_a_failed_delivery_again(done_job, capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    ledger, job_id, results, files = done_job
    clock = Clock()
    service, _ = _service(ledger, free_port(), clock, max_attempts=1)
    _complete(ledger, job_id, results, service)
    service.deliver_due()
    assert ledger.deliveries()[0].state == "failed"
    data_dir = Path(ledger.path).parent
    assert main(["requeue", job_id, "--data-dir", str(data_dir)]) == 0
    assert "requeued 0 job(s) and 1 failed delivery" in capsys.readouterr().out
    clock.now = time.time() + 1.0  # the requeue used the real clock; the service's clock must be past it
    with ScriptedPacs(service._destinations["pacs"].port) as pacs:
        assert service.deliver_due() == 1
    (row,) = ledger.deliveries()
    assert (row.state, row.attempts) == ("sent", 1) and len(pacs.received) == len(files)


def test_delivery_over_tls_verifies_the_pacs(done_job, tmp_path: Path) -> None:
    import shutil
    import ssl

    from engine.testing.peers import make_test_pki

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; `make test` installs it")
    pki = make_test_pki(tmp_path / "pki")
    ledger, job_id, results, files = done_job
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki / "server.crt", pki / "server.key")
    clock = Clock()
    with ScriptedPacs(free_port(), tls=server) as pacs:
        service, _ = _service(ledger, pacs.port, clock, tls=True, tls_ca_certificates=str(pki / "ca.crt"))
        _complete(ledger, job_id, results, service)
        service.deliver_due()
        assert ledger.deliveries()[0].state == "sent" and len(pacs.received) == len(files)
        untrusting, _ = _service(ledger, pacs.port, clock, tls=True, tls_ca_certificates=str(pki / "rogue.crt"),
                                 max_attempts=1)
        assert untrusting._send(ledger.deliveries()[0], untrusting._destinations["pacs"]).verdict == "retry"
        assert len(pacs.received) == len(files), "sent to a PACS whose certificate was not trusted"
