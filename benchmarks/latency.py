"""Engine latency beyond the model: result written minus last instance received, minus model compute time.

Run: ``python -m benchmarks.latency [--quick] [--studies N]``. One study at a
time (closed loop, 1 in flight) through ``scanstream serve`` with one worker;
series complete geometrically (no idle wait). Per job: ``end_to_end - infer``
from the latency ledger, with where that time went (assemble, queue, decode,
preprocess, postprocess, outputs, transfer). Baseline in the same run: the
model's own compute time (``infer``). Goal: p50 under 100 ms on the CPU.

The generated studies alternate between phantoms where the model finds a
nodule (it files a DICOM SEG too) and where it finds none, so the figures are
also given for each kind of job: the overall p50 falls between the two.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import parser, print_table, write_result
from benchmarks.engine_runs import bench, done_jobs

GOAL_S = 0.1
PARTS = ("assemble", "queue", "decode", "preprocess", "postprocess", "outputs", "transfer")


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--studies", type=int, default=10)
    args = arguments.parse_args(argv)
    studies, slices, size = (2, 12, 64) if args.quick else (args.studies, 48, 256)
    result = bench(studies, concurrency=1, slices=slices, size=size)
    jobs = done_jobs(result)
    stages = [job["stages_s"] for job in jobs]
    overhead = np.array([s["end_to_end"] - s.get("infer", 0.0) for s in stages])
    with_seg = np.array(["seg.dcm" in job.get("artifacts", []) for job in jobs], dtype=bool)
    infer = np.array([s.get("infer", 0.0) for s in stages])
    rows = [["end_to_end - infer", *np.percentile(overhead, [50, 99]) * 1000]]
    by_kind = {kind: overhead[mask] for kind, mask in (("with a SEG", with_seg), ("without a SEG", ~with_seg))
               if mask.any()}
    rows += [[f"  jobs {kind} ({len(values)})", *np.percentile(values, [50, 99]) * 1000]
             for kind, values in by_kind.items()]
    rows += [["infer (baseline)", *np.percentile(infer, [50, 99]) * 1000]]
    rows += [[part, *np.percentile([s.get(part, 0.0) for s in stages], [50, 99]) * 1000] for part in PARTS]
    print(f"{studies} studies of {slices} slices {size}x{size}, one at a time")
    print_table(["stage", "p50 ms", "p99 ms"], rows)
    p50 = float(np.percentile(overhead, 50))
    print(f"goal p50 < {GOAL_S * 1000:.0f} ms: {'met' if p50 < GOAL_S else 'NOT met'} ({p50 * 1000:.0f} ms); "
          f"overhead / infer at p50: {p50 / max(float(np.percentile(infer, 50)), 1e-9):.2f}")
    write_result(args.out, "latency", {"quick": args.quick, "studies": studies,
                                       "overhead_p50_s": p50, "overhead_p99_s": float(np.percentile(overhead, 99)),
                                       "infer_p50_s": float(np.percentile(infer, 50)),
                                       "overhead_p50_by_kind_s": {kind: float(np.percentile(values, 50))
                                                                  for kind, values in by_kind.items()},
                                       "parts_p50_s": {p: float(np.percentile([s.get(p, 0.0) for s in stages], 50))
                                                       for p in PARTS},
                                       "goal_s": GOAL_S, "goal_met": p50 < GOAL_S, "latency_s": result["latency_s"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
