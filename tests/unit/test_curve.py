"""CurveZMQ on the broker port: key files, allowed workers get jobs, others never connect, no plain text off loopback."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import zmq

from engine.broker.broker import Broker
from engine.broker.security import CurveClient, CurveError, CurveServer, create_keys, is_loopback, secure_client
from engine.broker.worker_link import JobDone, JobRequest, WorkerLink
from engine.cli import main
from engine.config import ConfigError, load_config
from tests.unit.test_broker import INTERVAL, LIVENESS, FakeSource


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    create_keys(tmp_path / "broker", "broker")
    create_keys(tmp_path / "allowed", "worker-a")
    create_keys(tmp_path / "stranger", "worker-b")
    (tmp_path / "authorized").mkdir()
    (tmp_path / "authorized" / "worker-a.key").write_bytes((tmp_path / "allowed" / "worker-a.key").read_bytes())
    return {"broker": tmp_path / "broker" / "broker.key_secret", "broker_public": tmp_path / "broker" / "broker.key",
            "authorized": tmp_path / "authorized", "a": tmp_path / "allowed" / "worker-a.key_secret",
            "b": tmp_path / "stranger" / "worker-b.key_secret"}


def test_key_files_and_secret_mode(tmp_path: Path) -> None:
    public, secret = create_keys(tmp_path, "w1")
    assert public.name == "w1.key" and secret.name == "w1.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    with pytest.raises(CurveError, match="exists"):
        create_keys(tmp_path, "w1")


def test_the_secret_key_file_is_0600_before_the_key_is_written(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No moment where another local user could read the secret key (it used to be chmod-ed after writing)."""
    import zmq.auth

    modes: list[int] = []
    real = zmq.auth.create_certificates

    def recording(folder: str, name: str):
        modes.append(stat.S_IMODE((Path(folder) / f"{name}.key_secret").stat().st_mode))
        return real(folder, name)

    monkeypatch.setattr(zmq.auth, "create_certificates", recording)
    _, secret = create_keys(tmp_path, "w2")
    assert modes == [0o600] and stat.S_IMODE(secret.stat().st_mode) == 0o600


@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5570", True), ("tcp://localhost:5570", True), ("tcp://[::1]:5570", True),
    ("ipc:///tmp/b", True), ("tcp://0.0.0.0:5570", False), ("tcp://*:5570", False),
    ("tcp://10.1.2.3:5570", False), ("tcp://receiver:5570", False),
])
def test_what_counts_as_loopback(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


def test_no_plain_text_off_loopback() -> None:
    with pytest.raises(CurveError, match="broker.curve_secret_key"):
        Broker("tcp://0.0.0.0:0", FakeSource())
    with pytest.raises(CurveError, match="worker.curve_secret_key"):
        WorkerLink("tcp://10.0.0.1:5570", "w", lambda request: JobDone({}, []))


def run_link(address: str, curve: CurveClient, done: list[str]) -> tuple[threading.Event, threading.Thread]:
    def handler(request: JobRequest) -> JobDone:
        done.append(request.job_id)
        return JobDone({"ok": True}, [])

    stop = threading.Event()
    link = WorkerLink(address, "w", handler, heartbeat_interval=INTERVAL, liveness=LIVENESS, reconnect_min=0.05,
                      reconnect_max=0.2, curve=curve)
    thread = threading.Thread(target=link.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_an_allowed_worker_gets_jobs_and_a_stranger_never_connects(keys: dict[str, Path]) -> None:
    source = FakeSource()
    broker = Broker("tcp://127.0.0.1:*", source, heartbeat_interval=INTERVAL, liveness=LIVENESS,
                    curve=CurveServer(keys["broker"], keys["authorized"]))
    broker.start()
    stranger_done: list[str] = []
    allowed_done: list[str] = []
    try:
        stranger = run_link(broker.bound_address, CurveClient(keys["b"], keys["broker_public"]), stranger_done)
        source.add("job-1", [b"x"])
        allowed = run_link(broker.bound_address, CurveClient(keys["a"], keys["broker_public"]), allowed_done)
        source.wait(lambda: len(source.done) == 1)
        assert allowed_done == ["job-1"] and stranger_done == []
        assert broker.stats().workers == 1  # the stranger's READY never arrived
        for stop, thread in (stranger, allowed):
            stop.set()
            thread.join(5)
    finally:
        broker.stop()


def test_a_wrong_broker_key_never_connects(keys: dict[str, Path], tmp_path: Path) -> None:
    impostor_public, _ = create_keys(tmp_path / "impostor", "impostor")
    source = FakeSource()
    broker = Broker("tcp://127.0.0.1:*", source, heartbeat_interval=INTERVAL, liveness=LIVENESS,
                    curve=CurveServer(keys["broker"], keys["authorized"]))
    broker.start()
    try:
        context = zmq.Context.instance()
        probe = context.socket(zmq.DEALER)  # a worker that trusts the wrong broker key
        secure_client(probe, CurveClient(keys["a"], impostor_public))
        probe.connect(broker.bound_address)
        probe.send_multipart([b"hello"])
        assert probe.poll(500) == 0  # no handshake, so nothing can come back
        probe.close(0)
        assert broker.stats().workers == 0
    finally:
        broker.stop()


def test_config_needs_both_curve_keys_and_cli_makes_them(tmp_path: Path, capsys) -> None:
    config = tmp_path / "scanstream.toml"
    config.write_text('[broker]\ncurve_secret_key = "/k/broker.key_secret"\n')
    with pytest.raises(ConfigError, match="curve_authorized_keys"):
        load_config(config)
    assert main(["keys", "edge-1", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "edge-1.key").exists() and "worker.curve_server_key" in capsys.readouterr().out
