"""The zoo through the whole engine: images/s end to end vs the same model in a bare loop, same run.

Run: ``python -m benchmarks.zoo_engine [--quick] [--models a,b]``. For each zoo
model: ``scanstream bench --model NAME`` (phantom CT studies over DICOM, one
worker, 2 studies in flight, outputs filed), then the same studies decoded once
in this process and run as preprocess + backend + postprocess in a loop on the
backend the worker chose (:func:`benchmarks.overhead.bare_loop`). Figure: the
engine / bare ratio of studies/s (each study is the same number of images).
Untrained benchmark models: throughput only. Appends its table to
``benchmarks/zoo.md`` by hand (the command prints it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.common import parser, print_table, write_result
from benchmarks.engine_runs import bench
from benchmarks.overhead import bare_loop
from engine.api import ModelRegistry
from engine.config import EngineConfig

ZOO = ("zoo-resnet18", "zoo-resnet50", "zoo-inception-v3", "zoo-vgg16", "zoo-ssd", "zoo-unet3d", "zoo-dcgan")
OPTIONS = {"zoo.unet3d.patch": "64"}  # 128^3 patches take minutes per study on two CPU cores
QUICK_OPTIONS = {"zoo.input_size": "75", "zoo.ssd.input_size": "268", "zoo.unet3d.patch": "32x64x64",
                 "zoo.num_classes": "10"}


def zoo_spec(name: str, options: dict[str, str]):
    """The zoo's ModelSpec for ``name`` under ``options`` (as a worker of the bench engine registers it)."""
    from plugins import zoo

    config = EngineConfig.model_validate({"plugins": {"options": options}, "routing": {"models": [name]}})
    registry = ModelRegistry()
    zoo.scanstream_register_models(registry=registry, config=config)
    return registry.get(name)


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--models", default=",".join(ZOO))
    arguments.add_argument("--studies", type=int, default=4)
    args = arguments.parse_args(argv)
    studies, slices, size = (2, 4, 64) if args.quick else (args.studies, 16, 128)
    options = QUICK_OPTIONS if args.quick else OPTIONS
    rows, records = [], {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        with tempfile.TemporaryDirectory(prefix="ss-zoo-engine-") as folder:
            result = bench(studies, concurrency=2, slices=slices, size=size, work_dir=Path(folder), model=name,
                           plugin_options=options)
            engine_rate = result["summary"]["studies_per_s"]
            torch.set_num_threads(2)
            bare = bare_loop(Path(folder) / "send", threads=2, spec=zoo_spec(name, options))
            bare_rate, backend = bare.rate, bare.backend
        ratio = engine_rate / bare_rate
        rows.append([name, backend, engine_rate * slices, bare_rate * slices, ratio])
        records[name] = {"backend": backend, "engine_studies_per_s": engine_rate, "bare_studies_per_s": bare_rate,
                         "ratio": ratio}
    print(f"{studies} studies of {slices} slices {size}x{size} per model; options {options}")
    print_table(["model", "bare-loop backend", "engine images/s", "bare images/s", "engine / bare"], rows)
    write_result(args.out, "zoo_engine", {"quick": args.quick, "studies": studies, "slices": slices, "size": size,
                                          "options": options, "models": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
