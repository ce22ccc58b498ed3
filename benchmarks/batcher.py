"""Dynamic batching: throughput vs number of concurrent studies (1, 2, 4, 8) through one model's batcher.

Run: ``python -m benchmarks.batcher [--quick]``. N client threads each submit
their studies' slices (the nodule model's input) to one DynamicBatcher over the
CPU backend the worker would choose (ONNX Runtime on this machine), as N jobs
on a worker with capacity N would. Baseline, same run: the same studies one
after another straight to ``backend.execute`` (no batcher). Figure: items/s
ratio batcher / sequential, and the mean batch size the batcher formed.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.backends import builtin_registry
from benchmarks.common import parser, print_table, write_result
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import InferenceRequest
from engine.runtime.selection import make_backend
from engine.worker.batcher import DynamicBatcher

CONCURRENCY = (1, 2, 4, 8)


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--threads", type=int, default=2)
    arguments.add_argument("--backend", default="onnxruntime")
    arguments.add_argument("--delay-ms", type=float, default=2.0)
    args = arguments.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = builtin_registry().get("nodule-seg")
    slices, size, studies = (6, 32, 8) if args.quick else (24, 128, 16)
    study = torch.rand((slices, spec.input_shape[0], size, size), generator=torch.Generator().manual_seed(0))
    rows, levels = [], {}
    with tempfile.TemporaryDirectory() as cache:
        backend = make_backend(args.backend, "cpu", threads=args.threads)
        backend.initialize(ModelArtifacts(spec, Path(cache)))
        backend.execute([InferenceRequest("warm", study)])
        start = time.perf_counter()
        for index in range(studies):
            backend.execute([InferenceRequest(index, study)])
        sequential = studies * slices / (time.perf_counter() - start)
        for clients in CONCURRENCY:
            batcher = DynamicBatcher(backend, max_batch=spec.max_batch, max_delay_s=args.delay_ms / 1000.0,
                                     name=spec.name)
            per_client = max(1, studies // clients)
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                futures = [pool.submit(lambda c=c: [batcher.infer((c, i), study) for i in range(per_client)])
                           for c in range(clients)]
                for future in futures:
                    assert all(response.ok for response in future.result())
            elapsed = time.perf_counter() - start
            batcher.close()
            items = clients * per_client * slices
            levels[clients] = {"items_per_s": items / elapsed, "studies_per_s": clients * per_client / elapsed,
                               "mean_batch": batcher.stats.mean_batch, "ratio_vs_sequential": items / elapsed / sequential}
            rows.append([clients, levels[clients]["studies_per_s"], levels[clients]["items_per_s"],
                         levels[clients]["mean_batch"], levels[clients]["ratio_vs_sequential"]])
        backend.finalize()
    print(f"{studies} studies of {slices} slices {spec.input_shape[0]}x{size}x{size}, backend {args.backend}, "
          f"max_batch {spec.max_batch}, delay {args.delay_ms} ms; sequential baseline {sequential:.1f} items/s")
    print_table(["concurrent studies", "studies/s", "items/s", "mean batch", "x sequential"], rows)
    write_result(args.out, "batcher", {"quick": args.quick, "backend": args.backend, "slices": slices, "size": size,
                                       "sequential_items_per_s": sequential, "levels": levels})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
