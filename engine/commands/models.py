"""``scanstream models build``: ONNX export, TensorRT plans and backend timings made ahead of time."""

from __future__ import annotations

import argparse

from engine.commands.common import add_command, config_from_args


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``models``."""
    models = add_command(sub, "models", cmd_models,
                         "prepare models ahead of time: ONNX export, TensorRT plan, backend timing")
    models.add_argument("action", choices=["build"])
    models.add_argument("--model", action="append", help="only this model (repeatable; default all)")
    models.add_argument("--refresh", action="store_true", help="time the CPU backends again")


def cmd_models(args: argparse.Namespace) -> int:
    """Export, build and time models now, so workers start without doing it."""
    from engine.plugins import load_plugins
    from engine.runtime.prepare import prepare_model

    config = config_from_args(args)
    loaded = load_plugins(config)
    names = args.model or [spec.name for spec in loaded.models.all()]
    failures = 0
    print(f"model cache: {config.worker.model_cache_path()}")
    for name in names:
        prepared = prepare_model(loaded.models.get(name), config.worker, refresh=args.refresh)
        print(f"{prepared.name} {prepared.version}")
        print(f"  onnx: {prepared.onnx or 'none (no input_shape declared)'}")
        if prepared.plan is not None:
            print(f"  tensorrt plan: {prepared.plan}")
        if prepared.problem is not None:
            failures += 1
            print(f"  problem: {prepared.problem}")
        elif prepared.choice is not None:
            print(f"  backend: {prepared.choice.backend} on {prepared.choice.device}: {prepared.choice.reason}")
    return 1 if failures else 0
