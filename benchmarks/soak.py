"""Soak: studies at a fixed rate for a long time; memory growth of the engine and any loss (must be none).

Run: ``python -m benchmarks.soak [--minutes 10] [--rate 0.3] [--quick]``. Starts
``scanstream serve`` with one worker, sends phantom studies (24 slices of
128x128) as Poisson arrivals at ``--rate`` per second for ``--minutes``, samples
the resident memory of the engine's processes (serve and its workers, from
/proc) every 5 s, then checks every study: results filed, no split or lost
series, no failed jobs, and every sent instance in the ledger. Memory growth is
reported after the first fifth of the run (warm-up: model load, allocator pools).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import parser, print_table, write_result
from engine.bench.driver import Run, Target, run_open
from engine.bench.run import summarise, wait_for_workers
from engine.bench.workload import phantom_templates, prepare_studies
from engine.config import WorkerConfig
from engine.testing import EngineProcess

SAMPLE_S = 5.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (one level: serve's workers), in MB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for member in pids:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue  # a worker restarting between the listing and the read
    return total / 1024


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--minutes", type=float, default=10.0)
    arguments.add_argument("--rate", type=float, default=0.3, help="studies per second")
    args = arguments.parse_args(argv)
    minutes = 0.4 if args.quick else args.minutes
    slices, size = (8, 64) if args.quick else (24, 128)
    count = int(args.rate * minutes * 60 * 1.5) + 4
    with tempfile.TemporaryDirectory(prefix="ss-soak-") as folder:
        work = Path(folder)
        studies = prepare_studies(phantom_templates(work / "templates", 3, slices, size, seed=7), count, work / "send")
        with EngineProcess(work / "engine", workers=1, idle_timeout_s=30.0,
                           model_cache=WorkerConfig().model_cache_path(),
                           extra={"worker": {"torch_threads": 0}, "routing": {"models": ["nodule-seg"]}}) as engine:
            target = Target("127.0.0.1", engine.port, engine.ae_title, engine.http_url, api_token=engine.api_token)
            wait_for_workers(target, 1, 300)
            samples: list[tuple[float, float]] = []
            done = threading.Event()

            def sample() -> None:
                start = time.monotonic()
                while not done.wait(SAMPLE_S):
                    samples.append((time.monotonic() - start, tree_rss_mb(engine.process.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            outcomes = run_open(target, studies, Run("open", 4, args.rate, minutes * 60, 600.0, 7), lambda: None)
            done.set()
            sampler.join()
            ledger = engine.ledger()
            try:
                stored = ledger.status_counts()["instances"]
            finally:
                ledger.close()
    summary = summarise(outcomes)
    warm = [mb for t, mb in samples if t >= minutes * 60 / 5] or [mb for _, mb in samples]
    growth = warm[-1] - warm[0] if warm else 0.0
    hours = max((samples[-1][0] - minutes * 12) / 3600, 1e-9) if samples else 1e-9
    lost_instances = summary["instances"] - stored
    rows = [["studies sent / completed", f"{summary['studies_sent']} / {summary['studies_completed']}"],
            ["split / lost series, failed jobs", f"{summary['split_series']} / {summary['lost_series']}, "
                                                 f"{summary['failed_jobs']}"],
            ["instances sent - stored", lost_instances],
            ["RSS after warm-up -> end (MB)", f"{warm[0]:.0f} -> {warm[-1]:.0f}" if warm else "-"],
            ["growth (MB, MB/h)", f"{growth:.1f}, {growth / hours:.1f}"]]
    print(f"soak: {minutes:g} min at {args.rate} studies/s ({slices} slices of {size}x{size})")
    print_table(["measure", "value"], rows)
    loss = summary["split_series"] + summary["lost_series"] + summary["failed_jobs"] + lost_instances \
        + summary["studies_sent"] - summary["studies_completed"]
    print("loss: none" if loss == 0 else f"LOSS: {loss}")
    write_result(args.out, "soak", {"quick": args.quick, "minutes": minutes, "rate": args.rate,
                                    "summary": summary, "instances_stored": stored, "rss_samples": samples,
                                    "rss_growth_mb": growth, "rss_growth_mb_per_h": growth / hours, "loss": loss})
    return 0 if loss == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
