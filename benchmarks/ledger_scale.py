"""Ledger costs as history grows: 1k, 10k, 100k and 1M instances, each cost as a ratio to the 1k figure.

One ledger grows through the project's own :class:`engine.ledger.store.Ledger` API,
study by study as a finished study leaves it (one series of 200 instances, three
models' jobs done with their stage timings, one delivery each, sent). At each size a
fresh probe study is recorded and the hot operations are timed in CPU seconds
(``time.process_time``, so fsync waits do not hide growth): recording an instance,
finishing a job, recording a delivery, the study report, a /metrics scrape, the
assembler tick, a study's bytes, and ``scanstream status``. The build runs with
``synchronous=OFF`` (it only makes history quickly); the probes run as the receiver
does (``synchronous=FULL``).

    python -m benchmarks.ledger_scale                 # 1k .. 1M (the 1M build takes minutes)
    python -m benchmarks.ledger_scale --sizes 1000 100000
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from pydicom.uid import CTImageStorage

from benchmarks.common import parser, print_table, write_result
from engine.commands.status import status_report
from engine.ledger.store import InstanceMeta, Ledger
from engine.ledger.study_report import study_report
from engine.receiver.spool import SpoolEntry

SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 3_000)
PER_STUDY = 200
PROBE_INSTANCES = 20
MODELS = ("model-a", "model-b", "model-c")
STAGES = {"decode": 0.01, "preprocess": 0.01, "infer": 0.1, "postprocess": 0.01, "outputs": 0.01}
COSTS = ("record instance", "finish job", "record delivery", "study report", "metrics scrape", "assembler tick",
         "study bytes", "status")


class Grower:
    """Adds finished studies to one ledger through its API, and times the hot operations on a probe study."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.instances = 0
        self.studies = 0
        self.now = 1_000_000.0

    def _tick(self) -> float:
        self.now += 0.001
        return self.now

    def _study(self, count: int) -> tuple[str, str]:
        self.studies += 1
        study = f"1.2.826.0.1.3680043.8.498.{self.studies}"
        return study, f"{study}.1"

    def _record(self, study: str, series: str, count: int) -> None:
        for n in range(1, count + 1):
            meta = InstanceMeta(study, series, f"{series}.{n}", CTImageStorage, modality="CT", instance_number=n,
                                image_position=(0.0, 0.0, float(n)), image_orientation=(1, 0, 0, 0, 1, 0),
                                images_in_acquisition=count)
            self.ledger.add_instance(meta, SpoolEntry(uuid.uuid4().hex, 524_288, uuid.uuid4().hex), "CT1",
                                     self._tick())
        self.instances += count

    def _finish(self, series: str, timed: Callable[[str, Callable[[], Any]], Any] | None = None) -> None:
        """Complete the series, run its three jobs to done with one delivery each, sent."""
        run = timed or (lambda _name, call: call())
        revision = self.ledger.complete_series(series, "geometry", self._tick())
        for model in MODELS:
            self.ledger.create_job(series, revision, model, "1", self._tick())
        for _ in MODELS:
            job = self.ledger.claim_job("w", self._tick(), lease_seconds=30.0)
            assert job is not None
            run("finish job", lambda: self.ledger.complete_job(job.job_id, job.attempts, "/results", self._tick(),
                                                                STAGES, ["pacs"]))
            run("record delivery", lambda: self.ledger.record_delivery(job.job_id, "pacs", "sent", self._tick()))

    def grow_to(self, instances: int) -> None:
        """Add finished studies until the ledger holds ``instances``."""
        while self.instances + PER_STUDY <= instances:
            study, series = self._study(PER_STUDY)
            self._record(study, series, PER_STUDY)
            self._finish(series)

    def probe(self, reference_study: str) -> dict[str, float]:
        """CPU seconds of each cost on a fresh study (the best of its repeats)."""
        costs: dict[str, list[float]] = {name: [] for name in COSTS}

        def timed(name: str, call: Callable[[], Any]) -> Any:
            start = time.process_time()
            result = call()
            costs[name].append(time.process_time() - start)
            return result

        study, series = self._study(PROBE_INSTANCES)
        for n in range(1, PROBE_INSTANCES + 1):
            meta = InstanceMeta(study, series, f"{series}.{n}", CTImageStorage, modality="CT", instance_number=n)
            timed("record instance", lambda: self.ledger.add_instance(
                meta, SpoolEntry(uuid.uuid4().hex, 524_288, uuid.uuid4().hex), "CT1", self._tick()))
            timed("study bytes", lambda: self.ledger.study_bytes(study))
        self.instances += PROBE_INSTANCES
        for _ in range(5):
            timed("assembler tick", self.ledger.open_series)
            timed("metrics scrape", lambda: (self.ledger.job_counts(), self.ledger.received_totals(),
                                             self.ledger.delivery_counts()))
        self._finish(series, timed)
        for _ in range(5):
            timed("study report", lambda: study_report(self.ledger, reference_study))
        for _ in range(2):
            timed("status", lambda: status_report(self.ledger))
        return {name: min(values) for name, values in costs.items()}


def run(sizes: tuple[int, ...], folder: Path) -> list[dict[str, Any]]:
    """Grow one ledger through ``sizes`` and probe at each; one row per size."""
    ledger = Ledger(folder / "ledger.sqlite")
    rows = []
    try:
        grower = Grower(ledger)
        for size in sizes:
            start = time.perf_counter()
            ledger._db.execute("PRAGMA synchronous=OFF")  # building history only; probes run as the receiver does
            grower.grow_to(size)
            ledger._db.execute("PRAGMA synchronous=FULL")
            built = time.perf_counter() - start
            costs = grower.probe("1.2.826.0.1.3680043.8.498.1")
            rows.append({"instances": grower.instances, "studies": grower.studies, "build_s": round(built, 1),
                         "cpu_s": costs})
            print(f"{grower.instances} instances: built in {built:.1f} s", flush=True)
    finally:
        ledger.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--sizes", type=int, nargs="+", help=f"ledger sizes in instances (default {SIZES})")
    args = arguments.parse_args(argv)
    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    with tempfile.TemporaryDirectory() as folder:
        rows = run(sizes, Path(folder))
    base = rows[0]["cpu_s"]
    for row in rows:
        row["ratio"] = {name: (row["cpu_s"][name] / base[name]) if base[name] > 0 else None for name in COSTS}
    print_table(["cost", *(f"{row['instances']:,} (ms)" for row in rows), *(f"x{row['instances']:,}"
                                                                            for row in rows[1:])],
                [[name, *(row["cpu_s"][name] * 1000 for row in rows),
                  *(row["ratio"][name] if row["ratio"][name] is not None else "-" for row in rows[1:])]
                 for name in COSTS])
    write_result(args.out, "ledger_scale", {"sizes": list(sizes), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
