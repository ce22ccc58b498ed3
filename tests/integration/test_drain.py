"""Graceful drain: SIGTERM to `scanstream receiver` stops new associations, lets the open one finish, exits 0."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing.ports import free_port, port_listening
from engine.testing.waiting import wait_until
from engine.testing import storescu, write_config


def instance_count(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def test_sigterm_lets_the_open_association_finish_and_refuses_new_ones(tmp_path: Path,
                                                                       require_storescu: str) -> None:
    files = write_ct_series(generate_ct_phantom(31, slices=160, size=256), tmp_path / "study")
    port, http, broker = free_port(), free_port(), free_port()
    config = write_config(tmp_path / "scanstream.toml", {
        "receiver": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(tmp_path / "data")},
        "broker": {"bind": f"tcp://127.0.0.1:{broker}"},
        "http": {"host": "127.0.0.1", "port": http},
    })
    ledger = tmp_path / "data" / "ledger.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
    receiver = subprocess.Popen([sys.executable, "-m", "engine.cli", "receiver", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["echoscu", "-aec", "SCANSTREAM", "127.0.0.1", str(port)],
                             capture_output=True).returncode != 0:
            assert receiver.poll() is None and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.2)
        sender = subprocess.Popen(["storescu", "-aec", "SCANSTREAM", "127.0.0.1", str(port), *map(str, files)],
                                  env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        while instance_count(ledger) < 10:
            assert sender.poll() is None, "the association ended before the drain could be tested"
            time.sleep(0.01)
        receiver.send_signal(signal.SIGTERM)
        assert sender.poll() is None  # the signal landed mid-association
        wait_until(lambda: not port_listening(port), "the SCP no longer listening after SIGTERM")
        late = storescu(files[:1], port)  # a new association after SIGTERM
        _, errors = sender.communicate(timeout=60)
        assert sender.returncode == 0, errors
        output = receiver.communicate(timeout=60)[0].decode()
        assert receiver.returncode == 0, output[-2000:]
    finally:
        if receiver.poll() is None:
            receiver.kill()
    assert late.returncode != 0  # refused: the SCP stopped listening
    assert instance_count(ledger) == len(files)  # every instance of the open association was stored
    with sqlite3.connect(ledger) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "scp.abort_on_stop" not in output and "receiver.stopped" in output
