"""Several hosts on one machine: receiver, two workers and a modality in their own network namespaces.

The namespaces hang off a bridge in a fifth ("hub") namespace, so nothing
touches the machine's own interfaces. The broker binds the receiver's
10.77.x address, so CurveZMQ is required: workers connect with their keys. A
study sent from the modality namespace gets its result; the network of the
worker computing it is then cut mid-job, and the job completes on the other.
Skips with the reason where network namespaces cannot be made (not root, no
iproute2, a sandbox without CAP_SYS_ADMIN).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker.security import create_keys
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import TEST_MODEL_CACHE, write_config

SUBNET = "10.77.0"
NODES = {"recv": 1, "w1": 2, "w2": 3, "mod": 4}
WAIT_S = 120.0


class Lab:
    """Network namespaces on a private bridge; every name carries this process's pid so runs never collide."""

    def __init__(self) -> None:
        self.tag = f"ss{os.getpid() % 100000}"
        self.hub = f"{self.tag}-hub"
        self.processes: list[subprocess.Popen] = []

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def address(self, node: str) -> str:
        return f"{SUBNET}.{NODES[node]}"

    def device(self, node: str) -> str:
        return f"{self.tag}{NODES[node]}"  # <= 15 characters

    @staticmethod
    def ip(*args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def create(self) -> None:
        self.ip("netns", "add", self.hub)
        self.ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.hub, "link", "set", "br0", "up")
        for node in NODES:
            ns, device = self.ns(node), self.device(node)
            self.ip("netns", "add", ns)
            self.ip("link", "add", f"{device}a", "type", "veth", "peer", "name", f"{device}b")
            self.ip("link", "set", f"{device}a", "netns", ns)
            self.ip("link", "set", f"{device}b", "netns", self.hub)
            self.ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", f"{device}a")
            self.ip("-n", ns, "link", "set", f"{device}a", "up")
            self.ip("-n", ns, "link", "set", "lo", "up")
            self.ip("-n", self.hub, "link", "set", f"{device}b", "master", "br0", "up")

    def cut(self, node: str) -> None:
        """Tear the node's network down (its veth pair is deleted; its processes keep running, unreachable)."""
        self.ip("-n", self.ns(node), "link", "del", f"{self.device(node)}a")

    def start(self, node: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        process = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *command], stdout=open(log, "wb"),
                                   stderr=subprocess.STDOUT, env=env)
        self.processes.append(process)
        return process

    def run(self, node: str, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *command], capture_output=True, text=True,
                              **kwargs)

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        for ns in [self.ns(node) for node in NODES] + [self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed: cannot make network namespaces")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    lab = Lab()
    try:
        lab.create()
    except RuntimeError as error:
        lab.destroy()
        pytest.skip(f"cannot make network namespaces here: {error}")
    try:
        yield lab
    finally:
        lab.destroy()


def wait_for(predicate, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs if p.exists())
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.05)


def jobs(ledger: Path) -> list[tuple[str, str, int, str | None, str | None]]:
    if not ledger.exists():
        return []
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as db:
        try:
            return db.execute("SELECT job_id, state, attempts, worker, result_dir FROM jobs").fetchall()
        except sqlite3.OperationalError:
            return []


def test_workers_on_other_hosts_over_curve_and_a_host_lost_mid_job(lab: Lab, tmp_path: Path,
                                                                   require_storescu: str) -> None:
    keys = tmp_path / "keys"
    create_keys(keys, "broker")
    create_keys(keys, "worker")
    (keys / "allowed").mkdir()
    shutil.copy(keys / "worker.key", keys / "allowed" / "worker.key")
    broker = f"tcp://{lab.address('recv')}:5570"
    heartbeat = {"heartbeat_interval_s": 0.5, "heartbeat_liveness": 3}
    receiver_config = write_config(tmp_path / "receiver.toml", {
        "receiver": {"host": lab.address("recv"), "port": 11112},
        "storage": {"data_dir": str(tmp_path / "data")},
        "broker": {"bind": broker, **heartbeat, "curve_secret_key": str(keys / "broker.key_secret"),
                   "curve_authorized_keys": str(keys / "allowed")},
        "http": {"host": lab.address("recv"), "port": 8080},
        "routing": {"models": ["nodule-seg"]},
    })
    worker_config = write_config(tmp_path / "worker.toml", {
        "broker": heartbeat,
        "worker": {"torch_threads": 1, "model_cache": str(TEST_MODEL_CACHE),
                   "curve_secret_key": str(keys / "worker.key_secret"), "curve_server_key": str(keys / "broker.key")},
    })
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
    logs = {name: tmp_path / f"{name}.log" for name in ("recv", "w1", "w2")}
    lab.start("recv", [sys.executable, "-m", "engine.cli", "receiver", "--config", str(receiver_config)],
              logs["recv"], env)
    workers = {name: lab.start(name, [sys.executable, "-m", "engine.cli", "worker", "--broker", broker,
                                      "--config", str(worker_config)], logs[name], env) for name in ("w1", "w2")}
    wait_for(lambda: logs["recv"].read_text(errors="replace").count('"worker.connected"') >= 2,
             "both workers to connect over Curve", list(logs.values()))

    files = write_ct_series(generate_ct_phantom(41, slices=48, size=256), tmp_path / "study")
    sent = lab.run("mod", ["storescu", "-aec", "SCANSTREAM", lab.address("recv"), "11112", *map(str, files)],
                   env={**os.environ, "TCP_NODELAY": "1"}, timeout=120)
    assert sent.returncode == 0, sent.stderr
    ledger = tmp_path / "data" / "ledger.sqlite"
    wait_for(lambda: any(state == "leased" for _, state, *_ in jobs(ledger)), "the job to be leased",
             list(logs.values()))
    (job_id, _, attempts, holder, _), = jobs(ledger)
    assert attempts == 1
    lost = next(name for name, process in workers.items() if holder.split(":")[1] == str(process.pid))
    lab.cut(lost)
    wait_for(lambda: any(state == "done" for _, state, *_ in jobs(ledger)), "the job to finish elsewhere",
             list(logs.values()))
    (_, state, attempts, finisher, result_dir), = jobs(ledger)
    other = next(name for name in workers if name != lost)
    assert (state, attempts) == ("done", 2)  # the lost lease cost one attempt
    assert finisher.split(":")[1] == str(workers[other].pid)
    assert (Path(result_dir) / "result.json").exists() and (Path(result_dir) / "seg.dcm").exists()
    assert "lease_lost" in logs["recv"].read_text(errors="replace")
