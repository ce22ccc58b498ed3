"""Scaling: 1 vs 2 workers on this machine, and a projection (stated as such) for N GPU workers.

Run: ``python -m benchmarks.scaling [--quick] [--studies N]``. Closed loop with
4 studies in flight through ``scanstream serve`` with 1, then 2 workers, one
runtime thread each (the nodule model is compute-bound on 2 cores). Figure: studies/s ratio 2 / 1 workers.

Projection (not a measurement): from the measured per-stage costs, a worker
whose model and preprocessing ran on a GPU would still spend ``decode +
postprocess + outputs`` seconds of CPU per study; the receiver spends
``receive + transfer`` per study on its own side. N such workers saturate the
receiver when N x (worker studies/s) exceeds the receiver's studies/s.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import parser, print_table, write_result
from benchmarks.engine_runs import bench, job_stages


def median_stage(stages: list[dict[str, float]], name: str) -> float:
    return float(np.median([s.get(name, 0.0) for s in stages])) if stages else 0.0


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--studies", type=int, default=8)
    args = arguments.parse_args(argv)
    studies, slices, size = (2, 12, 64) if args.quick else (args.studies, 48, 256)
    # One runtime thread per worker, so two workers do not oversubscribe the two cores.
    runs = {workers: bench(studies, concurrency=4, workers=workers, slices=slices, size=size, torch_threads=1)
            for workers in (1, 2)}
    rates = {w: r["summary"]["studies_per_s"] for w, r in runs.items()}
    stages = job_stages(runs[1])
    worker_cpu = sum(median_stage(stages, s) for s in ("decode", "postprocess", "outputs"))
    receiver_side = median_stage(stages, "receive") + median_stage(stages, "transfer")
    receiver_rate = 1.0 / max(receiver_side, 1e-9)
    worker_rate = 1.0 / max(worker_cpu, 1e-9)
    projection = [[n, min(n * worker_rate, receiver_rate), "receiver" if n * worker_rate >= receiver_rate else "workers"]
                  for n in (1, 2, 4, 8, 16)]
    print_table(["workers", "studies/s", "x 1 worker"], [[w, rates[w], rates[w] / rates[1]] for w in (1, 2)])
    print("projection for GPU workers (model time taken as ~0; NOT measured):")
    print_table(["GPU workers", "studies/s (projected)", "bound by"], projection)
    write_result(args.out, "scaling", {"quick": args.quick, "studies": studies, "studies_per_s": rates,
                                       "ratio_2_over_1": rates[2] / rates[1],
                                       "projection": {"worker_cpu_s_per_study": worker_cpu,
                                                      "receiver_s_per_study": receiver_side,
                                                      "rows": projection, "note": "projection, not a measurement"}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
