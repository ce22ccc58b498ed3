"""Engine overhead: studies/s through the whole engine vs the same model in a bare loop in one process.

Run: ``python -m benchmarks.overhead [--quick] [--studies N] [--rounds R]``. Engine: a
closed loop of 2 studies in flight (the worker's capacity) through
``scanstream serve`` with one worker (DICOM in, SEG out). Baseline, same run:
the same studies decoded once in this process, then preprocess + backend +
postprocess per study in a loop (no DICOM, no queue, no outputs), on the
backend the worker chose and its heap setting. Each round runs the engine and
then the bare loop, so both see the same machine (a shared one drifts by tens
of percent over minutes); the figure is the median engine / bare ratio of the
rounds. Goal >= 0.9.

Each round also splits the ratio into two factors measured in it: the work
(the bare loop's CPU seconds per study over the engine's, receiver, workers
and modality side together) and the cores kept busy (the engine's CPU use
over the bare loop's, as fractions of the machine's cores):
engine / bare = work x busy. Below 1, the first says the engine does more
per study; the second that it leaves cores idle or its threads wait for each other.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from benchmarks.common import parser, print_table, write_result
from benchmarks.engine_runs import bench
from engine.api import ModelRegistry, ModelSpec, SeriesInfo
from engine.bench.report import cpu_line
from engine.config import WorkerConfig
from engine.roles.memory import retain_freed_memory
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.selection import choose_backend, make_backend
from engine.worker.decode import decode_series
from plugins import nodule_seg

GOAL = 0.9


def nodule_seg_spec() -> ModelSpec:
    """The built-in model the engine runs of :mod:`benchmarks.engine_runs` route to."""
    registry = ModelRegistry()
    nodule_seg.scanstream_register_models(registry)
    return registry.get("nodule-seg")


class BareRun(NamedTuple):
    """The bare loop's figures."""

    rate: float  # studies/s
    cpu_s_per_study: float  # this process, every thread
    backend: str


def bare_loop(folder: Path, threads: int, spec: ModelSpec | None = None) -> BareRun:
    """Studies/s and CPU seconds per study of preprocess + backend + postprocess over the sent studies' decoded
    volumes, and the backend."""
    spec = spec or nodule_seg_spec()
    artifacts = ModelArtifacts(spec, WorkerConfig().model_cache_path())
    choice = choose_backend(artifacts, "auto", "cpu", threads)
    backend = make_backend(choice.backend, "cpu", threads=threads)
    backend.initialize(artifacts)
    volumes = []
    for study in sorted(folder.glob("study-*")):
        files = sorted(study.glob("*.dcm"))
        info = SeriesInfo("1", "2", "CT", "1.2.840.10008.5.1.4.1.1.2", instance_count=len(files))
        volumes.append(decode_series([p.read_bytes() for p in files], info))
    from engine.runtime.base import InferenceRequest

    def one(volume) -> None:
        batch = spec.handler.preprocess(volume)
        (response,) = backend.execute([InferenceRequest("bare", batch)])
        spec.handler.postprocess(response.output(), volume)

    one(volumes[0])
    start, cpu_start = time.perf_counter(), time.process_time()
    for volume in volumes:
        one(volume)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return BareRun(len(volumes) / seconds, cpu / len(volumes), backend.describe())


class Round(NamedTuple):
    """One engine run and the bare loop after it."""

    engine: float  # studies/s
    bare: float  # studies/s
    backend: str
    result: dict  # the engine run's bench result
    bare_cpu: float  # CPU seconds per study

    @property
    def engine_cpu(self) -> float | None:
        """CPU seconds per study of the engine run: receiver, workers and modality side, when all were measured."""
        parts = (self.result.get("cpu_s_per_study") or {}).values()
        return sum(parts) if parts and None not in parts else None

    def factors(self) -> tuple[float, float] | None:
        """(work, busy): bare CPU / engine CPU per study, and engine / bare cores in use; their product is the ratio."""
        engine_cpu = self.engine_cpu
        if not engine_cpu or not self.bare_cpu:
            return None
        return self.bare_cpu / engine_cpu, (engine_cpu * self.engine) / (self.bare_cpu * self.bare)


def one_round(studies: int, slices: int, size: int) -> Round:
    """One engine run, then the bare loop over the studies it sent."""
    with tempfile.TemporaryDirectory(prefix="ss-overhead-") as folder:
        result = bench(studies, concurrency=2, slices=slices, size=size, work_dir=Path(folder))
        torch.set_num_threads(2)
        bare = bare_loop(Path(folder) / "send", threads=2)
    return Round(result["summary"]["studies_per_s"], bare.rate, bare.backend, result, bare.cpu_s_per_study)


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--studies", type=int, default=8)
    arguments.add_argument("--rounds", type=int, default=3,
                           help="engine then bare loop, this many times; the figure is the median ratio")
    args = arguments.parse_args(argv)
    studies, slices, size = (2, 12, 64) if args.quick else (args.studies, 48, 256)
    rounds = 1 if args.quick else max(1, args.rounds)
    retain_freed_memory()  # the worker's heap setting (engine.roles.memory), so both sides allocate alike
    measured = [one_round(studies, slices, size) for _ in range(rounds)]
    ratios = [r.engine / r.bare for r in measured]
    ratio = float(np.median(ratios))
    backend, last = measured[-1].backend, measured[-1].result
    print(f"{studies} studies of {slices} slices {size}x{size}; bare loop on {backend}; {rounds} round(s), "
          "each the engine then the bare loop")
    cores = os.cpu_count() or 1
    rows = []
    for index, r in enumerate(measured, 1):
        factors = r.factors()
        work, busy = factors if factors else ("-", "-")
        busy_engine = "-" if r.engine_cpu is None else r.engine_cpu * r.engine / cores
        rows.append([f"round {index}", r.engine, r.bare, r.engine / r.bare, work, busy, busy_engine,
                     r.bare_cpu * r.bare / cores])
    print_table(["round", "engine studies/s", "bare studies/s", "engine / bare", "work (bare / engine CPU)",
                 "busy (engine / bare)", f"engine: of {cores} cores busy", f"bare: of {cores} cores busy"],
                rows + [["median", "", "", ratio, "", "", "", ""]])
    cpu = cpu_line(last)
    if cpu:
        print(f"CPU per study in the last engine run: {cpu}")
    print(f"goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}")
    write_result(args.out, "overhead", {"quick": args.quick, "studies": studies, "slices": slices, "size": size,
                                        "rounds": [{"engine_studies_per_s": r.engine, "bare_studies_per_s": r.bare,
                                                    "ratio": r.engine / r.bare, "bare_cpu_s_per_study": r.bare_cpu,
                                                    "engine_cpu_s_per_study": r.engine_cpu,
                                                    "work_and_busy": r.factors()} for r in measured],
                                        "engine_studies_per_s": float(np.median([r.engine for r in measured])),
                                        "bare_studies_per_s": float(np.median([r.bare for r in measured])),
                                        "ratio": ratio, "goal": GOAL, "backend": backend,
                                        "engine_latency_s": last["latency_s"],
                                        "engine_cpu_s_per_study": last.get("cpu_s_per_study")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
