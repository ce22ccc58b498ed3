"""``scanstream demo``: the whole engine on one machine, fed a phantom CT over real DICOM.

Starts the receiver and one worker subprocess on free loopback ports, writes a
generated chest CT with known nodules, C-STOREs it, waits for every job of the
study, and prints what each model found next to the phantom's truth.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from engine.commands.common import add_command, config_from_args
from engine.config import EngineConfig, with_overrides
from engine.testing.ports import free_port
from engine.logs import configure_logging, get_logger
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.plugins import load_plugins
from engine.ledger.store import Ledger
from engine.roles.receiver import ReceiverRole
from engine.roles.supervisor import WorkerSupervisor
from engine.dicom.store_scu import send_files

log = get_logger(__name__)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``demo``."""
    demo = add_command(sub, "demo", cmd_demo, "start the engine, send a phantom CT study, print the findings")
    demo.add_argument("--data-dir", type=Path)
    demo.add_argument("--seed", type=int, default=2024)
    demo.add_argument("--timeout", type=float, default=180.0)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the engine, send a phantom CT study over DICOM, print the findings."""
    return run_demo(config_from_args(args), seed=args.seed, timeout=args.timeout)


def wait_for_study(ledger: Ledger, study_uid: str, timeout: float) -> list:
    """Wait until the study has jobs and all are final; returns the jobs (empty on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = ledger.final_study_jobs(study_uid)
        if jobs:
            return jobs
        time.sleep(0.2)
    return []


def run_demo(config: EngineConfig, seed: int = 2024, timeout: float = 180.0) -> int:
    """Run the demo; returns the process exit code (0 when every job succeeded)."""
    config = with_overrides(
        config,
        receiver={"port": free_port(), "host": "127.0.0.1"},
        broker={"bind": f"tcp://127.0.0.1:{free_port()}"},
        http={"port": free_port()},
        worker={"count": max(1, config.worker.count)},
        logging={"level": "WARNING"},
    )
    configure_logging("WARNING")
    data_dir = config.storage.data_dir
    study_dir = data_dir / "demo-study"
    phantom = generate_ct_phantom(seed, nodules=3)
    files = write_ct_series(phantom, study_dir)
    truth = ", ".join(f"{4.0 / 3.0 * math.pi * r ** 3 / 1000:.2f}" for _, r in phantom.nodules)
    print(f"phantom CT: {len(files)} slices in {study_dir}; truth: {len(phantom.nodules)} nodules, "
          f"volumes {truth} ml")
    study_uid = str(_study_uid(files[0]))
    role = ReceiverRole(config, load_plugins(config))
    role.start()
    supervisor = WorkerSupervisor(config, role.broker.bound_address, config.worker.count)
    supervisor.start()
    try:
        started = time.monotonic()
        report = send_files(files, "127.0.0.1", role.scp.port, config.receiver.ae_title, "DEMO_CT")
        print(f"sent {report.sent} instances over DICOM to {config.receiver.ae_title}@127.0.0.1:{role.scp.port}")
        jobs = wait_for_study(role.ledger, study_uid, timeout)
        elapsed = time.monotonic() - started
        if not jobs:
            print(f"no result within {timeout:.0f} s; see `scanstream status`")
            return 1
        return _print_results(jobs, elapsed)
    finally:
        supervisor.stop()
        role.stop()


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)


def _print_results(jobs: list, elapsed: float) -> int:
    code = 0
    for job in jobs:
        if job.state != "done":
            print(f"{job.model}: {job.state}: {job.reason}")
            code = 1
            continue
        folder = Path(job.result_dir)
        document = json.loads((folder / "result.json").read_text())
        print(f"{job.model} {document['model_version']}: {document['summary']}")
        for finding in document["findings"]:
            centroid = ", ".join(f"{v:.0f}" for v in finding.get("centroid_mm", ()))
            print(f"  - {finding['label']}: {finding.get('volume_ml', 0):.2f} ml at ({centroid}) mm")
        print(f"  files: {', '.join(sorted(p.name for p in folder.iterdir()))} in {folder}")
    print(f"study to results in {elapsed:.1f} s")
    return code
