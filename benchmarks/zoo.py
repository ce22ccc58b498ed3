"""Per zoo architecture: torch vs ONNX Runtime images/s on this CPU, at batch 1 and at the best batch.

Run: ``python -m benchmarks.zoo [--quick] [--threads 1] [--models zoo-resnet50,zoo-ssd] [--budget-s 30]``.
Baseline: torch eager at batch 1, measured in the same run; every figure is
also given as a ratio to it. Batches 1, 2, 4 and 8 are tried in turn while the
next one fits the per-model, per-backend time budget (a shared 2-core machine
cannot afford VGG-16 or the 3D U-Net at batch 8 within ten minutes); batch 1
always runs, and the two backends take turns at each batch so that noise from
other work on the machine hits both alike. Each figure is the best of 3 timed
calls after one warm-up (1 timed call where one call takes over
:data:`SLOW_CALL_S`). The ONNX export and session set-up are not timed (they
happen once per model and worker).

One thread by default: on a CPU shared with other work, a 2-thread torch
(OpenMP) pool stalls at every barrier while another process holds one of the
two cores; measured here in the same minutes, ResNet-50 at 224x224 ran at
0.9 images/s with 2 threads against ~9 with 1.

Writes ``<out>/zoo.json`` (machine, options, every figure) and the Markdown
report: ``benchmarks/zoo.md`` for a full run, ``<out>/zoo.md`` for
``--quick`` (one small model at a tiny size: checks the command, not speed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import best_seconds, parser, print_table, write_result
from engine.runtime.artifacts import ModelArtifacts
from engine.runtime.base import Backend
from engine.runtime.selection import make_backend
from plugins.zoo.catalogue import zoo_specs
from plugins.zoo.options import ZooOptions
from plugins.zoo.sliding_window import patch_grid, resampled_size

BATCHES = (1, 2, 4, 8)
BACKENDS = ("torch", "onnxruntime")
SLOW_CALL_S = 2.0
MARKDOWN = Path("benchmarks/zoo.md")
# Full run: the classifiers, SSD and generator at their reference sizes; the 3D U-Net at 64^3 patches (one 128^3
# patch is 8x the work: ~20 s on one core here, too slow to try several batches within the time budget) ...
FULL_OPTIONS: dict[str, Any] = {"zoo.input_size": 224, "zoo.unet3d.patch": 64}
# ... plus one row at MLPerf's geometry, batch 1 only in practice (one call is far over the budget per batch).
MLPERF_UNET_OPTIONS: dict[str, Any] = {"zoo.unet3d.patch": 128}
MLPERF_UNET_LABEL = "zoo-unet3d (128^3)"
QUICK_OPTIONS: dict[str, Any] = {"zoo.input_size": 75, "zoo.num_classes": 10}
QUICK_MODELS = ("zoo-resnet18",)
ITEM_NAMES = {"zoo-unet3d": "patches"}  # everything else: images (slices)

# Published figures to compare a GPU run against: quoted, not measured here.
GPU_ANCHORS = [
    ("zoo-unet3d", "MLPerf Inference 3D-UNet (KiTS19, 128^3 sliding window), NVIDIA H200 with TensorRT",
     "~6.8 samples/s per GPU (a sample is one whole KiTS19 case, many 128^3 patches)"),
    ("zoo-resnet50", "ResNet-50 with TensorRT FP16 vs torch eager on the same GPU",
     "about 2-3x torch eager throughput"),
]


def _time_batch(backend: Backend, inputs: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(best seconds per call, seconds spent): a warm-up call, then ``repeats`` timed calls (1 when it is slow)."""
    start = time.perf_counter()
    backend._run(inputs)  # warm-up: allocators, kernel selection for this shape
    calls = repeats if time.perf_counter() - start <= SLOW_CALL_S else 1
    seconds = best_seconds(lambda: backend._run(inputs), repeats=calls, warmup=0)
    return seconds, time.perf_counter() - start


def _measure(backends: dict[str, Backend], shape: tuple[int, ...], batches: list[int], budget_s: float,
             repeats: int) -> dict[str, dict[int, float]]:
    """Items/s per backend and batch; the backends take turns at each batch, so machine noise hits both alike.

    Batch 1 always runs; a larger batch runs for a backend while its estimated
    cost still fits that backend's ``budget_s``.
    """
    figures: dict[str, dict[int, float]] = {name: {} for name in backends}
    spent = dict.fromkeys(backends, 0.0)
    per_item = dict.fromkeys(backends, 0.0)
    generator = torch.Generator().manual_seed(0)
    for batch in batches:
        inputs = torch.rand((batch, *shape), generator=generator)
        for name, backend in backends.items():
            estimate = per_item[name] * batch
            calls = 1 + (repeats if estimate <= SLOW_CALL_S else 1)
            if figures[name] and (len(figures[name]) < batches.index(batch) or
                                  spent[name] + estimate * calls > budget_s):
                continue  # over budget (or stopped at a smaller batch already)
            seconds, used = _time_batch(backend, inputs, repeats)
            spent[name] += used
            per_item[name] = seconds / batch
            figures[name][batch] = batch / seconds
    return figures


def _model_result(spec: Any, cache: Path, threads: int, budget_s: float, repeats: int) -> dict[str, Any]:
    """Both backends' figures for one model, with ratios to torch batch 1."""
    artifacts = ModelArtifacts(spec, cache)
    shape = tuple(spec.input_shape)
    batches = [b for b in BATCHES if b <= spec.max_batch]
    backends: dict[str, Backend] = {}
    setup: dict[str, float] = {}
    for name in BACKENDS:
        backends[name] = make_backend(name, "cpu", threads=threads)
        start = time.perf_counter()
        backends[name].initialize(artifacts)  # ONNX Runtime: the export happens here, untimed below
        setup[name] = round(time.perf_counter() - start, 2)
    figures = _measure(backends, shape, batches, budget_s, repeats)
    for backend in backends.values():
        backend.finalize()
    baseline = figures["torch"][1]
    best = {name: max(values.items(), key=lambda item: item[1]) for name, values in figures.items()}
    return {
        "input_shape": list(shape),
        "items": ITEM_NAMES.get(spec.name, "images"),
        "images_per_s": {name: {str(b): round(v, 3) for b, v in values.items()} for name, values in figures.items()},
        "best": {name: {"batch": b, "images_per_s": round(v, 3), "x_torch_b1": round(v / baseline, 3)}
                 for name, (b, v) in best.items()},
        "x_torch_b1": {name: {str(b): round(v / baseline, 3) for b, v in values.items()}
                       for name, values in figures.items()},
        "setup_s": setup,
    }


def _bench_study_patches() -> int:
    """128^3 patches (0.5 overlap) of a default ``scanstream bench`` phantom study: 48 x 256 x 256 at 2.5 x 1.4 mm."""
    shape = resampled_size((48, 256, 256), (2.5, 1.4, 1.4))
    return len(patch_grid(shape, (128, 128, 128), 0.5).origins())


def _observations(models: dict[str, Any]) -> list[str]:
    """Two sentences computed from the figures: who wins at batch 1, and what batching buys."""
    ort = {name: model["x_torch_b1"]["onnxruntime"]["1"] for name, model in models.items()}
    slower = [name for name, ratio in ort.items() if ratio < 1]
    text = (f"At batch 1, ONNX Runtime runs {min(ort.values()):.2f}-{max(ort.values()):.2f}x torch eager "
            f"({len(ort) - len(slower)} of {len(ort)} rows faster")
    text += f"; torch is faster on {', '.join(slower)})." if slower else ")."
    gains = {name: max(model["best"][backend]["images_per_s"] / model["images_per_s"][backend]["1"]
                       for backend in BACKENDS) for name, model in models.items()}
    best = max(gains, key=gains.__getitem__)
    text += f" Batching gains at most {gains[best]:.2f}x over batch 1 ({best})"
    text += ": on this CPU batching buys little." if gains[best] < 1.5 else "."
    return [text]


def render_markdown(result: dict[str, Any]) -> str:
    """The report: how it was measured, the table, the engine ratio placeholder and the GPU anchors."""
    machine = result["machine"]
    lines = [
        "# Model zoo on this machine (CPU)",
        "",
        f"Command: `python -m benchmarks.zoo{' --quick' if result['quick'] else ''} --threads {result['threads']}`"
        f" ({machine['date']}). Machine: {machine['cpu']}, {machine['cores']} cores (shared with other work), "
        f"no GPU; Python {machine['python']}, torch {machine['torch']}, ONNX Runtime {machine['onnxruntime']}; "
        f"threads for torch and ORT: {result['threads']}.",
        "",
        "Untrained benchmark models (`plugins/zoo`, deterministic random weights): throughput only. Figures are "
        "the network alone on random inputs of the model's declared input shape (items/s; an item is one slice "
        f"image, for the 3D U-Net one patch), best of {result['repeats']} calls after a warm-up (1 call where one "
        f"takes over {SLOW_CALL_S:.0f} s). `xT1` is the ratio to torch eager at batch 1 of the same model measured "
        "in the same run (the baseline); the best batch is tried among 1, 2, 4, 8 (up to the model's max_batch) "
        f"while the next fits {result['budget_s']:.0f} s per model and backend. Options: `{result['options']}`; "
        f"the `{MLPERF_UNET_LABEL}` row adds `{MLPERF_UNET_OPTIONS}` (MLPerf's patch).",
        "",
        "| model | input | torch b1 | ORT b1 (xT1) | torch best (batch, xT1) | ORT best (batch, xT1) "
        "| engine e2e / bare loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, model in result["models"].items():
        torch_b1 = model["images_per_s"]["torch"]["1"]
        ort_b1 = model["images_per_s"]["onnxruntime"]["1"]
        best_t, best_o = model["best"]["torch"], model["best"]["onnxruntime"]
        lines.append(
            f"| {name} | {'x'.join(map(str, model['input_shape']))} | {torch_b1:.3g} | {ort_b1:.3g} "
            f"({model['x_torch_b1']['onnxruntime']['1']:.2f}) | {best_t['images_per_s']:.3g} (b{best_t['batch']}, "
            f"{best_t['x_torch_b1']:.2f}) | {best_o['images_per_s']:.3g} (b{best_o['batch']}, "
            f"{best_o['x_torch_b1']:.2f}) | see below |")
    lines += ["", *_observations(result["models"])]
    lines += [
        "",
        "All throughputs in items/s. On a shared machine absolute figures move between runs (other work takes "
        "the cores); compare the ratios within one run. Every batch measured is in `benchmarks/results/zoo.json` "
        "(`images_per_s`, `x_torch_b1`), with the untimed set-up (network build; ONNX export and session) per "
        "backend in `setup_s`.",
        "",
        "## Engine end to end vs bare loop",
        "",
        "The last column is filled by running each model through the whole engine "
        "(`scanstream bench --model NAME`, phantom CT studies in over DICOM, results out) and dividing its "
        "images/s by the bare-loop figure above for the backend the worker chose at the same thread count.",
        "",
        "## Published GPU anchors (quoted, not measured here)",
        "",
        "| model | published setting | published figure |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {setting} | {figure} |" for name, setting, figure in GPU_ANCHORS]
    lines += [
        "",
        "These come from the issue (MLPerf Inference results and TensorRT's published speed-ups); no GPU was "
        "available to this run. The 3D U-Net rows are per patch: an MLPerf sample is one whole case. For scale, "
        f"the bench's default phantom study (48 slices of 256x256 at 2.5 x 1.4 mm) is {_bench_study_patches()} "
        "patches of 128^3 at 0.5 overlap, so a CPU figure per study is the 128^3 row divided by that count.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments: argparse.ArgumentParser = parser(__doc__.splitlines()[0])
    arguments.add_argument("--threads", type=int, default=1,
                           help="torch and ORT threads (1: see the module docs on shared CPUs)")
    arguments.add_argument("--models", default="", help="comma-separated zoo model names (default: all)")
    arguments.add_argument("--budget-s", type=float, default=30.0, help="seconds per model and backend")
    arguments.add_argument("--markdown", type=Path, default=None, help="report path (default: see module docs)")
    arguments.add_argument("--cache", type=Path, default=None,
                           help="model cache folder to export into or reuse (default: a temporary folder)")
    args = arguments.parse_args(argv)
    torch.set_num_threads(args.threads)
    option_values = QUICK_OPTIONS if args.quick else FULL_OPTIONS
    names = {n.strip() for n in args.models.split(",") if n.strip()} or (set(QUICK_MODELS) if args.quick else None)
    specs = zoo_specs(ZooOptions.from_mapping(option_values), names)
    if names and len(specs) != len(names):
        raise SystemExit(f"--models: unknown zoo model(s) {sorted(names - {s.name for s in specs})}")
    entries = [(spec.name, spec) for spec in specs]
    if not args.quick and any(spec.name == "zoo-unet3d" for spec in specs):
        mlperf = zoo_specs(ZooOptions.from_mapping({**option_values, **MLPERF_UNET_OPTIONS}), {"zoo-unet3d"})[0]
        entries.append((MLPERF_UNET_LABEL, mlperf))
    budget = 5.0 if args.quick else args.budget_s
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as temporary:
        cache = args.cache or Path(temporary)
        for label, spec in entries:
            models[label] = _model_result(spec, cache, args.threads, budget, 1 if args.quick else 3)
            print(f"{label}: torch b1 {models[label]['images_per_s']['torch']['1']:.3g}/s, "
                  f"ORT best {models[label]['best']['onnxruntime']}", flush=True)
    rows = [[name, "x".join(map(str, m["input_shape"])), m["images_per_s"]["torch"]["1"],
             m["images_per_s"]["onnxruntime"]["1"], m["best"]["torch"]["images_per_s"], m["best"]["torch"]["batch"],
             m["best"]["onnxruntime"]["images_per_s"], m["best"]["onnxruntime"]["batch"]]
            for name, m in models.items()]
    print_table(["model", "input", "torch b1", "ORT b1", "torch best", "batch", "ORT best", "batch"], rows)
    result = {"threads": args.threads, "quick": args.quick, "budget_s": budget, "options": option_values,
              "repeats": 1 if args.quick else 3,
              "models": models, "gpu_anchors_published": [dict(zip(("model", "setting", "figure"), a))
                                                          for a in GPU_ANCHORS]}
    path = write_result(args.out, "zoo", result)
    markdown = args.markdown or (args.out / "zoo.md" if args.quick else MARKDOWN)
    markdown.write_text(render_markdown(json.loads(path.read_text())))
    print(f"wrote {path} and {markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
