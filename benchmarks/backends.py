"""Per built-in model: torch vs ONNX Runtime images/s on the CPU, at batch 1 and at the best batch.

Run: ``python -m benchmarks.backends [--quick] [--threads 2]``. Baseline: torch
eager in the same run; figure: ONNX Runtime / torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.common import best_seconds, parser, print_table, write_result
from engine.api import ModelRegistry
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.selection import make_backend
from plugins import nodule_seg


def builtin_registry() -> ModelRegistry:
    """The built-in models as their plugins register them."""
    registry = ModelRegistry()
    nodule_seg.scanstream_register_models(registry)
    return registry


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--threads", type=int, default=2)
    args = arguments.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, models = [], {}
    with tempfile.TemporaryDirectory() as cache:
        for spec in builtin_registry().all():
            artifacts = ModelArtifacts(spec, Path(cache))
            shape = spec.input_shape if not args.quick else (spec.input_shape[0], 32, 32)
            batches = [b for b in (1, 2, 4, 8, 16) if b <= spec.max_batch][: 2 if args.quick else None]
            figures: dict[str, dict[int, float]] = {}
            for name in ("torch", "onnxruntime"):
                backend = make_backend(name, "cpu", threads=args.threads)
                backend.initialize(artifacts)
                figures[name] = {}
                for batch in batches:
                    inputs = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0))
                    seconds = best_seconds(lambda: backend._run(inputs), repeats=1 if args.quick else 3)
                    figures[name][batch] = batch / seconds
                backend.finalize()
            best = {name: max(values.items(), key=lambda item: item[1]) for name, values in figures.items()}
            models[spec.name] = {"input_shape": list(shape), "images_per_s": figures,
                                 "best": {n: {"batch": b, "images_per_s": v} for n, (b, v) in best.items()},
                                 "ratio_ort_over_torch_batch1": figures["onnxruntime"][1] / figures["torch"][1],
                                 "ratio_ort_over_torch_best": best["onnxruntime"][1] / best["torch"][1]}
            rows.append([spec.name, "x".join(map(str, shape)), figures["torch"][1], figures["onnxruntime"][1],
                         models[spec.name]["ratio_ort_over_torch_batch1"], f"{best['torch'][1]:.3g} (b{best['torch'][0]})",
                         f"{best['onnxruntime'][1]:.3g} (b{best['onnxruntime'][0]})",
                         models[spec.name]["ratio_ort_over_torch_best"]])
    print_table(["model", "input", "torch img/s b1", "ORT img/s b1", "ORT/torch b1", "torch best", "ORT best",
                 "ORT/torch best"], rows)
    write_result(args.out, "backends", {"threads": args.threads, "quick": args.quick, "models": models})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
