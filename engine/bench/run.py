"""One ``scanstream bench`` run: prepare the studies, start or reach the engine, drive it, build the result.

The result dict is what :mod:`engine.bench.report` turns into ``result.json``,
``report.md`` and the plots, and what the benchmarks under ``benchmarks/`` read.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.bench.cpu import CpuMeter
from engine.bench.driver import Run, StudyOutcome, Target, run_closed, run_open
from engine.bench.machine import describe_machine
from engine.bench.report import latency_summary, stage_values
from engine.bench.workload import Study, folder_templates, phantom_templates, prepare_studies
from engine.config import WorkerConfig


@dataclass
class BenchSettings:
    """Everything ``scanstream bench`` takes (see ``scanstream bench --help``)."""

    studies: int = 8
    duration_s: float | None = None
    mode: str = "closed"
    concurrency: int = 1
    rate_per_s: float | None = None
    folder: Path | None = None
    slices: int = 48
    size: int = 256
    variants: int = 2
    seed: int = 1
    timeout_s: float = 600.0
    start: bool = True
    workers: int = 1
    torch_threads: int = 0
    sender: str = "pynetdicom"
    host: str = "127.0.0.1"
    port: int = 11112
    aet: str = "SCANSTREAM"
    http_url: str = "http://127.0.0.1:8080"
    api_token: str = ""  # for a running engine (--host): a console user's API token
    work_dir: Path | None = None
    pacs: str = ""  # "orthanc": start a real Orthanc as the destination of the engine started here
    destination: str = ""  # AE@host:port: a running PACS the engine started here sends results to
    model: str = ""  # route only to this model in the engine started here (zoo-* loads the zoo plugin)
    plugin_options: dict[str, str] = field(default_factory=dict)  # plugins.options of the engine started here


def destination_entries(settings: BenchSettings, work_dir: Path, stack: contextlib.ExitStack) -> list[dict[str, Any]]:
    """The ``[[destinations]]`` of the engine started here: a fresh Orthanc, a given peer, or none."""
    if settings.pacs == "orthanc":
        from engine.testing.peers import OrthancPeer

        pacs = stack.enter_context(OrthancPeer(work_dir / "orthanc"))
        return [{"name": "orthanc", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}]
    if settings.pacs:
        raise ValueError(f"--pacs: only 'orthanc' can be started here, got {settings.pacs!r}")
    if settings.destination:
        ae_title, _, address = settings.destination.partition("@")
        host, _, port = address.rpartition(":")
        if not ae_title or not host or not port.isdigit():
            raise ValueError(f"--destination: expected AE@host:port, got {settings.destination!r}")
        return [{"name": "pacs", "ae_title": ae_title, "host": host, "port": int(port)}]
    return []


ZOO_PREFIX = "zoo-"


def model_sections(settings: BenchSettings) -> dict[str, dict[str, Any]]:
    """Config sections that make the engine started here run only ``settings.model`` (and load the zoo for it)."""
    sections: dict[str, dict[str, Any]] = {}
    if settings.plugin_options:
        sections["plugins"] = {"options": dict(settings.plugin_options)}
    if settings.model:
        sections["routing"] = {"models": [settings.model]}
        if settings.model.startswith(ZOO_PREFIX):
            sections.setdefault("plugins", {})["modules"] = ["plugins.zoo"]
    return sections


@contextlib.contextmanager
def engine_target(settings: BenchSettings, work_dir: Path) -> Iterator[tuple[Target, str, int | None]]:
    """The engine to drive: one started here on free ports (``settings.start``), or the given address;
    with a description and the pid of the ``scanstream serve`` started here (None for a running engine)."""
    if not settings.start:
        yield Target(settings.host, settings.port, settings.aet, settings.http_url.rstrip("/"),
                     sender=settings.sender, api_token=settings.api_token), f"running engine at {settings.host}:{settings.port} ({settings.aet})", None
        return
    from engine.testing import EngineProcess

    with contextlib.ExitStack() as stack:
        destinations = destination_entries(settings, work_dir, stack)
        engine = EngineProcess(work_dir / "engine", workers=settings.workers, idle_timeout_s=30.0,
                               model_cache=WorkerConfig().model_cache_path(),
                               extra={"worker": {"torch_threads": settings.torch_threads}, **model_sections(settings)},
                               env={"SCANSTREAM_DESTINATIONS": json.dumps(destinations)} if destinations else {})
        stack.enter_context(engine)
        only = f", model {settings.model} only" if settings.model else ""
        sends = only + (f", results sent to {destinations[0]['ae_title']}@{destinations[0]['host']}:"
                        f"{destinations[0]['port']}" if destinations else "")
        yield Target("127.0.0.1", engine.port, engine.ae_title, engine.http_url, sender=settings.sender,
                     api_token=engine.api_token), \
            f"started here: scanstream serve with {settings.workers} worker(s), data in {engine.data_dir}{sends}", \
            engine.process.pid if engine.process is not None else None


def workers_connected(target: Target) -> int:
    """``scanstream_workers_connected`` from the engine's ``/metrics``."""
    with urllib.request.urlopen(f"{target.http_url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("scanstream_workers_connected "):
                return int(float(line.split()[1]))
    return 0


def wait_for_workers(target: Target, minimum: int, timeout_s: float) -> None:
    """Wait until ``minimum`` workers are connected (models loaded), so start-up is not timed as queueing."""
    deadline = time.monotonic() + timeout_s
    while workers_connected(target) < minimum:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {minimum} worker(s) connected to the engine after {timeout_s} s")
        time.sleep(0.2)


def prepare(settings: BenchSettings, work_dir: Path) -> tuple[list[Study], str]:
    """The studies to send (written before timing starts) and a one-line description of the workload."""
    count = settings.studies
    if settings.folder is not None:
        templates = folder_templates(settings.folder)
        described = f"{len(templates)} stud(ies) from {settings.folder}, replayed under new UIDs"
    else:
        templates = phantom_templates(work_dir / "templates", min(settings.variants, count), settings.slices,
                                      settings.size, settings.seed)
        described = f"phantom chest CT, {settings.slices} slices of {settings.size}x{settings.size}"
    return prepare_studies(templates, count, work_dir / "send"), described


def summarise(outcomes: list[StudyOutcome]) -> dict[str, Any]:
    """Throughput over the run (first send to last result) and the checks, summed."""
    sent = [o for o in outcomes if o.sent_ok]
    completed = [o for o in sent if o.report is not None and o.report.get("final")]
    start = min((o.first_sent for o in outcomes), default=0.0)
    ends = [o.result_delivered or o.result_written or o.last_sent for o in outcomes]
    wall = max(max(ends, default=start) - start, 1e-9)
    instances = sum(o.study.instances for o in sent)
    nbytes = sum(o.study.nbytes for o in sent)
    return {"studies_sent": len(sent), "studies_completed": len(completed), "send_errors": len(outcomes) - len(sent),
            "instances": instances, "bytes": nbytes, "wall_s": wall, "studies_per_s": len(completed) / wall,
            "instances_per_s": instances / wall, "mb_per_s": nbytes / 1e6 / wall,
            "split_series": sum(o.split_series for o in outcomes), "lost_series": sum(o.lost_series for o in outcomes),
            "failed_jobs": sum(o.failed_jobs for o in outcomes),
            "failed_deliveries": sum(o.failed_deliveries for o in outcomes)}


def run_bench(settings: BenchSettings, progress: Callable[[], None] | None = None,
              on_total: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one benchmark and return the result dict (nothing written; see :func:`engine.bench.report.write_report`).

    ``on_total`` is told how many studies will be sent once they are prepared;
    ``progress`` is called once per study whose outcome is known.
    """
    with contextlib.ExitStack() as stack:
        work_dir = settings.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ss-bench-")))
        studies, workload = prepare(settings, work_dir)
        if on_total is not None:
            on_total(len(studies))
        target, engine, engine_pid = stack.enter_context(engine_target(settings, work_dir))
        wait_for_workers(target, settings.workers if settings.start else 1, settings.timeout_s)
        meter = CpuMeter(engine_pid)
        meter.start()
        run = Run(settings.mode, settings.concurrency, settings.rate_per_s, settings.duration_s, settings.timeout_s,
                  settings.seed)
        drive = run_open if settings.mode == "open" else run_closed
        outcomes = drive(target, studies, run, progress or (lambda: None))
        cpu = meter.stop()
    result: dict[str, Any] = {
        "benchmark": "scanstream-bench",
        "machine": describe_machine(),
        "config": {"mode": settings.mode, "sender": settings.sender, "concurrency": settings.concurrency, "rate_per_s": settings.rate_per_s,
                   "studies": settings.studies, "duration_s": settings.duration_s, "workload": workload,
                   "engine": engine},
        "summary": summarise(outcomes),
        "cpu_s_per_study": {party: (None if seconds is None else seconds / max(1, len(outcomes)))
                            for party, seconds in cpu.items()},
        "studies": [o.as_dict() for o in sorted(outcomes, key=lambda o: o.first_sent)],
    }
    result["latency_s"] = latency_summary(stage_values(result))
    return result
