"""The receiver under attack or failure: garbage on the port, a crash mid-association, a full disk."""

from __future__ import annotations

import io
import os
import shutil
import socket
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess, storescu
from engine.testing.waiting import wait_until


def echo(port: int) -> bool:
    return subprocess.run(["echoscu", "-aec", "SCANSTREAM", "127.0.0.1", str(port)],
                          capture_output=True).returncode == 0


def stored_instances(ledger: Path) -> set[str]:
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as db:
        return {row[0] for row in db.execute("SELECT sop_instance_uid FROM instances")}


def test_garbage_http_and_a_huge_pdu_length_leave_the_server_up(tmp_path: Path, require_dcmtk: None) -> None:
    with EngineProcess(tmp_path / "data", workers=0) as engine:
        for payload in (os.urandom(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"\x01\x00" + b"\xff\xff\xff\xff" + b"\x00" * 64):  # A-ASSOCIATE-RQ claiming 4 GiB
            with socket.create_connection(("127.0.0.1", engine.port), timeout=10) as peer:
                peer.sendall(payload)
                peer.shutdown(socket.SHUT_WR)
                peer.settimeout(10)
                try:
                    while peer.recv(65536):  # the server answers (A-ABORT/A-ASSOCIATE-RJ) or closes
                        pass
                except (ConnectionResetError, TimeoutError):
                    pass
            assert echo(engine.port), f"server down after {payload[:16]!r}"
        assert engine.process.poll() is None
        log = engine.log_tail(400)
    assert "Traceback" not in log


def test_receiver_killed_mid_association_keeps_every_acknowledged_instance(tmp_path: Path,
                                                                          require_dcmtk: None) -> None:
    files = write_ct_series(generate_ct_phantom(51, slices=120, size=256), tmp_path / "study")
    engine = EngineProcess(tmp_path / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]}})
    engine.start()
    try:
        sender = subprocess.Popen(["storescu", "-v", "-aec", "SCANSTREAM", "127.0.0.1", str(engine.port),
                                   *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ledger = tmp_path / "data" / "ledger.sqlite"

        def twenty_stored() -> bool:
            assert sender.poll() is None, "the association ended before the receiver was killed"
            return len(stored_instances(ledger)) >= 20

        wait_until(twenty_stored, "20 instances stored", interval=0.01)
        engine.process.kill()  # SIGKILL: no cleanup at all; its worker notices and exits
        output, _ = sender.communicate(timeout=60)
        assert sender.returncode != 0  # the association died with the receiver
    finally:
        engine.stop()
    acknowledged = output.count("Received Store Response (Success)")
    kept = stored_instances(tmp_path / "data" / "ledger.sqlite")
    assert 0 < acknowledged <= len(kept) < len(files)  # every acknowledged instance is in the ledger ...
    spool = {p.name for p in (tmp_path / "data" / "spool").rglob("*") if p.is_file() and not p.name.startswith(".")}
    with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
        names = {row[0] for row in db.execute("SELECT spool_name FROM instances")}
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert names <= spool  # ... and its file is in the spool
    restarted = EngineProcess(tmp_path / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]}})
    restarted.port, restarted.http_port = engine.port, engine.http_port
    with restarted:
        assert storescu(files, restarted.port).returncode == 0  # the modality sends the study again
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        # The partial series may complete on its idle timeout after the restart, before the resend reopens it
        # (then a second revision runs): every job must end done either way.
        jobs = restarted.wait_for_jobs(study_uid, 1, timeout=240)
        assert all(job.state == "done" for job in jobs), [job.reason for job in jobs]
    assert len(stored_instances(tmp_path / "data" / "ledger.sqlite")) == len(files)


def test_full_disk_answers_a700_keeps_what_fit_and_refuses_new_associations(tmp_path: Path,
                                                                            require_dcmtk: None) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs as the spool needs root")
    data = tmp_path / "data"
    spool = data / "spool"
    spool.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(spool)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        files = write_ct_series(generate_ct_phantom(52, slices=48, size=256), tmp_path / "study")  # ~6 MB
        with EngineProcess(data, workers=0, extra={"storage": {"min_free_bytes": 1024 * 1024}}) as engine:
            sent = subprocess.run(["storescu", "-v", "-aec", "SCANSTREAM", "127.0.0.1", str(engine.port),
                                   *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True,
                                  text=True, timeout=120)
            output = sent.stdout + sent.stderr
            acknowledged = output.count("Received Store Response (Success)")
            assert "Received Store Response (Refused: OutOfResources)" in output  # 0xA700
            kept = stored_instances(data / "ledger.sqlite")
            assert 0 < acknowledged == len(kept) < len(files)
            leftovers = [p for p in spool.rglob("*") if p.is_file() and p.name.startswith(".")]
            assert leftovers == []  # partial files removed
            assert not echo(engine.port)  # below the low-water mark: the next association is refused
            assert engine.process.poll() is None
    finally:
        subprocess.run(["umount", str(spool)], capture_output=True)


def test_a_dataset_claiming_2_gb_of_pixels_is_refused_before_any_decode(tmp_path: Path, require_dcmtk: None) -> None:
    from tests.unit.factories import ct_slice

    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 1000, size=64)))
    ds.Rows = ds.Columns = 32768
    ds.NumberOfFrames = 1  # 32768 x 32768 x 16 bit = 2 GiB claimed, 8 KiB present
    path = tmp_path / "claims-2gb.dcm"
    ds.save_as(path, enforce_file_format=True)
    with EngineProcess(tmp_path / "data", workers=0) as engine:
        sent = subprocess.run(["storescu", "-v", "-aec", "SCANSTREAM", "127.0.0.1", str(engine.port), str(path)],
                              env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60)
        assert "Received Store Response (Error: CannotUnderstand" in sent.stdout + sent.stderr  # 0xC0xx
        assert echo(engine.port) and engine.process.poll() is None
        assert stored_instances(tmp_path / "data" / "ledger.sqlite") == set()
    assert [p for p in (tmp_path / "data" / "spool").rglob("*") if p.is_file()] == []


def test_an_association_aborted_mid_instance_leaves_no_partial_trace(tmp_path: Path, require_dcmtk: None) -> None:
    """Killing the sender mid-transfer leaves either nothing or the whole instance, never a partial file or row.

    Which of the two depends on timing (a fast machine may finish the instance first), so the
    test checks the invariant both ways: no temporary or partial file, no row without its
    complete file, and the server still up.
    """
    from tests.unit.factories import ct_slice

    ds = pydicom.dcmread(io.BytesIO(ct_slice(0.0, 1000, size=4096)))  # one 32 MiB instance
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    with EngineProcess(tmp_path / "data", workers=0,
                       extra={"receiver": {"max_pdu_bytes": 4096}}) as engine:  # thousands of PDUs per instance
        sender = subprocess.Popen(["storescu", "-aec", "SCANSTREAM", "127.0.0.1", str(engine.port), str(path)],
                                  env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_until(lambda: "assoc.accepted" in engine.log_tail(200), "the sender's association accepted",
                   detail=engine.log_tail)
        sender.kill()  # the TCP connection drops, most likely mid-instance
        sender.wait()
        wait_until(lambda: any(event in engine.log_tail(200) for event in ("assoc.aborted", "assoc.released")),
                   "the dropped association ended in the receiver's log", detail=engine.log_tail)
        assert echo(engine.port) and engine.process.poll() is None
        with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
            rows = db.execute("SELECT spool_name, size FROM instances").fetchall()
    files = [p for p in (tmp_path / "data" / "spool").rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".")]  # no temporary file left behind
    assert len(files) == len(rows) <= 1
    for name, size in rows:  # if it was stored, it is whole
        (stored,) = [p for p in files if p.name == name]
        assert stored.stat().st_size == size
        assert pydicom.dcmread(stored).PixelData == ds.PixelData


def test_a_p_data_pdu_over_the_negotiated_maximum_closes_the_connection_at_once(tmp_path: Path) -> None:
    import struct

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    with EngineProcess(tmp_path / "data", workers=0, extra={"receiver": {"max_pdu_bytes": 65536}}) as engine:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", engine.port, ae_title="SCANSTREAM")
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        # A P-DATA-TF declaring 4 GiB - 256 bytes, then a little data: without the guard the server would keep
        # buffering until its network timeout.
        raw.sendall(b"\x04\x00" + struct.pack(">L", 0xFFFFFF00) + b"\x00" * 1024)
        raw.settimeout(15)
        try:
            closed = raw.recv(65536) == b""
        except ConnectionResetError:
            closed = True
        assert closed, "the server kept the connection open after an oversized PDU header"
        assoc.abort()
        assert echo(engine.port) and engine.process.poll() is None
        log = engine.log_tail(200)
    assert '"pdu.too_long"' in log and '"declared": 4294967040' in log
